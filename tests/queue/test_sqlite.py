"""What only the SQLite backend promises: its file format, its schema version and migrations, its query
plans, private files, and storage failures answered as `Unavailable` (on a real full or read-only
filesystem where the test may mount one)."""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from swell.core.clock import ManualClock
from swell.core.errors import ConfigError, Conflict, Unavailable
from swell.core.jobs import JobSpec, JobState
from swell.queue import sqlite as schema
from swell.queue.base import Update, open_queue
from swell.queue.memory import MemoryQueue
from swell.queue.sqlite import SQLiteQueue
from tests.support import wait_for


def test_the_file_is_in_wal_mode_at_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    SQLiteQueue(path).close()
    SQLiteQueue(path).close()  # opening again migrates nothing and fails on nothing
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS)


def test_a_file_from_a_newer_swell_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    SQLiteQueue(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(schema.MIGRATIONS) + 1}")
    with pytest.raises(ConfigError, match="schema"):
        SQLiteQueue(path)


@pytest.mark.parametrize(
    ("name", "query", "params", "index"),
    [
        ("lease", schema.READY, ("svc", 0.0, 8), "jobs_ready"),
        ("lease for a model", schema.READY_MODEL, ("svc", "m", 0.0, 8), "jobs_ready_model"),
        ("idle poll", schema.HAS_WORK, ("svc", 0.0, 0.0, "svc"), "jobs_ready"),
        ("reap", schema.EXPIRED, (0.0,), "jobs_leases"),
        ("due deliveries", schema.DUE_DELIVERIES + schema.DUE_ORDER, (0.0, 8), "deliveries_due"),
        (
            "open deliveries",
            f"{schema.OPEN_EXPIRING} AND d.channel IN (?) {schema.OPEN_EXPIRING_ORDER}",
            ("discord", 8),
            "deliveries_open",
        ),
        ("admission", schema.ACTIVE, ("svc",), "PRIMARY KEY"),
        ("bulk cancel", f"{schema.QUEUED} AND service = ?", ("svc",), "jobs_ready"),
        (
            "a page",
            f"{schema.SELECT} WHERE {schema.PAGE_AFTER} {schema.NEWEST_FIRST}",
            (0.0, 0.0, 9, 8),
            "jobs_created",
        ),
        (
            "a page of a service",
            f"{schema.SELECT} WHERE service = ? AND {schema.PAGE_AFTER} {schema.NEWEST_FIRST}",
            ("svc", 0.0, 0.0, 9, 8),
            "jobs_service_created",
        ),
        (
            "a page in a state",
            f"{schema.SELECT} WHERE state = ? AND {schema.PAGE_AFTER} {schema.NEWEST_FIRST}",
            ("queued", 0.0, 0.0, 9, 8),
            "jobs_state_created",
        ),
    ],
)
def test_hot_queries_use_their_index(
    tmp_path: Path, name: str, query: str, params: tuple, index: str
) -> None:
    queue = SQLiteQueue(tmp_path / "queue.db")
    queue.submit(JobSpec(service="svc", input={}))
    queue.close()
    with sqlite3.connect(tmp_path / "queue.db") as db:
        plan = " / ".join(row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {query}", params))
    assert index in plan, f"{name}: {plan}"
    assert "SCAN jobs" not in plan and "TEMP B-TREE" not in plan, f"{name}: {plan}"


def test_open_queue_by_url(tmp_path: Path) -> None:
    assert isinstance(open_queue("memory://"), MemoryQueue)
    queue = open_queue(f"sqlite:///{tmp_path / 'queue.db'}")
    assert isinstance(queue, SQLiteQueue)
    assert queue.path == tmp_path / "queue.db"
    queue.close()


def test_the_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    """Commits never checkpoint (that stalled acknowledgements); a thread copies the WAL back."""
    queue = SQLiteQueue(tmp_path / "q.db")
    before = (tmp_path / "q.db").stat().st_size
    queue.submit_many([JobSpec(service="svc", input={"n": n, "pad": "x" * 200}) for n in range(2000)])
    wal = (tmp_path / "q.db-wal").stat().st_size
    assert wal > 500_000, "the jobs are in the WAL"
    wait_for(lambda: (tmp_path / "q.db").stat().st_size > before + wal // 2, 10, "a checkpoint")
    assert len(queue.jobs(limit=5000)) == 2000
    queue.close()


# -- migrations ------------------------------------------------------------------------------------

V1_COLUMNS = (
    "id, service, state, priority, rank, input, created_at, available_at, max_attempts, timeout, attempts, "
    "idempotency_key, webhook_state, webhook_attempts"
)


def test_a_version_1_file_is_migrated_and_its_jobs_keep_working(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with sqlite3.connect(path) as db:
        db.executescript(schema.MIGRATIONS[0].script)
        db.execute("PRAGMA user_version = 1")
        db.execute(
            f"INSERT INTO jobs ({V1_COLUMNS}) VALUES (?, 'svc', 'queued', 'normal', 0, ?, 0, 0, 3, 60, 0, ?, "
            "'none', 0)",
            ("old", '{"n":1}', "k"),
        )
    db.close()
    queue = SQLiteQueue(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS) == 4
    old = queue.get("old")
    assert (old.batch_limit, old.leased_with, old.fingerprint) == (None, 0, None)
    assert (old.progress, old.cancel_requested) == (None, False)
    assert queue.events("old") == [] and queue.event_cursor() == 0, "history before the log is not made up"
    again, created = queue.submit(JobSpec(service="svc", input={"n": 1}, idempotency_key="k"))
    assert (again.id, created) == ("old", False), "an old job is fingerprinted from its stored input"
    with pytest.raises(Conflict):
        queue.submit(JobSpec(service="svc", input={"n": 2}, idempotency_key="k"))
    (leased,) = queue.lease("svc", "w1")
    assert leased.leased_with == 1
    assert [(e.seq, e.data["state"]) for e in queue.events("old")] == [(1, "leased")]
    queue.probe()
    assert queue.statistics().deduplicated == 1
    queue.close()


def test_every_migration_is_named() -> None:
    assert all(m.name and m.script.strip() for m in schema.MIGRATIONS)
    assert len({m.name for m in schema.MIGRATIONS}) == len(schema.MIGRATIONS)


# -- files private to the user ---------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_database_and_the_folders_it_creates_are_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "queue" / "queue.db"
    queue = SQLiteQueue(path)
    queue.submit(JobSpec(service="svc", input={}))
    for name in ("queue.db", "queue.db-wal", "queue.db-shm"):
        assert _mode(path.parent / name) == 0o600, name
    assert _mode(path.parent) == _mode(path.parent.parent) == 0o700
    queue.close()


def test_a_database_found_readable_by_others_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    SQLiteQueue(path).close()
    os.chmod(path, 0o644)
    os.chmod(tmp_path, 0o755)
    queue = SQLiteQueue(path)
    queue.submit(JobSpec(service="svc", input={}))
    assert _mode(path) == 0o600
    assert _mode(tmp_path) == 0o755, "a folder the queue did not create is left as it is"
    queue.close()


# -- storage failures ------------------------------------------------------------------------------


def test_an_unusable_path_is_unavailable_with_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(Unavailable) as error:
        SQLiteQueue(tmp_path / "file" / "queue.db")
    assert str(tmp_path / "file" / "queue.db") in error.value.message
    assert "\n" not in error.value.message and error.value.status_code == 503


def test_probe_answers_unavailable_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    queue = SQLiteQueue(path)
    queue.probe()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable, match="locked") as error:
            queue.probe()
        assert error.value.retry_after > 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    queue.probe()
    queue.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs), mounted for the test; skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(disk)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Write a file until the disk is full; returns it (remove it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_is_unavailable_and_the_queue_recovers_when_space_returns(tiny_disk: Path) -> None:
    queue = SQLiteQueue(tiny_disk / "data" / "queue.db")
    job, _ = queue.submit(JobSpec(service="svc", input={"n": 1}))
    filler = _fill(tiny_disk)
    big = JobSpec(service="svc", input={"pad": "x" * 200_000})
    with pytest.raises(Unavailable, match="full") as full:
        queue.submit(big)
    assert full.value.retry_after > 0 and isinstance(full.value.__cause__, sqlite3.OperationalError)
    with pytest.raises(Unavailable):
        queue.submit_many([big, JobSpec(service="svc", input={})])
    with pytest.raises(Unavailable):
        queue.probe()
    assert queue.get(job.id) == job, "reads still work"
    assert queue.depth() == {"svc": {"queued": 1}}, "a failed transaction stored nothing"

    filler.unlink()
    queue.probe()
    assert queue.submit(big)[1]
    (leased,) = queue.lease("svc", "w1")
    assert queue.complete(leased.id, "w1", {}).state is JobState.SUCCEEDED
    assert queue.depth() == {"svc": {"queued": 1, "succeeded": 1}}
    queue.close()


def test_a_read_only_data_dir_is_unavailable_at_open(tiny_disk: Path) -> None:
    SQLiteQueue(tiny_disk / "q" / "queue.db").close()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    for path in (tiny_disk / "q" / "queue.db", tiny_disk / "new" / "queue.db"):
        with pytest.raises(Unavailable) as error:
            SQLiteQueue(path)
        assert str(path) in error.value.message


def test_event_seqs_keep_rising_across_a_trim_and_a_reopen(tmp_path: Path) -> None:
    clock = ManualClock(1_700_000_000.0)
    queue = SQLiteQueue(tmp_path / "q.db", clock=clock, event_retention=10)
    job, _ = queue.submit(JobSpec(service="svc", input={}))
    queue.lease("svc", "w1")
    queue.report("w1", [Update(job.id, delta="a"), Update(job.id, delta="b")])
    queue.complete(job.id, "w1", {})
    newest = queue.event_cursor()
    clock.advance(11)
    queue.reap()
    assert [e.kind for e in queue.events(job.id)] == ["state", "state", "state"]
    queue.close()
    reopened = SQLiteQueue(tmp_path / "q.db", clock=clock)
    assert reopened.event_cursor() == newest
    other, _ = reopened.submit(JobSpec(service="svc", input={}))
    assert reopened.events(other.id)[0].seq == newest + 1
    reopened.close()
