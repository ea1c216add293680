"""The worker's status channel: an atomic JSON file data_dir/replicas/<id>.json, rewritten each heartbeat.

This module moves the bytes; what they mean (the fields, their types) is `swell.worker.contract`'s
`WorkerStatus`, and only that module reads or writes them for the supervisors. The file is private
(0600 in a 0700 directory, whatever the umask). On a full disk a new file cannot be written, but its
time stamp can still be set: the worker then touches the file, and `read_status` takes the later of
the recorded heartbeat and the file's mtime, so a live worker is not taken for a hung one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ERROR_CHARS = 400  # an error longer than this is cut: the status file is not a log
SECRET_NAMES = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)
MIN_SECRET_CHARS = 6  # shorter values would mask ordinary words


def status_path(data_dir: Path, replica_id: str) -> Path:
    return data_dir / "replicas" / f"{replica_id}.json"


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Publish `status` atomically (write a temporary file, then rename over the old one). On failure
    (a full disk) the temporary file is removed, so it does not hold on to space, and OSError raised."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(status))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def touch_status(path: Path) -> None:
    """Mark the status file alive without writing to it (needs no free space); OSError when absent."""
    os.utime(path)


def read_status(path: Path) -> dict[str, Any] | None:
    """The last published status, or None when there is none yet. Its `heartbeat` is the later of
    the recorded one and the file's mtime (see `touch_status`)."""
    try:
        data = json.loads(path.read_text())
        mtime = path.stat().st_mtime
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    beat = data.get("heartbeat")
    data["heartbeat"] = max(float(beat), mtime) if isinstance(beat, int | float) else mtime
    return data


def describe_error(exc: BaseException, environ: Mapping[str, str] | None = None) -> str:
    """`Type: message` on one line, cut to ERROR_CHARS, with secrets masked: the values of secret-named
    environment variables (and secret-named fields of JSON ones, like SWELL_DATASETS) and URL user info."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    text = URL_USERINFO.sub(r"\g<scheme>***@", text)
    for secret in sorted(set(_secrets(os.environ if environ is None else environ)), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def _secrets(environ: Mapping[str, str]) -> Iterable[str]:
    for name, value in environ.items():
        if SECRET_NAMES.search(name):
            yield from _long(value)
        elif value.startswith(("{", "[")):
            with contextlib.suppress(ValueError):
                yield from _secret_fields(json.loads(value))


def _secret_fields(value: Any, secret: bool = False) -> Iterable[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _secret_fields(item, secret or bool(SECRET_NAMES.search(str(key))))
    elif isinstance(value, list):
        for item in value:
            yield from _secret_fields(item, secret)
    elif secret and isinstance(value, str):
        yield from _long(value)


def _long(value: str) -> Iterable[str]:
    if len(value) >= MIN_SECRET_CHARS:
        yield value
