"""Functions for the `callable` engine, imported by real worker processes in the end-to-end tests."""

from __future__ import annotations

import time
from typing import Any


def double(payload: dict[str, Any]) -> dict[str, Any]:
    time.sleep(float(payload.get("sleep", 0.0)))
    return {"n": int(payload["n"]) * 2}
