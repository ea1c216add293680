"""Where an engine's result files go: a small `ResultStore` protocol, a local directory and an object store.

An engine writes a file with `context.results.put(job_id, name, data, content_type)` and puts the
name it gets back in the job's result (`{"images": [{"file": "0.png"}]}`); the gateway serves it at
`/v1/jobs/{id}/files/{name}` by `open(job_id, name)`. Names are one plain path component, and so are
job ids, so nothing can be written or read outside a job's own folder.

- `LocalResultStore(data_dir)` writes `data_dir/files/<job>/<name>`: folders 0700, files 0600,
  each written to a temporary file and renamed into place, so a reader never sees half a file.
- `ObjectResultStore(url)` writes `<url>/<job>/<name>` through obstore (`s3://bucket/prefix`,
  `file:///dir`, `memory://`), so a result need not sit on the gateway's disk: a worker on another
  node writes there and the gateway reads from there. S3 credentials and endpoint come from the
  usual AWS_* variables. A put is atomic on every obstore backend (S3 PUT, local rename).

`open_result_store(url, data_dir)` picks one: no URL, the local directory; otherwise the object
store. The worker takes the URL from `SWELL_RESULTS_URL` (`results_from_env`).
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable
from urllib.parse import urlsplit

from swell.core.errors import ConfigError, DataError, NotFound, ValidationError

RESULTS_ENV = "SWELL_RESULTS_URL"
FOLDER_MODE = 0o700  # a job's files are the user's own: the gateway serves them, nobody else reads them
FILE_MODE = 0o600
SCHEMES = ("s3", "file", "memory")
ABSENT = {errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO}


@runtime_checkable
class ResultStore(Protocol):
    """Result files by job and name."""

    def put(self, job_id: str, name: str, data: bytes, content_type: str) -> str:
        """Store `data` as the job's file `name` (replacing one of that name); return the name to put
        in the job's result."""
        ...

    def open(self, job_id: str, name: str) -> BinaryIO:
        """The stored file for reading; NotFound when there is none."""
        ...


def plain_name(name: str) -> bool:
    """One path component: no separators, no NUL, not `.`, `..` or anything holding `..`."""
    return bool(name) and ".." not in name and not any(c in name for c in "/\\\x00") and name != "."


def check_names(job_id: str, name: str) -> None:
    """Refuse a job id or file name that is not one plain path component."""
    for what, value in (("job id", job_id), ("file name", name)):
        if not isinstance(value, str) or not plain_name(value) or value.startswith("."):
            raise ValidationError(f"{what} {value!r} must be one plain path component", field="name")


class LocalResultStore:
    """Result files in `data_dir/files/<job>/<name>` (what the gateway's files route serves)."""

    def __init__(self, data_dir: Path | str) -> None:
        self.root = Path(data_dir) / "files"

    def folder(self, job_id: str) -> Path:
        """The job's folder, created 0700 when missing."""
        check_names(job_id, "x")
        path = self.root / job_id
        path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        return path

    def put(self, job_id: str, name: str, data: bytes, content_type: str) -> str:
        check_names(job_id, name)
        folder = self.folder(job_id)
        temporary = folder / f".{name}.{secrets.token_hex(6)}.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, folder / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return name

    def open(self, job_id: str, name: str) -> BinaryIO:
        """The regular file itself: a symlink, a FIFO or a folder in its place is not there."""
        check_names(job_id, name)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.root / job_id / name, flags)
        except OSError as exc:
            if exc.errno in ABSENT:
                raise NotFound(f"job {job_id} has no file {name!r}") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotFound(f"job {job_id} has no file {name!r}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def __repr__(self) -> str:
        return f"LocalResultStore({str(self.root)!r})"


class ObjectResultStore:
    """Result files at `<url>/<job>/<name>` in an object store (s3://, file://, memory://)."""

    def __init__(self, url: str, *, options: Mapping[str, Any] | None = None) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in SCHEMES:
            known = ", ".join(f"{s}://" for s in SCHEMES)
            raise ConfigError(f"unknown results URL scheme {scheme!r} (known: {known})", key="results_url")
        self.url = url
        self._attributes = scheme == "s3"  # a local filesystem store keeps no content type
        self._store = _open_store(url, dict(options or {}))

    def put(self, job_id: str, name: str, data: bytes, content_type: str) -> str:
        import obstore

        check_names(job_id, name)
        attributes = {"Content-Type": content_type} if self._attributes else None
        try:
            obstore.put(self._store, f"{job_id}/{name}", data, attributes=attributes)
        except Exception as exc:  # obstore raises its own tree; translate at the boundary
            raise DataError(f"{self.url}: writing {job_id}/{name}: {type(exc).__name__}: {exc}") from None
        return name

    def open(self, job_id: str, name: str) -> BinaryIO:
        import obstore

        check_names(job_id, name)
        try:
            result = obstore.get(self._store, f"{job_id}/{name}")
        except FileNotFoundError:
            raise NotFound(f"job {job_id} has no file {name!r}") from None
        except Exception as exc:
            raise DataError(f"{self.url}: reading {job_id}/{name}: {type(exc).__name__}: {exc}") from None
        return io.BufferedReader(_Stream(iter(result.stream())))

    def __repr__(self) -> str:
        return f"ObjectResultStore({self.url!r})"


class _Stream(io.RawIOBase):
    """A file-like reader over an obstore byte stream, pulled a piece at a time."""

    def __init__(self, pieces: Iterator[Any]) -> None:
        self._pieces = pieces
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._left = memoryview(bytes(piece))
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def _open_store(url: str, options: dict[str, Any]) -> Any:
    from obstore.store import from_url

    parts = urlsplit(url)
    if parts.scheme == "file":
        Path(parts.path).mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        return from_url(url)
    if parts.scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and endpoint.startswith("http://"):
            options.setdefault("client_options", {"allow_http": True})
    return from_url(url, **options)


def open_result_store(url: str | None, data_dir: Path | str) -> ResultStore:
    """The object store at `url`, or the local directory under `data_dir` when there is no URL."""
    if not url:
        return LocalResultStore(data_dir)
    return ObjectResultStore(url)


def results_from_env(data_dir: Path | str, environ: Mapping[str, str] | None = None) -> ResultStore:
    """The result store a worker writes to: `SWELL_RESULTS_URL`, or the local data dir."""
    return open_result_store((os.environ if environ is None else environ).get(RESULTS_ENV), data_dir)
