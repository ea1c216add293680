"""The generation engines through Swell against the same model called directly, in the same run.

Three sections, each on tiny random models written by `swell.models.tiny` (noise in real layouts:
what is measured is the speed of the serving path, never the quality of an output):

- `sd`: serving overhead of the `diffusers` engine. A real `swell up` (SQLite queue, one replica,
  `max_batch_size` 1, so that both sides run the same pipeline call per image) serving the tiny SD
  model at `--sd-size` pixels and `--sd-steps` steps, driven by `--sd-clients` closed-loop clients
  (`POST /v1/jobs` with `wait`), against `DiffusersEngine.run` on one job at a time in this process
  (same options, same result store code, same seeds). Rounds interleave the two (the order flips
  every round); a rate is the median over rounds, the ratio is taken per round, then its median.
  One image per round is fetched from the gateway and compared byte for byte with the direct one.
- `llm`: the `transformers` engine on the tiny LM and on a larger random one (`LLM_LARGE`: 512 wide,
  8 layers, where the model's own cost per token is a realistic share), greedy, `--llm-tokens` new
  tokens at most. Single: one client, one job at a time, against `model.generate` on one prompt.
  Batched: `--llm-batch` concurrent jobs (the worker batches what it finds queued, up to
  `max_batch_size`) against one `generate` over that many left-padded prompts. Each round also runs
  the engine in this process (`engine`: its own cost without the queue, worker and HTTP), and the
  single jobs' median seconds queued and running (from the jobs' times), so the overhead splits into
  the engine's and the serving path's. Tokens are counted as the engine counts them (up to and
  including an end token); all sides' counts are printed, and they agree when the work is equal.
- `ttft`: time to the first streamed token. The OpenAI door (the official `openai` SDK,
  `chat.completions.create(stream=True)` through a real `swell up` with one replica: from the call
  to the first chunk with content) against the engine's own (its `run` in this process, same chat,
  same `--llm-tokens`: from the call to its first delta), one request at a time, `--ttft-trials`
  each, interleaved. The difference is the door's: HTTP, the submit's durable commit, the worker's
  lease, the delta's trip through the queue's events and the stream's poll of them.
- `lora`: `--lora-switches` random switches (one or two of `--lora-count` adapters, random weights)
  through the engine's `LoraCache` of `--lora-cache` entries: p50/p99 of a switch (hits and loads
  apart), and the process's RSS growth from after the first `--lora-warmup` switches to the end.
- `checkpoint`: the tiny SD model as one original-layout checkpoint (`make-tiny --single-file`),
  loaded the engine's way (swell.data's loader) against diffusers' `from_single_file` reading the
  file itself: seconds per load, and the speed-up.

Torch runs `--threads` (1) OpenMP threads here and in the workers alike (OMP_NUM_THREADS, which
`swell up` passes to its workers): on a 2-core machine that other work shares, two threads that
must meet at every operator's barrier make either side's speed depend on who else is scheduled.

Prints a JSON summary and writes it to bench/out/engines.json.

    .venv/bin/python bench/engines.py                 # about 6 minutes on 2 cores
    .venv/bin/python bench/engines.py --quick         # about 2 minutes
    .venv/bin/python bench/engines.py --sections lora
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out" / "engines.json"
API_KEY = "bench-engines-key"
READY_TIMEOUT = 180.0
WAIT = 240.0  # seconds a submit asks the gateway to wait for its job
PROMPTS = (
    "a photo of a red cat",
    "the blue dog on a tiny model",
    "art of a cat in the red",
    "hello world, the tiny model is you",
    "an assistant and a user",
    "the dog was on the cat",
    "a tiny swell token",
    "system: you are a model",
)
SECTIONS = ("sd", "llm", "ttft", "lora", "checkpoint")
LLM_LARGE = (512, 8)  # hidden size and layers of the larger random LM, whose own cost per token is realistic
LLM_MODELS = ("llm", "llm-large")


# -- helpers ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes() -> int:
    """This process's resident set now (not its peak)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0-1) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = work()
    return time.perf_counter() - start, value


def commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, check=True)
        return out.stdout.decode().strip() + ("+uncommitted" if dirty.stdout.strip() else "")
    return "unknown"


