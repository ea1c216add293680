"""The test engine behind the `callable` services of the e2e tests: a real PNG through the result
store, with progress on the way."""

from __future__ import annotations

import struct
import time
import zlib
from typing import Any


def tiny_png(width: int = 4, height: int = 4, shade: int = 128) -> bytes:
    """A valid grey PNG, written by hand (no Pillow needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([shade]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def draw(item: dict[str, Any], job: Any) -> dict[str, Any]:
    """One image, grey by the prompt's length; `fail` in the prompt fails, `slow` takes 2 s."""
    prompt = str(item.get("prompt", ""))
    if "fail" in prompt:
        raise ValueError(f"cannot draw {prompt!r}")
    steps, pause = (4, 0.5) if "slow" in prompt else (int(item.get("steps", 2)), 0.05)
    for step in range(steps):
        job.progress((step + 1) / steps)
        time.sleep(pause)
    name = job.put("0.png", tiny_png(shade=len(prompt) % 256), "image/png")
    return {"images": [{"file": name, "seed": 1}]}
