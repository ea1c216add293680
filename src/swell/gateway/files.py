"""Serving a file a job's engine wrote: only a regular file directly inside the job's own folder.

The name is one plain path component, opened relative to the job folder's descriptor with
`O_NOFOLLOW` (a symlink, in the folder or as the folder, is refused rather than followed out of the
data dir) and `O_NONBLOCK` (a FIFO cannot hang the open); then `fstat` must say it is a regular file
(not a directory, FIFO or device). The bytes come from the descriptor that was checked, never from
a second open of the path, so a file swapped in between is not served either.
"""

from __future__ import annotations

import errno
import mimetypes
import os
import stat
from pathlib import Path
from typing import Any

from starlette.responses import Response

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


__all__ = ["DescriptorResponse", "open_job_file", "plain_name"]
