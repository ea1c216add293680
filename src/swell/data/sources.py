"""Where model files come from: a small `Source` protocol and a registry by URI scheme.

A source needs only three primitives: `info(path)`, `read_into(path, start, out)` (a ranged read into
the caller's buffer) and `list(prefix)`. The s3://, http(s):// and file:// sources are obstore stores
(one well-kept client for every protocol); `memory://` ships in the package for tests and the
simulator. Paths are relative to the source URI. Foreign errors are translated to Swell's at this
boundary.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from swell.core.errors import ConfigError, DataError, IntegrityError, NotFound
from swell.data.config import DatasetConfig


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    path: str  # relative to the source URI
    size: int
    etag: str | None = None


class Source(Protocol):
    uri: str
    can_list: bool

    def info(self, path: str) -> ObjectInfo: ...

    def read_into(self, path: str, start: int, out: memoryview) -> int:
        """Fill `out` with the bytes from `start`; the count, short only at the end of the file."""
        ...

    def list(self, prefix: str = "") -> list[ObjectInfo]: ...


class ObstoreSource:
    """Any obstore store rooted at `uri`."""

    def __init__(self, uri: str, store: Any, *, can_list: bool = True) -> None:
        self.uri, self._store, self.can_list = uri, store, can_list

    def info(self, path: str) -> ObjectInfo:
        import obstore

        meta = _call(path, lambda: obstore.head(self._store, path))
        return ObjectInfo(path, int(meta["size"]), meta.get("e_tag"))

    def read_into(self, path: str, start: int, out: memoryview) -> int:
        """The response is streamed into `out` a piece at a time: no buffer of the whole range is made,
        which on the development VM doubled the rate (fresh memory costs about as much as the network)."""
        import obstore

        if not out:
            return 0

        def stream() -> int:
            result = obstore.get(self._store, path, options={"range": (start, start + len(out))})
            return _stream_into(result, out)

        return int(_call(path, stream))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        import obstore

        if not self.can_list:
            raise DataError(f"{self.uri}: this source cannot list files; name them in the dataset's include")
        out: list[ObjectInfo] = []
        for batch in _call(prefix, lambda: obstore.list(self._store, prefix or None)):
            out.extend(ObjectInfo(m["path"], int(m["size"]), m.get("e_tag")) for m in batch)
        return sorted(out, key=lambda o: o.path)

    def __repr__(self) -> str:
        return f"ObstoreSource({self.uri!r})"


class MemorySource:
    """Files held in a dict; for tests and the simulator."""

    can_list = True

    def __init__(self, uri: str = "memory://", files: dict[str, bytes] | None = None) -> None:
        self.uri, self.files = uri, dict(files or {})
        self._lock = threading.Lock()

    def info(self, path: str) -> ObjectInfo:
        with self._lock:
            if path not in self.files:
                raise NotFound(f"{self.uri}: no such file {path!r}")
            return ObjectInfo(path, len(self.files[path]))

    def read_into(self, path: str, start: int, out: memoryview) -> int:
        with self._lock:
            if path not in self.files:
                raise NotFound(f"{self.uri}: no such file {path!r}")
            data = memoryview(self.files[path])[start : start + len(out)]
            out[: len(data)] = data
            return len(data)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        with self._lock:
            return [ObjectInfo(p, len(b)) for p, b in sorted(self.files.items()) if p.startswith(prefix)]


STREAM_PIECE = 1 << 20  # bytes per piece of a streamed response


def _stream_into(result: Any, out: memoryview) -> int:
    done = 0
    for piece in result.stream(min_chunk_size=STREAM_PIECE):
        n = len(piece)
        if done + n > len(out):
            raise DataError(f"the origin sent more than the {len(out)} bytes asked for")
        out[done : done + n] = piece
        done += n
    return done


def _call(path: str, fn: Callable[[], Any]) -> Any:
    from obstore.exceptions import NotFoundError

    try:
        return fn()
    except (NotFoundError, FileNotFoundError):
        raise NotFound(f"no such file: {path!r}") from None
    except Exception as exc:  # obstore raises its own tree; translate at the boundary
        raise DataError(f"{path!r}: {type(exc).__name__}: {exc}") from None


def _file(config: DatasetConfig) -> Source:
    from obstore.store import LocalStore

    root = Path(urlsplit(config.source).path or "/")
    if not root.is_dir():
        raise NotFound(f"no such directory: {root}")
    return ObstoreSource(config.source, LocalStore(prefix=root))


def _s3(config: DatasetConfig) -> Source:
    from obstore.store import S3Store

    parts = urlsplit(config.source)
    options: dict[str, Any] = {}
    for key in ("endpoint", "region", "access_key_id", "secret_access_key", "session_token"):
        value = getattr(config, key)
        if value:
            options[key] = value
    if config.anonymous:
        options["skip_signature"] = True
    # obstore reads AWS_ENDPOINT_URL itself; a plain-http endpoint (MinIO, moto) must also be allowed
    endpoint = config.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and not config.endpoint:
        options["endpoint"] = endpoint
    allow_http = bool(endpoint and endpoint.startswith("http://"))
    prefix = parts.path.strip("/") or None
    store = S3Store(parts.netloc, prefix=prefix, client_options={"allow_http": allow_http}, **options)
    return ObstoreSource(config.source, store)


def _http(config: DatasetConfig) -> Source:
    from obstore.store import HTTPStore

    url = config.source if config.source.endswith("/") else config.source + "/"
    store = HTTPStore.from_url(url, client_options={"allow_http": url.startswith("http://")})
    return ObstoreSource(config.source, store, can_list=False)


_memory: dict[str, MemorySource] = {}


def _mem(config: DatasetConfig) -> Source:
    return _memory.setdefault(config.source, MemorySource(config.source))


REGISTRY: dict[str, Callable[[DatasetConfig], Source]] = {
    "file": _file,
    "s3": _s3,
    "http": _http,
    "https": _http,
    "memory": _mem,
}


def open_source(config: DatasetConfig) -> Source:
    """The source a dataset's URI names."""
    scheme = urlsplit(config.source).scheme
    factory = REGISTRY.get(scheme)
    if factory is None:
        raise ConfigError(f"unknown source scheme {scheme!r} (known: {', '.join(REGISTRY)})", key="source")
    return factory(config)


