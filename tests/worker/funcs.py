"""Functions run by the callable engine in worker tests."""

import time
from typing import Any

from swell.core.errors import ValidationError


def echo(item: dict[str, Any]) -> dict[str, Any]:
    return {"echo": item}


def fail(item: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("boom")


def invalid(item: dict[str, Any]) -> dict[str, Any]:
    raise ValidationError("bad value", field="input.x")


def sleep(item: dict[str, Any]) -> dict[str, Any]:
    time.sleep(float(item.get("seconds", 0.5)))
    return {"slept": item.get("seconds", 0.5)}


def fill_disk(item: dict[str, Any]) -> dict[str, Any]:
    """Fill the filesystem holding `item["path"]` until it is full, then succeed: the worker must
    then keep the result until there is room to record it. Without a path: a plain success."""
    if "path" not in item:
        return {"filled": False}
    with open(item["path"], "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return {"filled": True, "pad": "x" * 2**18}  # more than the database's log has room for


def sleep_big(item: dict[str, Any]) -> dict[str, Any]:
    """Sleep `seconds`, then return a result of about `bytes` bytes (too big for a full disk to take)."""
    time.sleep(float(item.get("seconds", 0)))
    return {"data": "x" * int(item.get("bytes", 0))}
