"""Real servers on loopback for the data-plane tests and bench: an HTTP file server with Range support
(counting the bytes it sends, optionally throttled) and moto's S3 server."""

from __future__ import annotations

import email.utils
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
PIECE = 1 << 20  # bytes sent per paced step


class Counter:
    def __init__(self) -> None:
        self.bytes = 0
        self.requests = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            self.requests += 1


class RangeHandler(SimpleHTTPRequestHandler):
    """GET/HEAD of files under the directory, honouring one `Range: bytes=a-b`."""

    counter: Counter
    link: Link

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        match = RANGE.match(self.headers.get("Range", ""))
        if match:
            a, b = match.groups()
            if a:
                start, end = int(a), min(int(b), size - 1) if b else size - 1
            else:
                start, end = size - int(b), size - 1
            if start >= size:
                self.send_error(416)
                return
        length = end - start + 1
        self.send_response(206 if match else 200)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        stat = path.stat()
        self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
        self.send_header("ETag", '"' + hashlib.md5(f"{stat.st_mtime_ns}{size}".encode()).hexdigest() + '"')
        self.end_headers()
        if body:
            self._send(path, start, length)

    def _send(self, path: Path, start: int, length: int) -> None:
        with open(path, "rb") as f:
            while length > 0:
                n = min(length, PIECE)
                self.link.wait_for(n)
                sent = self.connection.sendfile(f, start, n)  # zero-copy: the server is not the bottleneck
                if not sent:
                    break
                self.counter.add(sent)
                start, length = start + sent, length - sent


class Link:
    """One shared link of `rate` bytes/s (None: unlimited), with a small buffer of `burst` bytes.

    Each piece reserves the link's next free slot under the lock and sleeps until it outside the lock,
    so all connections together get `rate`, and the time a piece takes to send does not slow the link.
    """

    def __init__(self, rate: float | None, burst: int = 4 * PIECE) -> None:
        self.rate, self.burst = rate, burst
        self._free_at = 0.0
        self._lock = threading.Lock()

    def wait_for(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._free_at = max(self._free_at, now - self.burst / self.rate) + n / self.rate
            wait = self._free_at - now
        if wait > 0:
            time.sleep(wait)


@contextmanager
def range_server(root: Path, rate: float | None = None) -> Iterator[tuple[str, Counter]]:
    """Serve `root` over HTTP on loopback, all connections sharing one link of `rate` bytes/s (None:
    unlimited); yields (base URL, byte counter)."""
    counter = Counter()
    handler = type("Handler", (RangeHandler,), {"counter": counter, "link": Link(rate)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counter
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def s3_server(bucket: str) -> Iterator[str]:
    """moto's S3 server on loopback with `bucket` created; yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    from tests.support import free_port

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")).read()
        yield endpoint
    finally:
        server.stop()
