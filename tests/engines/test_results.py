"""Result stores: the local directory the gateway serves, and obstore (memory://, file://), one suite."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from swell.core.errors import ConfigError, NotFound, ValidationError
from swell.engines.results import (
    RESULTS_ENV,
    LocalResultStore,
    ObjectResultStore,
    ResultStore,
    open_result_store,
    results_from_env,
)

Factory = Callable[[Path], ResultStore]
STORES: dict[str, Factory] = {
    "local": lambda tmp: LocalResultStore(tmp / "data"),
    "memory": lambda tmp: ObjectResultStore("memory://"),
    "file": lambda tmp: ObjectResultStore(f"file://{tmp / 'bucket' / 'results'}"),
}


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ResultStore:
    return STORES[request.param](tmp_path)


def test_a_file_put_is_read_back(store: ResultStore) -> None:
    assert isinstance(store, ResultStore)
    name = store.put("job-1", "0.png", b"\x89PNG" + bytes(range(256)) * 4000, "image/png")
    assert name == "0.png"
    with store.open("job-1", "0.png") as opened:
        assert opened.read(4) == b"\x89PNG"
        assert opened.read() == bytes(range(256)) * 4000
    store.put("job-1", "0.png", b"newer", "image/png")
    with store.open("job-1", "0.png") as opened:
        assert opened.read() == b"newer"


def test_jobs_do_not_see_each_others_files(store: ResultStore) -> None:
    store.put("a", "out.txt", b"a", "text/plain")
    with pytest.raises(NotFound):
        store.open("b", "out.txt")
    with pytest.raises(NotFound):
        store.open("a", "other.txt")


@pytest.mark.parametrize(
    ("job_id", "name"),
    [("a", "../b"), ("a", "x/y"), ("..", "x"), ("a", ""), ("a", ".hidden"), ("a/b", "x"), ("a", "x\x00")],
)
def test_names_that_leave_the_job_folder_are_refused(store: ResultStore, job_id: str, name: str) -> None:
    with pytest.raises(ValidationError):
        store.put(job_id, name, b"x", "text/plain")
    with pytest.raises(ValidationError):
        store.open(job_id, name)


def test_concurrent_writers_leave_one_whole_file(store: ResultStore) -> None:
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    threads = [
        threading.Thread(target=store.put, args=("j", "f.bin", p, "application/octet-stream"))
        for p in payloads
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with store.open("j", "f.bin") as opened:
        assert opened.read() in payloads


def test_local_files_are_private_and_atomic(tmp_path: Path) -> None:
    store = LocalResultStore(tmp_path)
    store.put("j", "a.png", b"x", "image/png")
    folder = tmp_path / "files" / "j"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "a.png").stat().st_mode) == 0o600
    assert sorted(os.listdir(folder)) == ["a.png"]  # no temporary file left behind


def test_local_store_does_not_follow_links_or_open_fifos(tmp_path: Path) -> None:
    store = LocalResultStore(tmp_path)
    store.put("j", "real.txt", b"x", "text/plain")
    secret = tmp_path / "secret"
    secret.write_text("secret")
    folder = tmp_path / "files" / "j"
    (folder / "link.txt").symlink_to(secret)
    os.mkfifo(folder / "pipe")
    (folder / "dir").mkdir()
    for name in ("link.txt", "pipe", "dir"):
        with pytest.raises(NotFound):
            store.open("j", name)
    store.put("j", "link.txt", b"replaced", "text/plain")  # a put replaces the link, never writes through it
    assert secret.read_text() == "secret"


def test_a_file_store_writes_where_its_url_points(tmp_path: Path) -> None:
    root = tmp_path / "shared" / "results"
    store = ObjectResultStore(f"file://{root}")
    store.put("j", "0.png", b"png", "image/png")
    assert (root / "j" / "0.png").read_bytes() == b"png"


def test_the_store_is_chosen_by_url(tmp_path: Path) -> None:
    assert isinstance(open_result_store(None, tmp_path), LocalResultStore)
    assert isinstance(open_result_store("", tmp_path), LocalResultStore)
    assert isinstance(open_result_store("memory://", tmp_path), ObjectResultStore)
    chosen = results_from_env(tmp_path, {RESULTS_ENV: f"file://{tmp_path / 'r'}"})
    assert isinstance(chosen, ObjectResultStore) and "file://" in repr(chosen)
    assert isinstance(results_from_env(tmp_path, {}), LocalResultStore)
    with pytest.raises(ConfigError, match="unknown results URL scheme 'ftp'") as caught:
        open_result_store("ftp://host/x", tmp_path)
    assert caught.value.key == "results_url"
