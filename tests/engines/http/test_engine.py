"""The http engine in-process against real loopback servers speaking A1111's and OpenAI's protocols."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

from swell.core.errors import Unavailable, ValidationError
from swell.engines.base import JobCancelled, MemorySignals
from tests.engines.http.conftest import make_engine, run
from tests.engines.http.servers import FakeA1111, FakeOpenAI, png
from tests.support import wait_for


def test_a1111_jobs_become_files_with_their_infotext(a1111: FakeA1111, tmp_path: Path) -> None:
    engine = make_engine(
        tmp_path, mode="a1111", url=a1111.url, model="base.safetensors", previews=True, progress_every=0.01
    )
    try:
        job = {"prompt": "castle", "steps": 10, "seed": 7, "images": 2, "width": 128, "height": 64,
               "sampler": "Euler", "guidance": 6.5, "loras": [{"name": "style", "weight": 0.8}]}  # fmt: skip
        results, signals = run(engine, [job], tmp_path)
        result = results[0]
        assert [image["seed"] for image in result["images"]] == [7, 8] and result["seeds"] == [7, 8]
        data = (tmp_path / "files" / "j0" / "0.png").read_bytes()
        assert data == png(16, 8, 7) and result["images"][1]["file"] == "1.png"
        assert "Seed: 7" in result["parameters"] and result["info"]["sd_model_name"] == "base"
        path, sent = a1111.requests[0]
        assert path == "/sdapi/v1/txt2img" and sent["cfg_scale"] == 6.5 and sent["batch_size"] == 2
        assert (
            sent["prompt"] == "castle <lora:style:0.8>"
            and sent["override_settings_restore_afterwards"] is False
        )
        assert signals.fractions("j0") and signals.fractions("j0") == sorted(signals.fractions("j0"))
        assert signals.previews["j0"].startswith(b"\x89PNG")
    finally:
        engine.unload()


def test_a1111_switches_checkpoint_per_job_and_keeps_it(a1111: FakeA1111, tmp_path: Path) -> None:
    engine = make_engine(tmp_path, mode="a1111", url=a1111.url)
    try:
        init = "data:image/png;base64," + base64.b64encode(png(8, 8, 1)).decode()
        run(engine, [{"prompt": "a", "steps": 2, "model": "other.safetensors", "init_image": init}], tmp_path)
        assert a1111.checkpoint == "other.safetensors" and engine.model == "other.safetensors"
        path, sent = a1111.requests[0]
        assert (
            path == "/sdapi/v1/img2img"
            and sent["denoising_strength"] == 0.75
            and "," not in sent["init_images"][0]
        )
        run(engine, [{"prompt": "b", "steps": 2}], tmp_path)  # no model: the one the server holds
        assert a1111.switches == 1
        results, _ = run(engine, [{"prompt": "c", "sampler": "Bogus"}], tmp_path)
        assert isinstance(results[0], ValidationError) and "Sampler not found" in str(results[0])
    finally:
        engine.unload()


def test_a1111_cancel_interrupts_the_server(tmp_path: Path) -> None:
    server = FakeA1111(step_seconds=0.05).start()
    engine = make_engine(tmp_path, mode="a1111", url=server.url)
    signals = MemorySignals()
    try:
        threading.Timer(0.3, signals.cancel, args=("j0",)).start()
        started = time.monotonic()
        results, _ = run(engine, [{"prompt": "a", "steps": 400}], tmp_path, signals)
        assert isinstance(results[0], JobCancelled) and server.interrupted.is_set()
        assert time.monotonic() - started < 400 * 0.05  # it did not run the 400 steps
    finally:
        engine.unload()
        server.stop()


def test_openai_streams_batches_and_counts_tokens(oai: FakeOpenAI, tmp_path: Path) -> None:
    engine = make_engine(tmp_path, mode="openai", url=oai.url)
    try:
        assert engine.model == "tiny-llm"  # from /v1/models
        jobs = [
            {"prompt": "hello", "max_tokens": 12, "temperature": 0.0, "seed": 3},
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "n": 2},
            {"texts": ["ab", "c"]},
            {"prompt": "x", "model": "missing"},
        ]
        results, signals = run(engine, jobs, tmp_path)
        first = results[0]
        assert first["choices"][0]["text"] == "".join(f"tok{i} " for i in range(12)) == signals.text("j0")
        assert (
            first["usage"]["completion_tokens"] == 12 and first["seed"] == 3 and first["model"] == "tiny-llm"
        )
        assert signals.fractions("j0") == sorted(signals.fractions("j0"))
        second = results[1]
        assert [c["text"] for c in second["choices"]] == [
            "tok0 tok1 tok2 tok3 ",
            "1:tok0 1:tok1 1:tok2 1:tok3 ",
        ]
        assert [signals.text("j1", i) for i in (0, 1)] == [c["text"] for c in second["choices"]]
        assert [i for j, i, _ in signals.choices if j == "j1"] == [0, 1] * 4, "each piece as it came"
        assert (
            results[2]["embeddings"] == [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]] and results[2]["dimensions"] == 3
        )
        assert isinstance(results[3], ValidationError) and "does not exist" in str(results[3])
        sent = dict(oai.requests)
        assert sent["/v1/completions"]["stream"] is True and "top_k" not in sent["/v1/completions"]
        assert sent["/v1/chat/completions"]["messages"] == [{"role": "user", "content": "hi"}]
        assert oai.most_concurrent >= 2  # the call's jobs were streamed at once
    finally:
        engine.unload()


def test_openai_cancel_closes_the_stream(tmp_path: Path) -> None:
    server = FakeOpenAI(piece_seconds=0.02).start()
    engine = make_engine(tmp_path, mode="openai", url=server.url, model="tiny-llm")
    signals = MemorySignals()
    try:
        threading.Thread(
            target=lambda: (wait_for(lambda: bool(signals.text("j0")), 10, "text"), signals.cancel("j0"))
        ).start()
        results, _ = run(
            engine, [{"prompt": "a", "max_tokens": 2000}, {"prompt": "b", "max_tokens": 3}], tmp_path, signals
        )
        assert isinstance(results[0], JobCancelled) and results[1]["choices"][0]["text"] == "tok0 tok1 tok2 "
        wait_for(lambda: server.disconnects == 1, 10, "the server to see the client go")
        assert len(signals.text("j0")) < len("tok0 ") * 2000
    finally:
        engine.unload()
        server.stop()


def test_a_server_that_is_gone_fails_the_job_retryably(oai: FakeOpenAI, tmp_path: Path) -> None:
    engine = make_engine(tmp_path, mode="openai", url=oai.url, model="tiny-llm")
    try:
        oai.stop()
        results, _ = run(engine, [{"prompt": "a"}], tmp_path)
        assert isinstance(results[0], Unavailable)
    finally:
        engine.unload()
