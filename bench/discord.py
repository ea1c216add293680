"""The Discord door's time to the deferred response, with the job enqueued durably.

Starts `swell up` (a real process over SQLite, one worker of a `callable` service that does no work)
with a `discord:` section whose API base is a stand-in Discord API in a process of its own (it
answers the follow-up edits and counts them), then sends an open-loop load of R signed slash
commands per second for D seconds (each signed with a real Ed25519 key when it leaves, each a new
interaction id and user) and measures the time to the `{"type": 5}` answer: p50, p99, max, and the
failures. Every command must also be answered: the follow-ups received are counted against the
deferred answers. Then, on the same server, the same jobs at the same rate through `/v1/jobs`: the
enqueue without the door (and without follow-ups running beside it).

The peer is the least a Discord endpoint can do: a minimal Starlette app under uvicorn that verifies
the signature with the same library and answers type 5 without enqueueing anything. The gap between
them is what the durable enqueue (validation, the filter, admission, group commit into SQLite, the
outbox row), the door and the follow-ups sharing the gateway's event loop cost.

    python bench/discord.py [--rate 50] [--duration 20] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

APP_ID = "1100000000000000001"
TARGET_P99_MS = 250.0
PATH = "/discord/interactions"


@dataclass
class Result:
    system: str
    rate: float
    sent: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    followups: int | None  # edits the stand-in received (Swell only)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


@contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- the stand-in Discord API: answers edits, counts them (a process of its own: in this one its
# threads could take the GIL from the load generator and show as latency of the server under test) --

STAND_IN = """
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

