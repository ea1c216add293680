"""A stand-in for Discord's HTTP API: a real HTTP server on loopback that checks what it is sent.

- `PATCH /webhooks/{app}/{token}/messages/@original`: a JSON body, or multipart/form-data parsed
  strictly (every part a named form-data field; `payload_json` JSON; each `files[n]` with a file
  name; the `attachments` of payload_json exactly the ids n of the `files[n]` sent, with their file
  names). A refused edit is a 400 and is kept in `problems`.
- Rate limits like Discord's: each token's edits share a bucket of `bucket_size` per
  `bucket_seconds`, announced in `X-RateLimit-*` headers; an edit while the bucket is empty is a 429
  (counted in `violations`: a client that reads the headers never earns one). `rate_limit_first`
  answers the first N edits 429 with `retry_after` regardless, like a shared or global limit.
- `expired_tokens`: edits with these tokens answer 404 Unknown Webhook (code 10015).
- `PUT /applications/{app}/commands` and `/applications/{app}/guilds/{guild}/commands`: needs
  `Authorization: Bot <bot_token>`, checks each command's shape, answers them with ids.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EDIT = re.compile(r"^/api/v10/webhooks/(?P<app>[0-9]+)/(?P<token>[^/]+)/messages/@original$")
COMMANDS = re.compile(r"^/api/v10/applications/(?P<app>[0-9]+)(?:/guilds/(?P<guild>[0-9]+))?/commands$")


class Refused(Exception):
    pass


@dataclass
class Edit:
    """One accepted edit of an original response."""

    application_id: str
    token: str
    payload: dict[str, Any]
    files: dict[int, tuple[str, bytes]]  # n of files[n] -> (file name, bytes)
    multipart: bool
    at: float


@dataclass
class StandIn:
    url: str = ""
    bot_token: str = "bot-secret"
    bucket_size: int = 5
    bucket_seconds: float = 2.0
    rate_limit_first: int = 0
    retry_after: float = 0.3
    global_limit: bool = False
    expired_tokens: set[str] = field(default_factory=set)
    edits: list[Edit] = field(default_factory=list)
    registered: list[tuple[str | None, list[dict[str, Any]]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    violations: int = 0
    limited: int = 0  # 429s answered
    buckets: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    def edits_for(self, token: str) -> list[Edit]:
        with self.lock:
            return [e for e in self.edits if e.token == token]

    def last(self, token: str) -> Edit | None:
        found = self.edits_for(token)
        return found[-1] if found else None


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form-data parts by name: (file name, bytes). Refuses anything Discord would."""
    if not content_type.startswith("multipart/form-data") or "boundary=" not in content_type:
        raise Refused(f"not multipart/form-data with a boundary: {content_type!r}")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        raise Refused(f"a malformed multipart body: {message.defects}")
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        if part.get_content_disposition() != "form-data":
            raise Refused("a part that is not form-data")
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or name in parts:
            raise Refused(f"a part without a name, or a repeated one: {name!r}")
        data = part.get_payload(decode=True)
        parts[name] = (part.get_filename(), data if isinstance(data, bytes) else b"")
    return parts


def parse_edit(content_type: str, body: bytes) -> tuple[dict[str, Any], dict[int, tuple[str, bytes]], bool]:
    if content_type.startswith("application/json"):
        return _payload(body), {}, False
    parts = parse_multipart(content_type, body)
    if "payload_json" not in parts:
        raise Refused("multipart without payload_json")
    payload = _payload(parts.pop("payload_json")[1])
    files: dict[int, tuple[str, bytes]] = {}
    for name, (filename, data) in parts.items():
        match = re.fullmatch(r"files\[(\d+)\]", name)
        if match is None or not filename:
            raise Refused(f"an unexpected part {name!r} (file name {filename!r})")
        files[int(match.group(1))] = (filename, data)
    attachments = payload.get("attachments")
    if not isinstance(attachments, list):
        raise Refused("files without attachments in payload_json")
    described = {int(a["id"]): a.get("filename") for a in attachments}
    if set(described) != set(files):
        raise Refused(f"attachments {sorted(described)} do not match files {sorted(files)}")
    for n, (filename, _) in files.items():
        if described[n] != filename:
            raise Refused(f"attachment {n} is {described[n]!r} but files[{n}] is {filename!r}")
    return payload, files, True


