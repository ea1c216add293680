"""Secrets that `swell up` generates once and keeps in the data dir (the API key, the webhook secret)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from swell.core.errors import ConfigError


def resolve_secret(value: str | None, data_dir: Path, filename: str) -> str:
    """`value` when given; else the secret stored in `data_dir/filename`, generated on first use.

    A new secret is written to a private temporary file (mode 0600) and published with `os.link`,
    which fails when the name exists: of several processes racing, the first to publish wins and
    every other one reads the winner's complete file, so all of them end up with the same secret.
    """
    if value:
        return value
    path = data_dir / filename
    stored = _read(path)
    if stored is not None:
        return stored
    data_dir.mkdir(parents=True, exist_ok=True)
    _publish(path, secrets.token_urlsafe(32))
    stored = _read(path)
    if stored is None:  # pragma: no cover - deleted between publishing and reading
        raise ConfigError("the secret file vanished while it was created", file=str(path))
    return stored


def _read(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not text:
        raise ConfigError("the secret file is empty; delete it to generate a new one", file=str(path))
    return text


def _publish(path: Path, secret: str) -> None:
    """Create `path` holding `secret` unless it exists; never exposes a partly written file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(secret + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process published first; its secret is the one
        except OSError:  # a filesystem without hard links: last writer wins, atomically
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
