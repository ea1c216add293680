"""What only the SQLite backend promises: its file format, its schema version and its query plans."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from swell.core.errors import ConfigError
from swell.core.jobs import JobSpec
from swell.queue import sqlite as schema
from swell.queue.base import open_queue
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
        ("webhooks", schema.DUE_WEBHOOKS, (0.0, 8), "jobs_webhooks"),
        ("admission", schema.ACTIVE, ("svc",), "PRIMARY KEY"),
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
