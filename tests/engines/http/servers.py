"""Small loopback servers that speak the protocols the http engine fronts: AUTOMATIC1111's `--api`
(txt2img, img2img, progress, interrupt, checkpoints by override_settings) and an OpenAI-compatible
server (streamed completions and chat completions, embeddings, models). Stdlib only, one thread per
request. Run as `python -m tests.engines.http.servers MODE PORT` for a server in its own process.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def png(width: int, height: int, shade: int) -> bytes:
    """A real, tiny grey PNG (so the engine's files are images a PNG reader opens)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([shade % 256]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.route(self, "GET")

    def do_POST(self) -> None:
        self.server.route(self, "POST")

    def body(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.requests: list[tuple[str, Any]] = []  # (path, JSON body) of each POST
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def route(self, handler: Handler, method: str) -> None:
        raise NotImplementedError

    def start(self) -> FakeServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class FakeA1111(FakeServer):
    """An A1111 web UI's API: generation runs `steps` steps of `step_seconds` each, interruptible."""

    def __init__(self, port: int = 0, step_seconds: float = 0.02) -> None:
        super().__init__(port)
        self.step_seconds = step_seconds
        self.checkpoint = "base.safetensors"
        self.switches = 0
        self.progress = 0.0
        self.interrupted = threading.Event()
        self.busy = threading.Lock()  # A1111 runs one generation at a time

    def route(self, handler: Handler, method: str) -> None:
        path = handler.path.split("?")[0]
        if method == "GET" and path == "/sdapi/v1/progress":
            preview = (
                base64.b64encode(png(8, 8, 99)).decode()
                if "skip_current_image=false" in handler.path
                else None
            )
            state = {"sampling_step": int(self.progress * 10), "sampling_steps": 10}
            handler.send_json(200, {"progress": self.progress, "state": state, "current_image": preview})
        elif method == "POST" and path == "/sdapi/v1/interrupt":
            self.interrupted.set()
            handler.send_json(200, {})
        elif method == "POST" and path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
            body = handler.body()
            with self.lock:
                self.requests.append((path, body))
            self.generate(handler, body)
        else:
            handler.send_json(404, {"detail": "Not Found"})

    def generate(self, handler: Handler, body: dict[str, Any]) -> None:
        if body.get("sampler_name") not in (None, "Euler a", "DPM++ 2M", "Euler"):
            handler.send_json(422, {"detail": f"Sampler not found: {body.get('sampler_name')}"})
            return
        with self.busy:
            wanted = (body.get("override_settings") or {}).get("sd_model_checkpoint")
            if wanted and wanted != self.checkpoint:
                self.checkpoint, self.switches = wanted, self.switches + 1
            self.interrupted.clear()
            steps = int(body.get("steps") or 20)
            for step in range(steps):
                if self.interrupted.is_set():
                    break
                self.progress = step / steps
                time.sleep(self.step_seconds)
            self.progress = 0.0
            handler.send_json(200, self.answer(body))

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        seed = int(body.get("seed", -1))
        seed = 1234 if seed == -1 else seed
        count, width, height = (
            int(body.get("batch_size", 1)),
            int(body.get("width", 64)),
            int(body.get("height", 64)),
        )
        seeds = [seed + i for i in range(count)]
        texts = [
            f"{body.get('prompt')}\nSteps: {body.get('steps')}, Seed: {s}, Model: {self.checkpoint}"
            for s in seeds
        ]
        images = [base64.b64encode(png(width // 8, height // 8, s)).decode() for s in seeds]
        info = {"all_seeds": seeds, "infotexts": texts, "sd_model_name": self.checkpoint.split(".")[0]}
        info.update(width=width, height=height, sampler_name=body.get("sampler_name") or "Euler a")
        return {"images": images, "parameters": body, "info": json.dumps(info)}


class FakeOpenAI(FakeServer):
    """An OpenAI-compatible server: each completion streams `max_tokens` pieces `tok0 tok1 ...`
    (`piece_seconds` apart; completion k > 0 of `n` its own `k:tok0 k:tok1 ...`, interleaved with the
    others' as vLLM sends them), with usage in the last chunk; a client that goes away is counted."""

    def __init__(self, port: int = 0, piece_seconds: float = 0.0) -> None:
        super().__init__(port)
        self.piece_seconds = piece_seconds
        self.disconnects = 0
        self.concurrent = self.most_concurrent = 0

    def route(self, handler: Handler, method: str) -> None:
        path = handler.path.split("?")[0]
        if method == "GET" and path in ("/v1/models", "/health"):
            handler.send_json(200, {"object": "list", "data": [{"id": "tiny-llm", "object": "model"}]})
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            body = handler.body()
            with self.lock:
                self.requests.append((path, body))
            if body.get("model") not in ("tiny-llm", "other-llm"):
                handler.send_json(
                    404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
                )
                return
            self.stream(handler, body, chat=path.endswith("chat/completions"))
        elif method == "POST" and path == "/v1/embeddings":
            body = handler.body()
            rows = [
                {"index": i, "embedding": [float(len(t)), float(i), 1.0]} for i, t in enumerate(body["input"])
            ]
            handler.send_json(
                200, {"data": rows[::-1], "model": body.get("model"), "usage": {"prompt_tokens": 3}}
            )
        else:
            handler.send_json(404, {"error": {"message": "not found"}})

    def stream(self, handler: Handler, body: dict[str, Any], chat: bool) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        with self.lock:
            self.concurrent += 1
            self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            for chunk in self.chunks(body, chat):
                self.send_event(handler, json.dumps(chunk))
                time.sleep(self.piece_seconds)
            self.send_event(handler, "[DONE]")
            handler.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            with self.lock:
                self.disconnects += 1
        finally:
            with self.lock:
                self.concurrent -= 1

    def chunks(self, body: dict[str, Any], chat: bool) -> Any:
        tokens, n = int(body.get("max_tokens", 16)), int(body.get("n", 1))
        stop = (body.get("stop") or [None])[0]
        for i in range(tokens):
            piece = f"tok{i} "
            for index in range(n):
                done = i == tokens - 1 or (stop is not None and stop in piece)
                text = piece if index == 0 else f"{index}:{piece}"
                content = {"delta": {"content": text}} if chat else {"text": text}
                choice = {
                    "index": index,
                    **content,
                    "finish_reason": ("stop" if stop else "length") if done else None,
                }
                yield {"model": body["model"], "choices": [choice]}
            if stop is not None and stop in piece:
                tokens = i + 1
                break
        usage = {"prompt_tokens": 5, "completion_tokens": tokens * n, "total_tokens": 5 + tokens * n}
        yield {"model": body["model"], "choices": [], "usage": usage}

    @staticmethod
    def send_event(handler: Handler, data: str) -> None:
        event = f"data: {data}\n\n".encode()
        handler.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        handler.wfile.flush()


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    server = FakeA1111(port) if mode == "a1111" else FakeOpenAI(port, piece_seconds=float(sys.argv[3]))
    server.serve_forever()