def _payload(raw: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(raw)
    except ValueError:
        raise Refused("payload is not JSON") from None
    if not isinstance(payload, dict):
        raise Refused("payload is not an object")
    content = payload.get("content")
    if content is not None and (not isinstance(content, str) or len(content) > 2000):
        raise Refused("content over 2000 characters")
    return payload


def check_commands(body: bytes) -> list[dict[str, Any]]:
    commands = json.loads(body)
    if not isinstance(commands, list):
        raise Refused("commands must be a list")
    for command in commands:
        if not re.fullmatch(r"[-_a-z0-9]{1,32}", command.get("name", "")):
            raise Refused(f"bad command name {command.get('name')!r}")
        if not 1 <= len(command.get("description", "")) <= 100 or command.get("type") != 1:
            raise Refused("bad description or type")
        seen_optional = False
        for option in command.get("options", []):
            if option.get("type") not in (3, 4, 5, 10) or not option.get("description"):
                raise Refused(f"bad option {option}")
            if option.get("required") and seen_optional:
                raise Refused("a required option after an optional one")
            seen_optional = seen_optional or not option.get("required")
    return commands


@contextmanager
def discord_api() -> Iterator[StandIn]:
    state = StandIn()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_PATCH(self) -> None:
            body = self._body()
            match = EDIT.match(self.path)
            if match is None:
                return self._answer(404, {"message": "404: Not Found", "code": 0})
            token = match["token"]
            if token in state.expired_tokens:
                return self._answer(404, {"message": "Unknown Webhook", "code": 10015})
            with state.lock:
                if state.rate_limit_first > 0:
                    state.rate_limit_first -= 1
                    state.limited += 1
                    return self._limited(state.retry_after, state.global_limit)
                remaining, reset_after = self._take(token)
                if remaining < 0:
                    state.violations += 1
                    state.limited += 1
                    return self._limited(reset_after, False)
            try:
                payload, files, multipart = parse_edit(self.headers.get("Content-Type", ""), body)
            except (Refused, ValueError, KeyError, TypeError) as exc:
                with state.lock:
                    state.problems.append(str(exc))
                return self._answer(400, {"message": f"Invalid Form Body: {exc}", "code": 50035})
            with state.lock:
                state.edits.append(Edit(match["app"], token, payload, files, multipart, time.monotonic()))
            headers = {
                "X-RateLimit-Limit": str(state.bucket_size),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                "X-RateLimit-Bucket": "edit-" + token[:8],
            }
            self._answer(200, {"id": "1", "content": payload.get("content", "")}, headers)

        def do_PUT(self) -> None:
            body = self._body()
            match = COMMANDS.match(self.path)
            if match is None:
                return self._answer(404, {"message": "404: Not Found", "code": 0})
            if self.headers.get("Authorization") != f"Bot {state.bot_token}":
                return self._answer(401, {"message": "401: Unauthorized", "code": 0})
            try:
                commands = check_commands(body)
            except (Refused, ValueError, AttributeError) as exc:
                state.problems.append(str(exc))
                return self._answer(400, {"message": f"Invalid Form Body: {exc}", "code": 50035})
            with state.lock:
                state.registered.append((match["guild"], commands))
            answer = [
                {**c, "id": str(1000 + i), "application_id": match["app"]} for i, c in enumerate(commands)
            ]
            self._answer(200, answer)

        def _take(self, token: str) -> tuple[int, float]:
            """Spend one of the token's bucket; (remaining, seconds to reset); remaining -1: empty."""
            now = time.monotonic()
            window = [t for t in state.buckets.get(token, []) if t > now - state.bucket_seconds]
            reset_after = (window[0] + state.bucket_seconds - now) if window else state.bucket_seconds
            if len(window) >= state.bucket_size:
                state.buckets[token] = window
                return -1, reset_after
            window.append(now)
            state.buckets[token] = window
            reset_after = window[0] + state.bucket_seconds - now
            return state.bucket_size - len(window), reset_after

        def _limited(self, retry_after: float, global_: bool) -> None:
            body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": global_}
            headers = {"Retry-After": str(max(1, round(retry_after))), "X-RateLimit-Scope": "user"}
            if global_:
                headers["X-RateLimit-Global"] = "true"
            self._answer(429, body, headers)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 256

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
