"""Serving a file a job's engine wrote: only a regular file directly inside the job's own folder.

The name is one plain path component, opened relative to the job folder's descriptor with
`O_NOFOLLOW` (a symlink, in the folder or as the folder, is refused rather than followed out of the
data dir) and `O_NONBLOCK` (a FIFO cannot hang the open); then `fstat` must say it is a regular file
(not a directory, FIFO or device). The bytes come from the descriptor that was checked, never from
a second open of the path, so a file swapped in between is not served either.

Where workers write their files to an object store (`cluster.results_url`: nodes that share no
disk with the gateway, swell.engines.results), `JobFiles` reads them from there, streamed a piece at
a time in the storage pool; a file not there is looked for in the data dir (a job that ran before
`results_url` was set). An object store holds no symlinks or FIFOs: a key is a file or absent.
"""

from __future__ import annotations

import errno
import mimetypes
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from starlette.responses import Response

from swell.core.errors import NotFound
from swell.engines.results import ObjectResultStore
from swell.gateway.storage import AsyncQueue

CHUNK = 256 * 1024
ABSENT = {errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO, errno.EACCES, errno.EPERM}
FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def plain_name(name: str) -> bool:
    """One path component: no separators, no NUL, not `.`, `..` or anything holding `..`."""
    return bool(name) and ".." not in name and not any(c in name for c in "/\\\x00") and name != "."


def open_job_file(folder: Path, name: str) -> tuple[int, int] | None:
    """An open descriptor and the size of the regular file `folder/name`, or None when there is none
    (missing, a symlink, a directory, a FIFO, ...). Other I/O errors are raised."""
    try:
        folder_fd = os.open(folder, FLAGS | os.O_DIRECTORY)
    except OSError as exc:
        _raise_unless_absent(exc)
        return None
    try:
        fd = os.open(name, FLAGS | os.O_NONBLOCK, dir_fd=folder_fd)
    except OSError as exc:
        _raise_unless_absent(exc)
        return None
    finally:
        os.close(folder_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return fd, info.st_size


def _raise_unless_absent(error: OSError) -> None:
    """Raise `error` unless it means there is no regular file to serve."""
    if error.errno not in ABSENT:
        raise error


class DescriptorResponse(Response):
    """Streams `size` bytes from an open descriptor, read in the storage pool; closes it at the end
    (sent, failed or abandoned)."""

    def __init__(self, fd: int, size: int, name: str, storage: AsyncQueue) -> None:
        super().__init__(media_type=mimetypes.guess_type(name)[0] or "application/octet-stream")
        self.fd = fd
        self.size = size
        self.storage = storage
        self.headers["content-length"] = str(size)
        self.headers["x-content-type-options"] = "nosniff"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            offset, last = 0, False
            while not last:
                chunk = await self._read(offset)
                offset += len(chunk)
                last = offset >= self.size or not chunk  # a file that shrank ends short; the server closes
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
        finally:
            os.close(self.fd)

    async def _read(self, offset: int) -> bytes:
        if offset >= self.size:
            return b""
        return await self.storage.run(os.pread, self.fd, min(CHUNK, self.size - offset), offset)


class StoredResponse(Response):
    """Streams an object-store file (a `ResultStore.open` reader), read in the storage pool; closes
    it at the end (sent, failed or abandoned)."""

    def __init__(self, reader: BinaryIO, name: str, storage: AsyncQueue) -> None:
        super().__init__(media_type=mimetypes.guess_type(name)[0] or "application/octet-stream")
        self.reader = reader
        self.storage = storage
        self.headers["x-content-type-options"] = "nosniff"
        if "content-length" in self.headers:  # unknown before the stream ends: sent chunked
            del self.headers["content-length"]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            last = False
            while not last:
                chunk = await self.storage.run(self.reader.read, CHUNK)
                last = not chunk
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
        finally:
            await self.storage.run(self.reader.close)


class JobFiles:
    """A job's files: in the object store at `results_url` when set, else (or when not there) in
    `<data_dir>/files/<job>/`."""

    def __init__(self, data_dir: Path, results_url: str | None = None) -> None:
        self.folder = Path(data_dir) / "files"
        self.store = ObjectResultStore(results_url) if results_url else None

    async def response(self, job_id: str, name: str, storage: AsyncQueue) -> Response | None:
        """The response serving `name` of job `job_id`, or None when it has no such file."""
        if self.store is not None:
            try:
                return StoredResponse(await storage.run(self.store.open, job_id, name), name, storage)
            except NotFound:
                pass
        opened = await storage.run(open_job_file, self.folder / job_id, name)
        return None if opened is None else DescriptorResponse(*opened, name=name, storage=storage)

    def __repr__(self) -> str:
        return f"JobFiles({str(self.folder)!r}, store={self.store!r})"


__all__ = ["DescriptorResponse", "JobFiles", "StoredResponse", "open_job_file", "plain_name"]
