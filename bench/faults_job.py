"""The job `bench/faults.py` serves on the `callable` engine (imported by the workers as `faults_job:run`).

It sleeps for `input["sleep"]` seconds and returns the input's key. When the input names a `runs` file,
it appends one line there when it starts and one when it finishes (`start KEY PID`, `end KEY PID`),
each a single `O_APPEND` write, so lines from concurrent workers never interleave: the benchmark reads
that file to count the jobs that were executed more than once.
"""

from __future__ import annotations

import os
import time
from typing import Any


def run(item: dict[str, Any]) -> dict[str, Any]:
    key = str(item.get("key", ""))
    runs = item.get("runs")
    if runs:
        _record(str(runs), "start", key)
    time.sleep(float(item.get("sleep", 0.0)))
    if runs:
        _record(str(runs), "end", key)
    return {"key": key, "pid": os.getpid()}


def _record(path: str, event: str, key: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{event} {key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
