"""The worker's status channel: an atomic JSON file data_dir/replicas/<id>.json, rewritten each heartbeat."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def status_path(data_dir: Path, replica_id: str) -> Path:
    return data_dir / "replicas" / f"{replica_id}.json"


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Publish `status` atomically (write a temporary file, then rename over the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def read_status(path: Path) -> dict[str, Any] | None:
    """The last published status, or None when there is none yet."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