def is_remote(uri: str) -> bool:
    return urlsplit(uri).scheme in REGISTRY and urlsplit(uri).scheme != "file" and "://" in uri


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://b/models/x.safetensors` -> (`s3://b/models`, `x.safetensors`)."""
    head, _, name = uri.rstrip("/").rpartition("/")
    return head, name


def checked_info(source: Source, path: str, expected: ObjectInfo | int | None = None) -> ObjectInfo:
    """What the origin declares about `path` (its size: Content-Length, the object's size), refused with
    an `IntegrityError` when it differs from `expected` (a manifest's entry, or just its size), so that
    no buffer is ever sized by an origin that changed or lies. ETags are compared when both are known."""
    declared = source.info(path)
    if expected is None:
        return declared
    want = expected if isinstance(expected, ObjectInfo) else ObjectInfo(path, expected)
    if declared.size != want.size:
        raise IntegrityError(
            f"{source.uri}/{path}: the origin declares {declared.size} bytes, the manifest {want.size}"
        )
    if declared.etag and want.etag and declared.etag != want.etag:
        raise IntegrityError(
            f"{source.uri}/{path}: the origin's ETag {declared.etag} is not the manifest's {want.etag}"
        )
    return declared


class SourceReader:
    """A `RangeReader` over one file of a source: every block is one ranged request.

    With `expected` (a manifest's entry or size), the origin's declared size is checked against it
    before anything is read; `size` is then the manifest's.
    """

    def __init__(self, source: Source, path: str, expected: ObjectInfo | int | None = None) -> None:
        self.source, self.path = source, path
        self.size = checked_info(source, path, expected).size

    def readinto(self, buf: memoryview, offset: int) -> None:
        want = max(0, min(len(buf), self.size - offset))
        if self.source.read_into(self.path, offset, buf[:want]) != want:
            raise DataError(f"{self.source.uri}/{self.path}: the origin ended before byte {offset + want}")

    def close(self) -> None:
        pass


def open_remote(
    uri: str, config: DatasetConfig | None = None, *, expected: ObjectInfo | int | None = None
) -> SourceReader:
    """A streaming reader for one remote file, with credentials from `config` or the AWS_* variables;
    with `expected` (the manifest's entry or size), the origin must declare that size."""
    root, name = split_uri(uri)
    base = config.model_copy(update={"source": root}) if config else DatasetConfig(source=root)
    return SourceReader(open_source(base), name, expected)