tokens, lock = set(), threading.Lock()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_PATCH(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with lock:
            tokens.add(self.path.split("/")[5])  # /api/v10/webhooks/APP/TOKEN/...
        self.answer(b'{"id": "1"}')

    def do_GET(self):
        with lock:
            self.answer(json.dumps({"followed_up": len(tokens)}).encode())

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass

class Server(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True

Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@contextmanager
def discord_stand_in(workdir: Path) -> Iterator[tuple[str, Callable[[], int]]]:
    """The stand-in's API base, and how many interactions it has received an edit for."""
    (workdir / "stand_in.py").write_text(STAND_IN)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with process(
        [sys.executable, str(workdir / "stand_in.py"), str(port)], dict(os.environ), workdir / "api.log"
    ):
        wait_until(lambda: httpx.get(f"{base}/count", timeout=2).status_code == 200, 30, "the stand-in")
        yield f"{base}/api/v10", lambda: int(httpx.get(f"{base}/count", timeout=10).json()["followed_up"])


# -- the two servers ------------------------------------------------------------------------------------


@contextmanager
def swell_server(workdir: Path, public_key: str, api_base: str) -> Iterator[str]:
    config = workdir / "swell.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        services:
          - name: draw
            engine: callable
            options: {{function: "builtins:dict"}}
            replicas: {{min: 1, max: 1}}
            max_batch_size: 32
            queue_limit: 1000000
        brain: {{mode: "off"}}
        discord:
          application_id: "{APP_ID}"
          public_key: {public_key}
          api_base: {api_base}
          per_user_rate: 10000
          per_user_concurrency: 1000
          commands:
            imagine:
              service: draw
              description: Draw a picture
              options: {{prompt: prompt}}
        """)
    )
    port = free_port()
    env = {**os.environ, "SWELL_API_KEY": "bench-key", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "swell", "up", "--config", str(config), "--data-dir", str(workdir / "data")]
    cmd += ["--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer bench-key"}
    with process(cmd, env, workdir / "swell.log"):

        def ready() -> bool:
            services = httpx.get(f"{base}/v1/services", headers=headers, timeout=2).json()["services"]
            return any(r["state"] in ("ready", "busy") for s in services for r in s["replicas"])

        wait_until(ready, 120, "swell's worker")
        yield base


PEER_APP = """
import json, os
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

KEY = Ed25519PublicKey.from_public_bytes(bytes.fromhex(os.environ["BENCH_PUBLIC_KEY"]))

async def interactions(request):
    body = await request.body()
    try:
        signature = bytes.fromhex(request.headers["x-signature-ed25519"])
        KEY.verify(signature, request.headers["x-signature-timestamp"].encode() + body)
    except (KeyError, ValueError, InvalidSignature):
        return Response(status_code=401)
    kind = json.loads(body)["type"]
    return JSONResponse({"type": 1} if kind == 1 else {"type": 5})

async def healthz(request):
    return JSONResponse({"status": "ok"})

routes = [Route("/discord/interactions", interactions, methods=["POST"]), Route("/healthz", healthz)]
app = Starlette(routes=routes)
"""


@contextmanager
def peer_server(workdir: Path, public_key: str) -> Iterator[str]:
    (workdir / "peer_app.py").write_text(PEER_APP)
    port = free_port()
    env = {**os.environ, "BENCH_PUBLIC_KEY": public_key, "PYTHONPATH": str(workdir)}
    cmd = [sys.executable, "-m", "uvicorn", "peer_app:app", "--port", str(port), "--log-level", "warning"]
    cmd += ["--no-access-log"]
    base = f"http://127.0.0.1:{port}"
    with process(cmd, env, workdir / "peer.log"):
        wait_until(lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200, 60, "the peer")
        yield base


# -- the load ---------------------------------------------------------------------------------------------
#
# A lean HTTP/1.1 client (keep-alive connections, one write and one read a request), as in
# bench/gateway.py: on a small machine httpx would cost more CPU per request than the servers do.


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, base: str) -> Connection:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer, host)

    async def post(self, body: bytes, headers: dict[str, str], path: str = PATH) -> tuple[int, bytes]:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection")
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


_ids = itertools.count(3_300_000_000_000_000_000)


def signed_command(key: Ed25519PrivateKey) -> tuple[bytes, dict[str, str], str]:
    """A new /imagine interaction, signed now: body, headers, the path it goes to."""
    ident = str(next(_ids))
    payload = {
        "id": ident,
        "application_id": APP_ID,
        "type": 2,
        "token": f"token-{ident}",
        "version": 1,
        "channel_id": "2200000000000000002",
        "member": {"user": {"id": ident}},
        "data": {
            "id": "1",
            "name": "imagine",
            "type": 1,
            "options": [{"name": "prompt", "type": 3, "value": "a cat"}],
        },
    }
    body = json.dumps(payload).encode()
    stamp = str(int(time.time()))
    signature = key.sign(stamp.encode() + body).hex()
    headers = {
        "Content-Type": "application/json",
        "X-Signature-Ed25519": signature,
        "X-Signature-Timestamp": stamp,
    }
    return body, headers, PATH


def plain_submit() -> tuple[bytes, dict[str, str], str]:
    """The same job through `/v1/jobs` (the reference: the enqueue without the Discord door)."""
    ident = next(_ids)
    body = b'{"service":"draw","input":{"prompt":"a cat","i":%d}}' % ident
    return body, {"Content-Type": "application/json", "Authorization": "Bearer bench-key"}, "/v1/jobs"


async def load(
    base: str, key: Ed25519PrivateKey, rate: float, duration: float, *, jobs_api: bool = False
) -> tuple[list[float], dict[str, int], int]:
    """Open loop: command i leaves at start + i/rate on an idle connection (a new one when all are
    busy). The latencies of deferred answers, the failures by kind, how many were deferred."""
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    idle = collections.deque([await Connection.open(base) for _ in range(8)])

    async def one() -> None:
        body, headers, path = signed_command(key) if not jobs_api else plain_submit()
        t0 = time.perf_counter()
        connection = idle.popleft() if idle else None
        try:
            connection = connection or await Connection.open(base)
            status, answer = await connection.post(body, headers, path)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors[type(exc).__name__] += 1
            if connection is not None:
                connection.close()
            return
        elapsed = time.perf_counter() - t0
        idle.append(connection)
        if (status == 200 and json.loads(answer).get("type") == 5) or (jobs_api and status == 202):
            latencies.append(elapsed)
        else:
            errors[f"HTTP {status} {answer[:80]!r}"] += 1

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * duration)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    for connection in idle:
        connection.close()
    return latencies, dict(errors), len(latencies)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarise(
    system: str,
    args: argparse.Namespace,
    latencies: list[float],
    errors: dict[str, int],
    followups: int | None,
) -> Result:
    ms = [x * 1000 for x in latencies] or [float("nan")]
    return Result(
        system, args.rate, int(args.rate * args.duration), round(statistics.median(ms), 2),
        round(percentile(ms, 0.99), 2), round(max(ms), 2), errors, followups,
    )  # fmt: skip


def measure_peer(key: Ed25519PrivateKey, public: str, args: argparse.Namespace) -> Result:
    with (
        tempfile.TemporaryDirectory(prefix="bench-discord-peer-") as tmp,
        peer_server(Path(tmp), public) as base,
    ):
        asyncio.run(load(base, key, args.rate, 1.0))  # warm up
        latencies, errors, _ = asyncio.run(load(base, key, args.rate, args.duration))
    return summarise("verify+respond (peer)", args, latencies, errors, None)


def measure_swell(key: Ed25519PrivateKey, public: str, args: argparse.Namespace) -> list[Result]:
    """The door under load, then (on the same server, after its follow-ups) the same jobs through
    `/v1/jobs`: what the enqueue alone costs at this moment on this machine."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-discord-swell-") as tmp,
        discord_stand_in(Path(tmp)) as (api_base, followed_up),
        swell_server(Path(tmp), public, api_base) as base,
    ):
        _, _, warm = asyncio.run(load(base, key, args.rate, 1.0))
        latencies, errors, deferred = asyncio.run(load(base, key, args.rate, args.duration))
        expected = warm + deferred
        try:
            wait_until(lambda: followed_up() >= expected, 120, "every follow-up")
        except TimeoutError:
            print(f"only {followed_up()} of {expected} commands were followed up", file=sys.stderr)
        followups = followed_up()
        time.sleep(2.0)
        reference, reference_errors, _ = asyncio.run(load(base, key, args.rate, args.duration, jobs_api=True))
    return [
        summarise("swell /discord (durable)", args, latencies, errors, followups),
        summarise("swell /v1/jobs (same)", args, reference, reference_errors, None),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    results = [*measure_swell(key, public, args), measure_peer(key, public, args)]
    report(results, args)


def report(results: list[Result], args: argparse.Namespace) -> None:
    if args.json:
        for r in results:
            print(json.dumps(asdict(r)))
        return
    print(f"{'system':26} {'rate/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  follow-ups  errors")
    for r in results:
        errors = ", ".join(f"{n} {kind}" for kind, n in sorted(r.errors.items())) or "0"
        followups = "" if r.followups is None else str(r.followups)
        print(
            f"{r.system:26} {r.rate:7.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.max_ms:8.2f}"
            f"  {followups:>10}  {errors}"
        )
    swell, reference, peer = results
    verdict = "met" if swell.p99_ms < TARGET_P99_MS else "missed"
    print(
        f"swell / peer: p50 x{swell.p50_ms / peer.p50_ms:.2f}, p99 x{swell.p99_ms / peer.p99_ms:.2f}; "
        f"target p99 < {TARGET_P99_MS:.0f} ms {verdict}; door / /v1/jobs: p50 "
        f"x{swell.p50_ms / reference.p50_ms:.2f}, p99 x{swell.p99_ms / reference.p99_ms:.2f}"
    )


if __name__ == "__main__":
    main()
