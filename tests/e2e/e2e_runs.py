"""A `callable` engine function that also records each run (`n` and the worker's pid) in a file, so an
end-to-end test can see which jobs a killed worker held and that they ran again elsewhere."""

from __future__ import annotations

import os
import time
from typing import Any


def double_and_record(payload: dict[str, Any]) -> dict[str, Any]:
    """Writes `start N PID`, sleeps `sleep` seconds, writes `done N PID`, returns 2N."""
    _record(payload, "start")
    time.sleep(float(payload.get("sleep", 0.0)))
    _record(payload, "done")
    return {"n": int(payload["n"]) * 2}


def _record(payload: dict[str, Any], what: str) -> None:
    descriptor = os.open(str(payload["log"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, f"{what} {int(payload['n'])} {os.getpid()}\n".encode())
    finally:
        os.close(descriptor)