# -- `swell up` -------------------------------------------------------------------------------------------


@dataclass
class Server:
    """A real `swell up` on a fresh data dir serving one service, stopped (drained) on the way out."""

    service: dict[str, Any]
    work: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.work / f"swell-{self.service['name']}.log"

    def start(self) -> None:
        config = self.work / f"{self.service['name']}.yaml"
        config.write_text(yaml.safe_dump({"services": [self.service], "brain": {"mode": "off"}}))
        data = self.work / f"data-{self.service['name']}"
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWELL_")}
        env |= {"SWELL_API_KEY": API_KEY, "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "swell", "up", "--config", str(config), "--data-dir", str(data)]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, client: httpx.Client) -> float:
        """Seconds until the service has a ready replica; raises with the log tail if it never does."""
        start = time.monotonic()
        while time.monotonic() - start < READY_TIMEOUT:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"swell up exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError, StopIteration, KeyError, ValueError):
                found = client.get(f"{self.base}/v1/services", timeout=5).json()["services"]
                rows = next(s for s in found if s["name"] == self.service["name"])["replicas"]
                if any(r["state"] in ("ready", "busy") for r in rows):
                    return time.monotonic() - start
            time.sleep(0.2)
        raise RuntimeError(f"no ready replica in {READY_TIMEOUT:g} s:\n{self.tail()}")


@contextlib.contextmanager
def serving(service: dict[str, Any], work: Path) -> Iterator[tuple[Server, httpx.Client]]:
    server = Server(service, work)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(headers=headers, timeout=WAIT + 30, limits=limits, trust_env=False) as client:
        server.start()
        try:
            ready = server.wait_ready(client)
            print(f"  swell up ({service['name']}) ready in {ready:.1f} s", flush=True)
            yield server, client
        finally:
            server.stop()


def submit_wait(client: httpx.Client, server: Server, payload: dict[str, Any]) -> dict[str, Any]:
    """Submit one job and wait for it (polling after the gateway's own wait if need be); the final job."""
    body = {"service": server.service["name"], "input": payload, "wait": WAIT}
    response = client.post(f"{server.base}/v1/jobs", json=body)
    response.raise_for_status()
    job: dict[str, Any] = response.json()
    while job["state"] in ("queued", "leased"):
        time.sleep(0.05)
        job = client.get(f"{server.base}/v1/jobs/{job['id']}").json()
    if job["state"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ended {job['state']}: {job.get('error')}")
    return job


def closed_loop(
    client: httpx.Client, server: Server, payloads: Sequence[dict[str, Any]], clients: int
) -> tuple[float, list[dict[str, Any]]]:
    """Seconds for `clients` closed-loop clients to get every payload done, and the jobs in order."""
    with ThreadPoolExecutor(clients) as pool:
        return timed(lambda: list(pool.map(lambda p: submit_wait(client, server, p), payloads)))


# -- models -----------------------------------------------------------------------------------------------


def build_models(root: Path, sections: Sequence[str], lora_count: int) -> dict[str, Path]:
    from swell.models.tiny import make_tiny

    models: dict[str, Path] = {}
    if "sd" in sections or "lora" in sections or "checkpoint" in sections:
        models["sd"] = make_tiny("sd", root / "sd", single_file="checkpoint" in sections)
    if "lora" in sections:
        models["loras"] = make_tiny("lora", root / "loras", count=lora_count)
    if "llm" in sections or "ttft" in sections:
        models["llm"] = make_tiny("llm", root / "llm")
        hidden, layers = LLM_LARGE
        models["llm-large"] = make_tiny("llm", root / "llm-large", hidden_size=hidden, layers=layers)
    return models


def diffusers_engine(options: dict[str, Any], data: Path) -> Any:
    from swell.engines.diffusers.engine import DiffusersEngine
    from swell.engines.diffusers.spec import SPEC
    from swell.engines.results import LocalResultStore
    from swell.engines.spec import EngineEnv

    env = EngineEnv(data_dir=data, datasets={}, results=LocalResultStore(data))
    engine = DiffusersEngine(SPEC.parse_options(options), env)
    engine.load()
    return engine


def run_direct(engine: Any, data: Path, payload: dict[str, Any], job_id: str) -> dict[str, Any]:
    """One job through the engine as a worker calls it (a RunContext writing to a local store)."""
    from swell.engines.base import MemorySignals, RunContext
    from swell.engines.results import LocalResultStore

    context = RunContext([job_id], data, signals=MemorySignals(), results=LocalResultStore(data))
    [result] = engine.run([payload], context)
    if isinstance(result, BaseException):
        raise result
    return dict(result)


# -- sd: serving overhead ---------------------------------------------------------------------------------


def sd_payloads(args: argparse.Namespace, round_: int) -> list[dict[str, Any]]:
    size = {"width": args.sd_size, "height": args.sd_size, "steps": args.sd_steps}
    base = 1000 * round_
    return [{"prompt": PROMPTS[i % len(PROMPTS)], "seed": base + i, **size} for i in range(args.sd_images)]


def sd_section(args: argparse.Namespace, models: dict[str, Path], work: Path) -> dict[str, Any]:
    options = {"path": str(models["sd"]), "device": "cpu", "sampler": "Euler a"}
    direct = diffusers_engine(options, work / "direct")
    service = {
        "name": "sd",
        "engine": "diffusers",
        "options": options,
        "max_batch_size": 1,
        "job_timeout": 600,
        "replicas": {"min": 1, "max": 1},
    }
    rounds: list[dict[str, Any]] = []
    with serving(service, work) as (server, client):
        submit_wait(client, server, sd_payloads(args, 99)[0])  # the first HTTP and queue round trip
        for round_ in range(args.rounds):
            rounds.append(sd_round(args, round_, direct, server, client, work))
            print(f"  sd round {round_}: {rounds[-1]}", flush=True)
    direct.unload()
    return summarise_rates(rounds, "images")


def sd_round(
    args: argparse.Namespace, round_: int, direct: Any, server: Server, client: httpx.Client, work: Path
) -> dict[str, Any]:
    payloads = sd_payloads(args, round_)
    images = float(len(payloads))

    def via_direct() -> float:
        seconds, _ = timed(
            lambda: [run_direct(direct, work / "direct", p, f"r{round_}-{i}") for i, p in enumerate(payloads)]
        )
        return images / seconds

    served: list[dict[str, Any]] = []

    def via_swell() -> float:
        seconds, jobs = closed_loop(client, server, payloads, args.sd_clients)
        served.extend(jobs)
        return images / seconds

    swell, peer = interleaved(round_, via_swell, via_direct)
    first = served[0]
    png = client.get(f"{server.base}/v1/jobs/{first['id']}/files/0.png").content
    local = (work / "direct" / "files" / f"r{round_}-0" / "0.png").read_bytes()
    running = median([float(j["finished_at"]) - float(j["started_at"]) for j in served])
    return {
        "swell": swell,
        "direct": peer,
        "ratio": swell / peer,
        "same_bytes": png == local,
        "leased_to_final_s": running,
    }


def interleaved(round_: int, swell: Callable[[], float], peer: Callable[[], float]) -> tuple[float, float]:
    """Both measured, the peer first in even rounds and second in odd ones."""
    if round_ % 2 == 0:
        peer_rate = peer()
        return swell(), peer_rate
    swell_rate = swell()
    return swell_rate, peer()


def summarise_rates(rounds: list[dict[str, Any]], unit: str) -> dict[str, Any]:
    return {
        "unit": f"{unit}/s",
        "swell": median([r["swell"] for r in rounds]),
        "direct": median([r["direct"] for r in rounds]),
        "ratio": median([r["ratio"] for r in rounds]),
        "rounds": rounds,
    }


# -- llm: tokens/s ----------------------------------------------------------------------------------------


@dataclass
class PlainLM:
    """The tiny LM loaded with transformers alone, generating greedily as a user's script would."""

    model: Any
    tokenizer: Any
    eos: list[int]
    pad: int

    @classmethod
    def load(cls, folder: Path) -> PlainLM:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, use_safetensors=True
        ).eval()
        ends = model.generation_config.eos_token_id
        eos = [int(e) for e in (ends if isinstance(ends, list) else [ends])]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        return cls(model, tokenizer, eos, int(pad))

    def generate(self, prompts: Sequence[str], max_tokens: int) -> int:
        """Greedy completions of `prompts` in one left-padded `generate`; the tokens made, each row
        counted up to and including its first end token."""
        import torch

        rows = [self.tokenizer(p)["input_ids"] for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.inference_mode():
            out = self.model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=self.eos,
                pad_token_id=self.pad,
            )
        return sum(self._made(row[width:].tolist()) for row in out)

    def _made(self, new: list[int]) -> int:
        for index, token in enumerate(new):
            if token in self.eos:
                return index + 1
        return len(new)


def llm_payloads(count: int, tokens: int, offset: int = 0) -> list[dict[str, Any]]:
    return [
        {"prompt": PROMPTS[(offset + i) % len(PROMPTS)], "max_tokens": tokens, "temperature": 0}
        for i in range(count)
    ]


def llm_section(args: argparse.Namespace, models: dict[str, Path], work: Path) -> dict[str, Any]:
    """Both LMs: the tiny one (Swell's per-token and per-job costs are as large as the model's) and
    the larger one (the model's own cost is a realistic share)."""
    names = [name.strip() for name in args.llm_models.split(",") if name.strip()]
    return {name: llm_model(args, name, models[name], work / name) for name in names}


def llm_model(args: argparse.Namespace, name: str, folder: Path, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    plain = PlainLM.load(folder)
    plain.generate([PROMPTS[0]], 2)
    engine = llm_engine(folder, work / "direct", args.llm_batch)
    service = {
        "name": "llm",
        "engine": "transformers",
        "options": {"path": str(folder), "device": "cpu", "max_batch_rows": args.llm_batch},
        "max_batch_size": args.llm_batch,
        "job_timeout": 600,
        "replicas": {"min": 1, "max": 1},
    }
    single: list[dict[str, Any]] = []
    batched: list[dict[str, Any]] = []
    with serving(service, work) as (server, client):
        submit_wait(client, server, llm_payloads(1, 2)[0])
        for round_ in range(args.rounds):
            single.append(llm_single(args, round_, plain, engine, server, client))
            batched.append(llm_batched(args, round_, plain, engine, server, client))
            print(f"  {name} round {round_}: single {single[-1]}, batched {batched[-1]}", flush=True)
    engine.unload()
    return {
        "parameters": sum(p.numel() for p in plain.model.parameters()),
        "single": summarise_llm(single),
        "batched": summarise_llm(batched),
    }


def llm_engine(folder: Path, data: Path, rows: int) -> Any:
    """The transformers engine in this process: the engine's own cost, without the serving path."""
    from swell.engines.results import LocalResultStore
    from swell.engines.spec import EngineEnv
    from swell.engines.transformers.engine import TransformersEngine
    from swell.engines.transformers.spec import SPEC

    env = EngineEnv(data_dir=data, datasets={}, results=LocalResultStore(data), device="cpu")
    engine = TransformersEngine(SPEC.parse_options({"path": str(folder), "max_batch_rows": rows}), env)
    engine.load()
    return engine


def engine_tokens(engine: Any, payloads: Sequence[dict[str, Any]]) -> int:
    """One `run` over `payloads` in this process, with signals kept in memory; the tokens made."""
    from swell.engines.base import MemorySignals, RunContext

    context = RunContext([f"j{i}" for i in range(len(payloads))], Path("."), signals=MemorySignals())
    results = engine.run(list(payloads), context)
    return sum(int(r["usage"]["completion_tokens"]) for r in results)


def phases(jobs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Median seconds per job in the queue (created -> started) and running (started -> finished)."""
    return {
        "queued": median([j["started_at"] - j["created_at"] for j in jobs]),
        "running": median([j["finished_at"] - j["started_at"] for j in jobs]),
    }


def llm_single(
    args: argparse.Namespace, round_: int, plain: PlainLM, engine: Any, server: Server, client: httpx.Client
) -> dict[str, Any]:
    payloads = llm_payloads(args.llm_jobs, args.llm_tokens, round_)
    counts: dict[str, int] = {}
    seen: dict[str, Any] = {}

    def via_plain() -> float:
        seconds, made = timed(lambda: sum(plain.generate([p["prompt"]], args.llm_tokens) for p in payloads))
        counts["direct"] = made
        seen["direct_job"] = seconds / len(payloads)
        return made / seconds

    def via_engine() -> float:
        seconds, made = timed(lambda: sum(engine_tokens(engine, [p]) for p in payloads))
        counts["engine"] = made
        seen["engine_job"] = seconds / len(payloads)
        return made / seconds

    def via_swell() -> float:
        seconds, jobs = closed_loop(client, server, payloads, 1)
        counts["swell"] = sum(j["result"]["usage"]["completion_tokens"] for j in jobs)
        seen["swell_job"] = seconds / len(payloads)
        seen.update(phases(jobs))
        return counts["swell"] / seconds

    swell, peer = interleaved(round_, via_swell, via_plain)
    in_process = via_engine()
    return {"swell": swell, "direct": peer, "engine": in_process, "ratio": swell / peer,
            "engine_ratio": in_process / peer, "tokens": counts, "per_job": seen}  # fmt: skip


def llm_batched(
    args: argparse.Namespace, round_: int, plain: PlainLM, engine: Any, server: Server, client: httpx.Client
) -> dict[str, Any]:
    groups = [llm_payloads(args.llm_batch, args.llm_tokens, round_ + g) for g in range(args.llm_batches)]
    counts: dict[str, int] = {}

    def via_plain() -> float:
        seconds, made = timed(
            lambda: sum(plain.generate([p["prompt"] for p in g], args.llm_tokens) for g in groups)
        )
        counts["direct"] = made
        return made / seconds

    def via_engine() -> float:
        seconds, made = timed(lambda: sum(engine_tokens(engine, g) for g in groups))
        counts["engine"] = made
        return made / seconds

    def via_swell() -> float:
        total, made = 0.0, 0
        for group in groups:
            seconds, jobs = closed_loop(client, server, group, len(group))
            total += seconds
            made += sum(j["result"]["usage"]["completion_tokens"] for j in jobs)
        counts["swell"] = made
        return made / total

    swell, peer = interleaved(round_, via_swell, via_plain)
    in_process = via_engine()
    return {"swell": swell, "direct": peer, "engine": in_process, "ratio": swell / peer,
            "engine_ratio": in_process / peer, "tokens": counts}  # fmt: skip


def summarise_llm(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """`summarise_rates`, plus the engine in this process (its own cost without the serving path)."""
    summary = summarise_rates(rounds, "tokens")
    summary["engine"] = median([r["engine"] for r in rounds])
    summary["engine_ratio"] = median([r["engine_ratio"] for r in rounds])
    if all("per_job" in r for r in rounds):
        keys = rounds[0]["per_job"]
        summary["per_job"] = {key: median([r["per_job"][key] for r in rounds]) for key in keys}
    return summary


# -- lora: switch time and memory -------------------------------------------------------------------------


class FirstDelta:
    """Signals for an engine run in this process that note when its first delta came."""

    def __init__(self) -> None:
        from swell.engines.base import MemorySignals

        self.inner = MemorySignals()
        self.first: float | None = None

    def progress(self, job_id: str, fraction: float, preview: bytes | None, message: str | None) -> None:
        self.inner.progress(job_id, fraction, preview, message)

    def delta(self, job_id: str, text: str) -> None:
        self.choice_delta(job_id, 0, text)

    def choice_delta(self, job_id: str, index: int, text: str) -> None:
        if self.first is None and text:
            self.first = time.monotonic()
        self.inner.choice_delta(job_id, index, text)

    def cancelled(self, job_id: str) -> bool:
        return False


def engine_ttft(engine: Any, messages: list[dict[str, str]], tokens: int) -> float:
    """Seconds from the engine's `run` call to its first delta (in this process)."""
    from swell.engines.base import RunContext

    signals = FirstDelta()
    context = RunContext(["ttft"], Path("."), signals=signals)  # type: ignore[arg-type]
    started = time.monotonic()
    engine.run([{"messages": messages, "max_tokens": tokens, "temperature": 0}], context)
    if signals.first is None:
        raise RuntimeError("the engine streamed no text")
    return signals.first - started


def door_ttft(client: Any, messages: list[dict[str, str]], tokens: int) -> float:
    """Seconds from the SDK's streaming call to the first chunk with content, then the rest read."""
    started = time.monotonic()
    first: float | None = None
    stream = client.chat.completions.create(
        model="llm", messages=messages, max_tokens=tokens, temperature=0, stream=True
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.monotonic()
    if first is None:
        raise RuntimeError("the door streamed no text")
    return first - started


def ttft_section(args: argparse.Namespace, models: dict[str, Path], work: Path) -> dict[str, Any]:
    """The OpenAI door's time to first token against the engine's own (see the module docstring)."""
    import openai

    work.mkdir(parents=True, exist_ok=True)
    engine = llm_engine(models["llm"], work / "direct", 1)
    service = {
        "name": "llm",
        "engine": "transformers",
        "options": {"path": str(models["llm"]), "device": "cpu"},
        "job_timeout": 600,
        "replicas": {"min": 1, "max": 1},
    }
    door: list[float] = []
    own: list[float] = []
    with serving(service, work) as (server, _):
        client = openai.OpenAI(base_url=f"{server.base}/v1", api_key=API_KEY, max_retries=0, timeout=WAIT)
        for trial in range(args.ttft_trials + 1):  # trial 0 warms both sides up (one-off costs)
            messages = [{"role": "user", "content": PROMPTS[trial % len(PROMPTS)]}]
            if trial % 2 == 0:
                via_door = door_ttft(client, messages, args.llm_tokens)
                direct = engine_ttft(engine, messages, args.llm_tokens)
            else:
                direct = engine_ttft(engine, messages, args.llm_tokens)
                via_door = door_ttft(client, messages, args.llm_tokens)
            if trial:
                door.append(via_door)
                own.append(direct)
    engine.unload()
    door_p50, own_p50 = 1000 * median(door), 1000 * median(own)
    result = {
        "trials": len(door),
        "door_ms": {"p50": door_p50, "p90": 1000 * percentile(door, 0.9)},
        "engine_ms": {"p50": own_p50, "p90": 1000 * percentile(own, 0.9)},
        "door_minus_engine_ms_p50": door_p50 - own_p50,
        "ratio_p50": door_p50 / own_p50,
    }
    print(f"  ttft: {result}", flush=True)
    return result


def lora_section(args: argparse.Namespace, models: dict[str, Path], work: Path) -> dict[str, Any]:
    options = {"path": str(models["sd"]), "loras": str(models["loras"]), "lora_cache": args.lora_cache}
    engine = diffusers_engine({**options, "device": "cpu", "warmup": False}, work / "lora")
    cache = engine._loras  # the engine's own LoraCache over its pipeline, as `_call` drives it
    names = [f"tiny-{i}" for i in range(args.lora_count)]
    draw = random.Random(args.seed)
    hits: list[float] = []
    loads: list[float] = []
    baseline = 0
    for index in range(args.lora_warmup + args.lora_switches):
        if index == args.lora_warmup:
            gc.collect()
            baseline = rss_bytes()
        wanted = [(n, round(draw.uniform(0.3, 1.0), 2)) for n in draw.sample(names, draw.choice((1, 2)))]
        before = cache.stats.loads
        seconds, _ = timed(functools.partial(cache.activate, wanted))
        if index >= args.lora_warmup:
            (loads if cache.stats.loads > before else hits).append(seconds)
    gc.collect()
    after = rss_bytes()
    every = hits + loads
    ms = 1000.0
    return {
        "switches": len(every),
        "adapters": args.lora_count,
        "cache": args.lora_cache,
        "p50_ms": percentile(every, 0.5) * ms,
        "p99_ms": percentile(every, 0.99) * ms,
        "hit_switches": len(hits),
        "hit_p50_ms": percentile(hits, 0.5) * ms,
        "hit_p99_ms": percentile(hits, 0.99) * ms,
        "load_switches": len(loads),
        "load_p50_ms": percentile(loads, 0.5) * ms,
        "load_p99_ms": percentile(loads, 0.99) * ms,
        "rss_before_mb": baseline / 2**20,
        "rss_after_mb": after / 2**20,
        "rss_growth_percent": 100.0 * (after - baseline) / baseline,
        "stats": vars(cache.stats),
        "loaded_at_end": cache.loaded,
    }


# -- checkpoint: single-file load time ---------------------------------------------------------------------


def checkpoint_section(args: argparse.Namespace, models: dict[str, Path], work: Path) -> dict[str, Any]:
    """The tiny SD model's single-file checkpoint loaded into a pipeline the engine's way (read by
    swell.data's loader, keys mapped by diffusers' converters) against diffusers'
    `StableDiffusionPipeline.from_single_file` opening the file itself, same config folder; rounds
    alternate the order, the file is in the page cache for both after the first."""
    import diffusers
    import torch

    from swell.engines.diffusers.engine import _load_single_file
    from swell.models.tiny import CONFIG_FOLDER, SINGLE_FILE

    checkpoint, config = models["sd"] / SINGLE_FILE, models["sd"] / CONFIG_FOLDER
    common = {"safety_checker": None, "requires_safety_checker": False, "local_files_only": True}

    def via_swell() -> float:
        return timed(lambda: _load_single_file(diffusers, checkpoint, config, torch.float32))[0]

    def via_diffusers() -> float:
        load = diffusers.StableDiffusionPipeline.from_single_file
        return timed(lambda: load(str(checkpoint), config=str(config), **common))[0]

    via_swell(), via_diffusers()  # imports and first-call costs out of the rounds
    rounds = []
    for round_ in range(max(args.rounds, 5)):
        swell, peer = interleaved(round_, via_swell, via_diffusers)
        rounds.append({"swell": swell, "diffusers": peer, "ratio": peer / swell})
    return {
        "unit": "seconds per load",
        "bytes": checkpoint.stat().st_size,
        "swell": median([r["swell"] for r in rounds]),
        "diffusers": median([r["diffusers"] for r in rounds]),
        "speedup": median([r["ratio"] for r in rounds]),
        "rounds": rounds,
    }


# -- main -------------------------------------------------------------------------------------------------


def arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a check that it runs")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS)
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sd-size", type=int, default=256)
    parser.add_argument("--sd-steps", type=int, default=10)
    parser.add_argument("--sd-images", type=int, default=6, help="images per side per round")
    parser.add_argument("--sd-clients", type=int, default=2, help="closed-loop clients")
    parser.add_argument("--llm-tokens", type=int, default=64)
    parser.add_argument("--llm-jobs", type=int, default=16, help="single jobs per side per round")
    parser.add_argument("--llm-batch", type=int, default=8)
    parser.add_argument("--llm-batches", type=int, default=4, help="batches per side per round")
    parser.add_argument("--llm-models", default=",".join(LLM_MODELS), help="comma-separated: llm, llm-large")
    parser.add_argument("--ttft-trials", type=int, default=20, help="streamed requests per side")
    parser.add_argument("--lora-count", type=int, default=8)
    parser.add_argument("--lora-cache", type=int, default=3)
    parser.add_argument("--lora-switches", type=int, default=1000)
    parser.add_argument("--lora-warmup", type=int, default=50)
    parser.add_argument(
        "--threads", type=int, default=1, help="OpenMP/torch threads, here and in the workers alike"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (models, data, logs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.sd_size, args.sd_steps, args.sd_images = 2, 128, 6, 3
        args.llm_jobs, args.llm_batches, args.lora_switches, args.lora_warmup = 4, 1, 200, 20
        args.ttft_trials = 6
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)} (known: {', '.join(SECTIONS)})")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # before torch loads
    work = Path(tempfile.mkdtemp(prefix="swell-bench-engines-"))
    summary: dict[str, Any] = {"commit": commit(), "cpus": os.cpu_count(), "args": vars(args)}
    try:
        started = time.monotonic()
        models = build_models(work / "models", sections, args.lora_count)
        runners = {
            "sd": sd_section,
            "llm": llm_section,
            "ttft": ttft_section,
            "lora": lora_section,
            "checkpoint": checkpoint_section,
        }
        for name in sections:
            print(f"{name}:", flush=True)
            summary[name] = runners[name](args, models, work)
        summary["seconds"] = time.monotonic() - started
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
