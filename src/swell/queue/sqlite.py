"""The embedded queue: one SQLite file in WAL mode, shared by the gateway and worker processes.

Schema (version 4, kept in `PRAGMA user_version`; `MIGRATIONS[i]` moves a file from version i,
each named for what it adds):

    jobs      one row per job; lifecycle columns are rewritten from the `Job` value that
              `swell.core.jobs` computed, `input`/`result` are JSON text, `rank` is
              `RetryPolicy.rank(available_at, priority)` so leasing is one index range scan;
              `fingerprint` is the request's sha256 for jobs with an idempotency key (NULL in rows
              from version 1: those are fingerprinted from their stored input when it matters)
    depth     (service, state) -> count, kept by triggers on `jobs`, so depth and admission
              read a handful of rows however many finished jobs the file holds
    counters  one row of cumulative totals for `statistics()`, bumped in the transaction that
              did the work, so every process sees the same numbers
    probe     one row that `probe()` rewrites to learn whether the file takes a write now
    events    the job event log: `seq` (AUTOINCREMENT, so a seq is never handed out twice, even
              after the newest rows are trimmed) is the cursor of `events` and `events_since`; a
              transition inserts its `state` event in the transaction that updates the job row.
              `jobs.activity` counts a job's progress and delta events (the cap), and the partial
              index `jobs_untrimmed` finds final jobs whose such events are due for trimming
    deliveries the outbox: one row per (job_id, channel), `target` JSON; inserted in the submit's
              transaction, armed (`state` pending, `next_at`) in the transaction of the job's final
              transition, re-armed by a re-drive's; `version` guards `save_delivery`. Partial
              indexes: `deliveries_due` (pending, by next_at) and `deliveries_open` (waiting, by
              expires_at). Version 4 moved the webhook columns of `jobs` into rows here

Storage failures (a full or read-only disk, I/O errors, a write lock not had within BUSY_TIMEOUT,
a file that cannot be opened) leave every public method as `Unavailable` (503), never as a raw
`sqlite3` error. The file and its -wal/-shm companions (SQLite gives them the database's mode) are
private to the user: created 0600, and tightened to it when found looser; a directory the queue
creates is 0700.

Every read-modify-write runs in one `BEGIN IMMEDIATE` transaction: SQLite's write lock then
orders workers of different processes, so a job is leased by one of them and an idempotency key
maps to one job. Each thread gets its own connection (`synchronous=NORMAL`: a commit survives a
crash of the process, the last ones may be lost on power failure).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from swell.core.clock import Clock, SystemClock
from swell.core.errors import (
    ConfigError,
    Conflict,
    JobNotFound,
    LeaseLost,
    QueueFull,
    SwellError,
    Unavailable,
)
from swell.core.jobs import (
    Delivery,
    DeliveryState,
    DeliveryStep,
    Job,
    JobEvent,
    JobSpec,
    JobState,
    Priority,
    RetryPolicy,
    delivery_step,
)
from swell.queue._common import (
    ADMISSION_WINDOW,
    COUNTER_NAMES,
    NO_MODEL_WINDOW,
    Counters,
    OneAtATime,
    affine_candidates,
    apply_outcome,
    cancel_or_request,
    check_kinds,
    delivery_rows,
    fit_batch,
    full_message,
    holds,
    idempotency_conflict,
    interactive_waiting,
    missing_delivery,
    reported,
    require_owner,
    retry_after,
    starve_limit,
    transition_events,
    translated_failures,
    uncounted,
    unknown_cursor,
    wants_stop,
)
from swell.queue.base import (
    EVENT_RETENTION,
    TRIM_BATCH,
    TRIM_EVERY,
    Outcome,
    QueueStats,
    Submitted,
    Update,
)

BUSY_TIMEOUT = 30.0  # seconds a connection waits for another process's write lock
PROBE_TIMEOUT = 2.0  # seconds `probe` waits for the write lock before it calls the file unavailable
CHECKPOINT_EVERY = 0.5  # seconds between background WAL checkpoints
LOCKED_RETRY_AFTER = 2.0  # what a client is asked to wait when the write lock stayed taken
FAULT_RETRY_AFTER = 10.0  # ... and when the disk is full, read-only or failing
FILE_MODE = 0o600  # the database (SQLite gives its -wal and -shm files the same mode)
DIR_MODE = 0o700  # a directory the queue creates for it


class Migration(NamedTuple):
    """One step of the schema: `script` takes a file from the version before it to its own."""

    name: str
    script: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "jobs, depth and counters",
        """
    CREATE TABLE jobs (
        id               TEXT PRIMARY KEY,
        service          TEXT NOT NULL,
        state            TEXT NOT NULL,
        priority         TEXT NOT NULL,
        rank             REAL NOT NULL,
        input            TEXT NOT NULL,
        created_at       REAL NOT NULL,
        available_at     REAL NOT NULL,
        max_attempts     INTEGER NOT NULL,
        timeout          REAL NOT NULL,
        attempts         INTEGER NOT NULL,
        idempotency_key  TEXT,
        callback_url     TEXT,
        tenant           TEXT,
        model            TEXT,
        started_at       REAL,
        finished_at      REAL,
        lease_owner      TEXT,
        lease_expires_at REAL,
        result           TEXT,
        error            TEXT,
        webhook_state    TEXT NOT NULL,
        webhook_attempts INTEGER NOT NULL,
        webhook_next_at  REAL,
        webhook_error    TEXT
    );
    CREATE INDEX jobs_ready ON jobs (service, rank, available_at) WHERE state = 'queued';
    CREATE INDEX jobs_ready_model ON jobs (service, model, rank, available_at)
        WHERE state = 'queued' AND model IS NOT NULL;
    CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'leased';
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (service, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_created ON jobs (created_at);
    CREATE INDEX jobs_service_created ON jobs (service, created_at);
    CREATE INDEX jobs_state_created ON jobs (state, created_at);
    CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX jobs_webhooks ON jobs (webhook_next_at) WHERE webhook_state = 'pending';

    CREATE TABLE depth (
        service TEXT NOT NULL,
        state   TEXT NOT NULL,
        count   INTEGER NOT NULL,
        PRIMARY KEY (service, state)
    ) WITHOUT ROWID;
    CREATE TRIGGER jobs_depth_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO depth VALUES (new.service, new.state, 1)
            ON CONFLICT (service, state) DO UPDATE SET count = count + 1;
    END;
    CREATE TRIGGER jobs_depth_update AFTER UPDATE OF state ON jobs WHEN old.state != new.state BEGIN
        UPDATE depth SET count = count - 1 WHERE service = old.service AND state = old.state;
        INSERT INTO depth VALUES (new.service, new.state, 1)
            ON CONFLICT (service, state) DO UPDATE SET count = count + 1;
    END;
    CREATE TRIGGER jobs_depth_delete AFTER DELETE ON jobs BEGIN
        UPDATE depth SET count = count - 1 WHERE service = old.service AND state = old.state;
    END;

    CREATE TABLE counters (
        one          INTEGER PRIMARY KEY CHECK (one = 1),
        submitted    INTEGER NOT NULL DEFAULT 0,
        deduplicated INTEGER NOT NULL DEFAULT 0,
        rejected     INTEGER NOT NULL DEFAULT 0,
        leased       INTEGER NOT NULL DEFAULT 0,
        succeeded    INTEGER NOT NULL DEFAULT 0,
        failed       INTEGER NOT NULL DEFAULT 0,
        dead         INTEGER NOT NULL DEFAULT 0,
        expired      INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO counters (one) VALUES (1);
    """,
    ),
    Migration(
        "batch limits, request fingerprints, split and re-drive counters, the probe row",
        """
    ALTER TABLE jobs ADD COLUMN batch_limit INTEGER;
    ALTER TABLE jobs ADD COLUMN leased_with INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN fingerprint TEXT;
    ALTER TABLE counters ADD COLUMN split INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE counters ADD COLUMN redriven INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE probe (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        at  REAL NOT NULL
    );
    INSERT INTO probe VALUES (1, 0);
    """,
    ),
    Migration(
        "job events, progress and cancel requests",
        """
    CREATE TABLE events (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        kind   TEXT NOT NULL,
        at     REAL NOT NULL,
        data   TEXT NOT NULL
    );
    CREATE INDEX events_job ON events (job_id, seq);
    CREATE INDEX events_kind ON events (kind, seq);
    ALTER TABLE jobs ADD COLUMN progress REAL;
    ALTER TABLE jobs ADD COLUMN progress_message TEXT;
    ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN activity INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_untrimmed ON jobs (finished_at) WHERE activity > 0 AND finished_at IS NOT NULL;
    """,
    ),
    Migration(
        "deliveries: the outbox, one row per (job, channel); the webhook columns leave jobs",
        """
    CREATE TABLE deliveries (
        job_id       TEXT NOT NULL,
        channel      TEXT NOT NULL,
        target       TEXT NOT NULL,
        state        TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      REAL,
        error        TEXT,
        expires_at   REAL,
        created_at   REAL NOT NULL,
        progress_seq INTEGER NOT NULL DEFAULT 0,
        version      INTEGER NOT NULL DEFAULT 0,
        UNIQUE (job_id, channel)
    );
    CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state = 'pending';
    CREATE INDEX deliveries_open ON deliveries (expires_at) WHERE state = 'waiting';
    INSERT INTO deliveries (job_id, channel, target, state, attempts, next_at, error, created_at)
        SELECT id, 'webhook', json_object('url', callback_url), webhook_state, webhook_attempts,
               webhook_next_at, webhook_error, created_at
        FROM jobs WHERE callback_url IS NOT NULL AND webhook_state != 'none' ORDER BY rowid;
    DROP INDEX jobs_webhooks;
    ALTER TABLE jobs DROP COLUMN webhook_state;
    ALTER TABLE jobs DROP COLUMN webhook_attempts;
    ALTER TABLE jobs DROP COLUMN webhook_next_at;
    ALTER TABLE jobs DROP COLUMN webhook_error;
    """,
    ),
)

COLUMNS = (
    "id, service, state, priority, input, created_at, available_at, max_attempts, timeout, attempts, "
    "idempotency_key, callback_url, tenant, model, started_at, finished_at, lease_owner, lease_expires_at, "
    "result, error, batch_limit, leased_with, fingerprint, progress, progress_message, cancel_requested"
)
SELECT = f"SELECT {COLUMNS} FROM jobs"
INSERT = f"INSERT INTO jobs (rank, {COLUMNS}) VALUES ({', '.join('?' * 27)})"
UPDATE = (
    "UPDATE jobs SET state = ?, rank = ?, available_at = ?, attempts = ?, started_at = ?, finished_at = ?, "
    "lease_owner = ?, lease_expires_at = ?, result = ?, error = ?, batch_limit = ?, leased_with = ?, "
    "progress = ?, progress_message = ?, cancel_requested = ? WHERE id = ?"
)
BUMP = "UPDATE counters SET " + ", ".join(f"{name} = {name} + ?" for name in COUNTER_NAMES)
READY = (
    f"{SELECT} WHERE service = ? AND state = 'queued' AND available_at <= ? "
    "ORDER BY rank, available_at, rowid LIMIT ?"
)
READY_MODEL = (
    f"{SELECT} WHERE service = ? AND model = ? AND state = 'queued' AND available_at <= ? "
    "ORDER BY rank, available_at, rowid LIMIT ?"
)
READY_STARVED = (  # rank <= before + aging bounds the scan: no starved job ranks above it
    f"{SELECT} WHERE service = ? AND state = 'queued' AND rank <= ? AND available_at <= ? "
    "ORDER BY rank, available_at, rowid LIMIT ?"
)
DELIVERY_COLUMNS = (
    "job_id, channel, target, state, attempts, next_at, error, expires_at, created_at, progress_seq, version"
)
INSERT_DELIVERY = f"INSERT INTO deliveries ({DELIVERY_COLUMNS}) VALUES ({', '.join('?' * 11)})"
WITH_JOBS = (  # a row and its job: the delivery's columns, then the job's
    f"SELECT {', '.join('d.' + c for c in DELIVERY_COLUMNS.split(', '))}, "
    f"{', '.join('j.' + c for c in COLUMNS.split(', '))} "
    "FROM deliveries AS d JOIN jobs AS j ON j.id = d.job_id"
)
DUE_DELIVERIES = f"{WITH_JOBS} WHERE d.state = 'pending' AND d.next_at <= ?"  # + channels, ORDER BY
DUE_ORDER = " ORDER BY d.next_at, d.rowid LIMIT ?"
OPEN_EXPIRING = f"{WITH_JOBS} WHERE d.state = 'waiting' AND d.expires_at IS NOT NULL"
OPEN_EXPIRING_ORDER = " ORDER BY d.expires_at, d.rowid LIMIT ?"
OPEN_LASTING = f"{WITH_JOBS} WHERE d.state = 'waiting' AND d.expires_at IS NULL"
OPEN_LASTING_ORDER = " ORDER BY d.rowid LIMIT ?"
JOB_DELIVERIES = f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE job_id = ? ORDER BY rowid"
ARM = (
    "UPDATE deliveries SET state = 'pending', next_at = ?, version = version + 1 "
    "WHERE job_id = ? AND state = 'waiting'"
)
REARM = (
    "UPDATE deliveries SET state = 'waiting', attempts = 0, next_at = NULL, error = NULL, progress_seq = 0, "
    "version = version + 1 WHERE job_id = ?"
)
SAVE_DELIVERY = (
    "UPDATE deliveries SET state = ?, attempts = ?, next_at = ?, error = ?, progress_seq = ?, "
    "version = version + 1 WHERE job_id = ? AND channel = ? AND version = ?"
)
HAS_DELIVERY = "SELECT 1 FROM deliveries WHERE job_id = ? AND channel = ?"
EXPIRED = f"{SELECT} INDEXED BY jobs_leases WHERE state = 'leased' AND lease_expires_at <= ?"
ACTIVE = "SELECT coalesce(sum(count), 0) FROM depth WHERE service = ? AND state IN ('queued', 'leased')"
HAS_WORK = (
    "SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_ready "
    "WHERE service = ? AND state = 'queued' AND available_at <= ?) "
    "OR EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_leases "
    "WHERE state = 'leased' AND lease_expires_at <= ? AND service = ?)"
)
RECENT = "SELECT count(*) FROM jobs INDEXED BY jobs_finished WHERE finished_at >= ? AND service = ?"
QUEUED = f"{SELECT} INDEXED BY jobs_ready WHERE state = 'queued'"  # cancel_many, optionally by service
CURSOR = "SELECT created_at, rowid FROM jobs WHERE id = ?"
NEWEST_FIRST = "ORDER BY created_at DESC, rowid DESC LIMIT ?"  # a page of `jobs`
PAGE_AFTER = "created_at <= ? AND (created_at < ? OR rowid < ?)"  # after the cursor: an index range
PROBE = "UPDATE probe SET at = ? WHERE one = 1"
EVENT_COLUMNS = "seq, job_id, kind, at, data"
INSERT_EVENT = "INSERT INTO events (job_id, kind, at, data) VALUES (?, ?, ?, ?)"
JOB_EVENTS = f"SELECT {EVENT_COLUMNS} FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?"
REPORTED = (
    "UPDATE jobs SET progress = ?, progress_message = ?, activity = activity + ? "
    "WHERE id = ? AND state = 'leased' AND lease_owner = ?"
)
UNTRIMMED = (
    "SELECT id FROM jobs INDEXED BY jobs_untrimmed "
    "WHERE activity > 0 AND finished_at IS NOT NULL AND finished_at <= ? LIMIT ?"
)
TRIM_EVENTS = "DELETE FROM events WHERE job_id = ? AND kind IN ('progress', 'delta')"
TRIMMED = "UPDATE jobs SET activity = 0 WHERE id = ?"


def _dump(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _row(job: Job, policy: RetryPolicy) -> tuple[Any, ...]:
    """The INSERT parameters for `job`: its rank, then every column in `COLUMNS` order."""
    return (
        job.rank(policy),
        job.id,
        job.service,
        job.state.value,
        job.priority.value,
        _dump(job.input),
        job.created_at,
        job.available_at,
        job.max_attempts,
        job.timeout,
        job.attempts,
        job.idempotency_key,
        job.callback_url,
        job.tenant,
        job.model,
        job.started_at,
        job.finished_at,
        job.lease_owner,
        job.lease_expires_at,
        _dump(job.result),
        job.error,
        job.batch_limit,
        job.leased_with,
        job.fingerprint,
        job.progress,
        job.progress_message,
        int(job.cancel_requested),
    )


def _changes(job: Job, policy: RetryPolicy) -> tuple[Any, ...]:
    """The UPDATE parameters that persist every field a transition may change."""
    return (
        job.state.value,
        job.rank(policy),
        job.available_at,
        job.attempts,
        job.started_at,
        job.finished_at,
        job.lease_owner,
        job.lease_expires_at,
        _dump(job.result),
        job.error,
        job.batch_limit,
        job.leased_with,
        job.progress,
        job.progress_message,
        int(job.cancel_requested),
        job.id,
    )


def _job(row: tuple[Any, ...]) -> Job:
    (id_, service, state, priority, input_, created_at, available_at, max_attempts, timeout, attempts) = row[
        :10
    ]
    (key, callback_url, tenant, model, started_at, finished_at, owner, expires_at, result, error) = row[10:20]
    (batch_limit, leased_with, fingerprint, progress, progress_message, cancel_requested) = row[20:]
    return Job(
        id=id_,
        service=service,
        input=json.loads(input_),
        priority=Priority(priority),
        state=JobState(state),
        created_at=created_at,
        available_at=available_at,
        max_attempts=max_attempts,
        timeout=timeout,
        attempts=attempts,
        idempotency_key=key,
        callback_url=callback_url,
        tenant=tenant,
        model=model,
        started_at=started_at,
        finished_at=finished_at,
        lease_owner=owner,
        lease_expires_at=expires_at,
        result=None if result is None else json.loads(result),
        error=error,
        batch_limit=batch_limit,
        leased_with=leased_with,
        fingerprint=fingerprint,
        progress=progress,
        progress_message=progress_message,
        cancel_requested=bool(cancel_requested),
    )


def _delivery(row: tuple[Any, ...]) -> Delivery:
    job_id, channel, target, state, attempts, next_at, error, expires_at, created_at, seq, version = row
    return Delivery(
        job_id=job_id,
        channel=channel,
        target=json.loads(target),
        state=DeliveryState(state),
        attempts=attempts,
        next_at=next_at,
        error=error,
        expires_at=expires_at,
        created_at=created_at,
        progress_seq=seq,
        version=version,
    )


def _delivery_row(row: Delivery) -> tuple[Any, ...]:
    """The INSERT_DELIVERY parameters for `row`."""
    return (
        row.job_id,
        row.channel,
        _dump(dict(row.target)),
        row.state.value,
        row.attempts,
        row.next_at,
        row.error,
        row.expires_at,
        row.created_at,
        row.progress_seq,
        row.version,
    )


def _with_job(row: tuple[Any, ...]) -> tuple[Delivery, Job]:
    return _delivery(row[:11]), _job(row[11:])


def _in(column: str, values: Sequence[str]) -> str:
    """` AND column IN (?, ...)` for a filter whose values are bound after the query's others."""
    return f" AND {column} IN ({', '.join('?' * len(values))})"


def _event(row: tuple[Any, ...]) -> JobEvent:
    seq, job_id, kind, at, data = row
    return JobEvent(seq, job_id, kind, at, json.loads(data))


def _event_rows(pairs: Iterable[tuple[Job | None, Job]], now: float) -> list[tuple[Any, ...]]:
    """INSERT_EVENT parameters for the state events of storing each (before, after) pair."""
    return [
        (after.id, kind, now, _dump(data))
        for before, after in pairs
        for kind, data in transition_events(before, after)
    ]


def _missing(job_id: str) -> Job:
    raise JobNotFound(f"no job {job_id!r}", field="id")


def _unavailable(path: Path, exc: sqlite3.Error) -> Unavailable | None:
    """The `Unavailable` a storage failure is answered with; None for an error that is a bug here
    (misuse of the API, a constraint this code should have kept), which stays as it is."""
    if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError | sqlite3.IntegrityError):
        return None
    text = str(exc)
    if "locked" in text or "busy" in text:
        return Unavailable(
            f"the queue's database {path} stayed locked by another process: {text}",
            retry_after=LOCKED_RETRY_AFTER,
        )
    return Unavailable(
        f"the queue's database {path} cannot be used now: {text}", retry_after=FAULT_RETRY_AFTER
    )


def _storage(path: Path) -> contextlib.AbstractContextManager[None]:
    """Translate the storage failures raised inside into `Unavailable`, at this backend's boundary."""
    return translated_failures(sqlite3.Error, lambda exc: _unavailable(path, exc))


def _private_dir(directory: Path) -> None:
    """Create `directory` and any missing parent 0700; one that exists is left as it is."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(mode=DIR_MODE, exist_ok=True)


def _private_files(path: Path) -> None:
    """Create the database file 0600 (an empty file is an empty database) before SQLite does, or
    take group and other access away from it and its -wal/-shm files when found looser."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            info = name.stat()
            if info.st_mode & 0o077 and info.st_uid == os.geteuid():
                os.chmod(name, stat.S_IMODE(info.st_mode) & ~0o077)


def _prepare(path: Path) -> None:
    """The directory and file the database lives in, private to the user, or `Unavailable`."""
    try:
        _private_dir(path.parent)
        _private_files(path)
    except OSError as exc:
        raise Unavailable(
            f"cannot create the queue's database {path}: {exc}", retry_after=FAULT_RETRY_AFTER
        ) from exc


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back what is open. A failing statement may have rolled back already (a full disk does),
    and a ROLLBACK that fails leaves the connection to the pool, which closes it."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


class _SqliteView:
    """`ReadyView` over the jobs table, inside the lease's write transaction: each list is one
    query on `jobs_ready` or `jobs_ready_model`."""

    def __init__(self, db: sqlite3.Connection, service: str, now: float, policy: RetryPolicy) -> None:
        self.db, self.service, self.now, self.policy = db, service, now, policy

    def starved(self, before: float, n: int) -> list[Job]:
        bound = before + self.policy.aging_seconds
        rows = self.db.execute(READY_STARVED, (self.service, bound, min(before, self.now), n))
        return [_job(row) for row in rows]

    def of_model(self, model: str | None, n: int) -> list[Job]:
        if model is not None:
            return [_job(row) for row in self.db.execute(READY_MODEL, (self.service, model, self.now, n))]
        window = max(NO_MODEL_WINDOW, 4 * n)
        rows = self.db.execute(READY, (self.service, self.now, window))
        return [job for job in map(_job, rows) if job.model is None][:n]

    def first(self) -> Job | None:
        row = self.db.execute(READY, (self.service, self.now, 1)).fetchone()
        return None if row is None else _job(row)


@dataclass(frozen=True, slots=True)
class _Rejected:
    """Admission said no; raised as `QueueFull` once the transaction that counted it committed."""

    message: str
    retry_after: float


class SQLiteQueue(OneAtATime):
    """A `QueueBackend` in one SQLite file; safe across threads and processes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = SystemClock(),
        policy: RetryPolicy = RetryPolicy(),
        event_retention: float = EVENT_RETENTION,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._policy = policy
        self.event_retention = event_retention
        self._trimmed_at = clock.now()
        self._pool = _Pool(self._connect)
        self._writers = _Pool(lambda: self._connect(busy_timeout=0.0))  # `_begin_immediate` waits
        self._checkpointer = _Checkpointer(lambda: self._connect(busy_timeout=0.0))
        try:
            _prepare(self.path)
            self._migrate()
            with self._read() as db:
                self._baseline = self._counters(db)
        except BaseException:
            self.close()  # a file that cannot be used leaves no thread or connection behind
            raise

    # -- the protocol -----------------------------------------------------------------------------

    def submit_many(
        self, specs: Sequence[JobSpec], *, limits: Mapping[str, int] | None = None
    ) -> list[Submitted | SwellError]:
        limits = limits or {}
        with self._write() as db:
            now = self._clock.now()
            outcomes = [self._submit(db, spec, limits.get(spec.service), now) for spec in specs]
        # a refusal is counted in the transaction above, and answered only once that committed
        return [
            QueueFull(o.message, retry_after=o.retry_after) if isinstance(o, _Rejected) else o
            for o in outcomes
        ]

    def get(self, job_id: str) -> Job:
        with self._read() as db:
            return self._get(db, job_id)

    def get_many(self, job_ids: Sequence[str]) -> list[Job]:
        found: dict[str, Job] = {}
        with self._read(snapshot=True) as db:
            for start in range(0, len(job_ids), 500):  # under SQLite's limit on parameters
                found.update((job.id, job) for job in self._many(db, job_ids[start : start + 500]))
        return [found[i] for i in job_ids if i in found]

    def lease(
        self,
        service: str,
        owner: str,
        *,
        max_jobs: int = 1,
        lease_seconds: float = 30.0,
        model: str | None = None,
        models: Sequence[str] = (),
        starve_after: float | None = None,
    ) -> list[Job]:
        now = self._clock.now()
        with self._read() as db:
            if not db.execute(HAS_WORK, (service, now, now, service)).fetchone()[0]:
                return []  # idle workers poll without taking the write lock
        with self._write() as db:
            self._reap(db, now, service)
            if models or starve_after is not None:
                held = [*models, *([model] if model is not None else [])]
                view = _SqliteView(db, service, now, self._policy)
                before = starve_limit(now, starve_after)
                candidates = affine_candidates(view, held, max_jobs, before, self._policy)
            else:
                candidates = self._ready(db, service, model, now, max_jobs)
            chosen = fit_batch(candidates, max_jobs)
            leased = [job.lease(owner, now, lease_seconds, batch=len(chosen)) for job in chosen]
            self._save(db, list(zip(chosen, leased, strict=True)), now)
            self._bump(db, leased=len(leased))
            return leased

    def interactive_waiting(self, service: str, models: Sequence[str | None] = ()) -> bool:
        now = self._clock.now()
        with self._read() as db:  # the indexed reads of a lease, without its write lock
            return interactive_waiting(_SqliteView(db, service, now, self._policy), models)

    def renew(self, job_ids: Sequence[str], owner: str, lease_seconds: float) -> None:
        """Renews every lease `owner` still holds; then `LeaseLost` naming any it does not."""
        with self._write() as db:
            now = self._clock.now()
            held = {job.id: job for job in self._many(db, job_ids)}
            renewed = [
                job.renew(owner, now, lease_seconds)
                for job in held.values()
                if job.state is JobState.LEASED and job.lease_owner == owner
            ]
            db.executemany(UPDATE, [_changes(job, self._policy) for job in renewed])
        lost = sorted(set(job_ids) - {job.id for job in renewed})
        if lost:
            raise LeaseLost(f"{owner} no longer holds the lease on {', '.join(lost)}")

    def settle(self, owner: str, outcomes: Sequence[Outcome]) -> list[Job | SwellError]:
        with self._write() as db:
            now = self._clock.now()
            held = {job.id: job for job in self._many(db, [o.job_id for o in outcomes])}
            settled: list[Job | SwellError] = []
            for outcome in outcomes:
                try:
                    job = held[outcome.job_id] if outcome.job_id in held else _missing(outcome.job_id)
                    settled.append(apply_outcome(job, owner, outcome, now, self._policy))
                except (LeaseLost, JobNotFound) as exc:
                    settled.append(exc)
            self._save_final(db, [(held[job.id], job) for job in settled if isinstance(job, Job)], now)
            if now - self._trimmed_at >= TRIM_EVERY:
                self._trim(db, now)
        return settled

    def release(self, job_id: str, owner: str) -> Job:
        with self._write() as db:
            now = self._clock.now()
            before = self._owned(db, job_id, owner)
            job = before.release(now)
            self._save(db, [(before, job)], now)
            return job

    def cancel(self, job_id: str) -> Job:
        with self._write() as db:
            now = self._clock.now()
            before = self._get(db, job_id)
            job = cancel_or_request(before, now)
            self._save(db, [(before, job)], now)
            return job

    def cancel_many(self, *, service: str | None = None) -> int:
        query, params = (QUEUED, ()) if service is None else (f"{QUEUED} AND service = ?", (service,))
        query += " ORDER BY rowid"  # submission order, as in every backend
        with self._write() as db:
            now = self._clock.now()
            queued = [_job(row) for row in db.execute(query, params).fetchall()]
            self._save(db, [(job, job.cancel(now)) for job in queued], now)
            return len(queued)

    def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        return {job.id for job in self.get_many(job_ids) if wants_stop(job)}

    def report(self, owner: str, updates: Sequence[Update]) -> None:
        if not updates:
            return
        with self._write() as db:
            now = self._clock.now()
            ids = sorted({u.job_id for u in updates})
            marks = ", ".join("?" * len(ids))
            activity = dict(db.execute(f"SELECT id, activity FROM jobs WHERE id IN ({marks})", ids))
            held = {job.id: job for job in self._many(db, ids) if holds(job, owner)}
            for update in updates:
                if update.job_id in held:
                    self._report(db, held, activity, update, owner, now)

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        with self._read(snapshot=True) as db:
            self._get(db, job_id)
            return [_event(row) for row in db.execute(JOB_EVENTS, (job_id, after, limit))]

    def events_since(
        self, after_seq: int, kinds: Sequence[str] = ("state",), limit: int = 1000
    ) -> list[JobEvent]:
        wanted = check_kinds(kinds)
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        query = f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? AND kind IN ({marks}) ORDER BY seq LIMIT ?"
        with self._read() as db:
            return [_event(row) for row in db.execute(query, (after_seq, *wanted, limit))]

    def event_cursor(self) -> int:
        """AUTOINCREMENT's high-water mark: right even when the newest events were trimmed."""
        with self._read() as db:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return 0 if row is None else int(row[0])

    def retry(self, job_id: str) -> Job:
        with self._write() as db:
            now = self._clock.now()
            before = self._get(db, job_id)
            job = before.redrive(now)
            self._save(db, [(before, job)], now)
            self._bump(db, redriven=1)
            return job

    def reap(self) -> int:
        with self._write() as db:
            now = self._clock.now()
            reaped = self._reap(db, now, None)
            self._trim(db, now)
            return reaped

    def jobs(
        self,
        *,
        service: str | None = None,
        state: JobState | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Job]:
        with self._read() as db:
            clauses, params = self._page_terms(db, service, state, before)
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            query = f"{SELECT} {where} {NEWEST_FIRST}"
            return [_job(row) for row in db.execute(query, [*params, limit])]

    def depth(self) -> dict[str, dict[str, int]]:
        with self._read() as db:
            return self._depth(db)

    def due_deliveries(
        self, now: float | None = None, limit: int = 100, channels: Sequence[str] | None = None
    ) -> list[tuple[Delivery, Job]]:
        now = self._clock.now() if now is None else now
        query = DUE_DELIVERIES + ("" if channels is None else _in("d.channel", channels)) + DUE_ORDER
        with self._read() as db:
            return [_with_job(row) for row in db.execute(query, (now, *(channels or ()), limit))]

    def open_deliveries(self, channels: Sequence[str], limit: int = 100) -> list[tuple[Delivery, Job]]:
        """Two index scans: rows that expire, soonest first, then the others in creation order."""
        if not channels:
            return []
        found: list[tuple[Delivery, Job]] = []
        with self._read(snapshot=True) as db:
            for query, order in ((OPEN_EXPIRING, OPEN_EXPIRING_ORDER), (OPEN_LASTING, OPEN_LASTING_ORDER)):
                if len(found) < limit:
                    query += _in("d.channel", channels) + order
                    found += map(_with_job, db.execute(query, (*channels, limit - len(found))))
        return found

    def save_delivery(self, delivery: Delivery) -> None:
        changes = (
            delivery.state.value,
            delivery.attempts,
            delivery.next_at,
            delivery.error,
            delivery.progress_seq,
            delivery.job_id,
            delivery.channel,
            delivery.version,
        )
        with self._write() as db:
            stale = db.execute(SAVE_DELIVERY, changes).rowcount == 0
            if stale and db.execute(HAS_DELIVERY, (delivery.job_id, delivery.channel)).fetchone() is None:
                raise missing_delivery(delivery)

    def deliveries(self, job_id: str) -> list[Delivery]:
        with self._read(snapshot=True) as db:
            self._get(db, job_id)
            return [_delivery(row) for row in db.execute(JOB_DELIVERIES, (job_id,))]

    def probe(self) -> None:
        """Commit one tiny write, waiting PROBE_TIMEOUT at most for the write lock."""
        with self._write(lock_timeout=PROBE_TIMEOUT) as db:
            db.execute(PROBE, (self._clock.now(),))

    def statistics(self) -> QueueStats:
        """Counters since this handle was opened (every process's work counts), and depth now."""
        with self._read(snapshot=True) as db:
            now, depth = self._counters(db), self._depth(db)
        since = Counters(*(a - b for a, b in zip(now, self._baseline, strict=True)))
        return since.snapshot(depth)

    def close(self) -> None:
        """Close every connection; a call after this opens a fresh one (and closes it after)."""
        self._checkpointer.stop()
        self._pool.close()
        self._writers.close()

    def __repr__(self) -> str:
        return f"SQLiteQueue(path={str(self.path)!r}, clock={self._clock!r})"

    # -- connections and transactions -------------------------------------------------------------

    def _connect(self, busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
        """A connection that waits `busy_timeout` for locks once set up (always BUSY_TIMEOUT while
        it opens: reading a WAL file's index can meet another process's recovery)."""
        connection = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=64,
        )
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA wal_autocheckpoint = 0")  # the `_Checkpointer` thread does it
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        return connection

    @contextmanager
    def _read(self, *, snapshot: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection for reads; with `snapshot`, every read sees the same moment."""
        with _storage(self.path), self._pool.connection() as db:
            if not snapshot:
                yield db
                return
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")

    @contextmanager
    def _write(self, lock_timeout: float = BUSY_TIMEOUT) -> Iterator[sqlite3.Connection]:
        """One write transaction that holds SQLite's write lock from its first statement."""
        self._checkpointer.start()
        with _storage(self.path), self._writers.connection() as db:
            _begin_immediate(db, lock_timeout)
            try:
                yield db
            except BaseException:
                _rollback(db)
                raise
            db.execute("COMMIT")

    def _migrate(self) -> None:
        with _storage(self.path), self._pool.connection() as db:
            _enable_wal(db)
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise ConfigError(
                    f"{self.path} has queue schema {version}; this Swell knows up to {len(MIGRATIONS)}",
                    key="queue",
                )
            for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _statements(migration.script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    # -- helpers (inside a transaction) -----------------------------------------------------------

    def _submit(
        self, db: sqlite3.Connection, spec: JobSpec, limit: int | None, now: float
    ) -> _Rejected | Conflict | tuple[Job, bool]:
        if spec.idempotency_key is not None:
            row = db.execute(
                f"{SELECT} WHERE service = ? AND idempotency_key = ?", (spec.service, spec.idempotency_key)
            ).fetchone()
            if row is not None:
                existing = _job(row)
                if not existing.same_request(spec):
                    return idempotency_conflict(existing, spec)
                self._bump(db, deduplicated=1)
                return existing, False
        if limit is not None:
            active = db.execute(ACTIVE, (spec.service,)).fetchone()[0]
            if active >= limit:
                self._bump(db, rejected=1)
                recent = db.execute(RECENT, (now - ADMISSION_WINDOW, spec.service)).fetchone()[0]
                return _Rejected(
                    full_message(spec.service, active, limit), retry_after(active - limit + 1, recent)
                )
        job = Job.create(spec, now)
        db.execute(INSERT, _row(job, self._policy))
        if spec.delivery_specs:
            db.executemany(INSERT_DELIVERY, [_delivery_row(row) for row in delivery_rows(job, spec)])
        db.executemany(INSERT_EVENT, _event_rows([(None, job)], now))
        self._bump(db, submitted=1)
        return job, True

    def _get(self, db: sqlite3.Connection, job_id: str) -> Job:
        row = db.execute(f"{SELECT} WHERE id = ?", (job_id,)).fetchone()
        return _missing(job_id) if row is None else _job(row)

    def _many(self, db: sqlite3.Connection, job_ids: Sequence[str]) -> list[Job]:
        marks = ", ".join("?" * len(job_ids))
        return [_job(row) for row in db.execute(f"{SELECT} WHERE id IN ({marks})", list(job_ids))]

    def _page_terms(
        self, db: sqlite3.Connection, service: str | None, state: JobState | None, before: str | None
    ) -> tuple[list[str], list[Any]]:
        """The WHERE terms and parameters of one page of `jobs`."""
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("service = ?", service),
            ("state = ?", None if state is None else state.value),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        if before is not None:
            cursor = db.execute(CURSOR, (before,)).fetchone()
            if cursor is None:
                raise unknown_cursor(before)
            clauses.append(PAGE_AFTER)
            params += [cursor[0], cursor[0], cursor[1]]
        return clauses, params

    def _owned(self, db: sqlite3.Connection, job_id: str, owner: str) -> Job:
        job = self._get(db, job_id)
        require_owner(job, owner)
        return job

    def _ready(
        self, db: sqlite3.Connection, service: str, model: str | None, now: float, n: int
    ) -> list[Job]:
        """Up to `n` jobs available at `now`, jobs for `model` first, each by rank."""
        taken: list[Job] = []
        if model is not None:
            taken = [_job(row) for row in db.execute(READY_MODEL, (service, model, now, n))]
        if len(taken) < n:
            seen = {job.id for job in taken}
            rows = db.execute(READY, (service, now, n + len(taken)))
            taken += [job for job in map(_job, rows) if job.id not in seen][: n - len(taken)]
        return taken

    def _reap(self, db: sqlite3.Connection, now: float, service: str | None) -> int:
        query, params = (
            (EXPIRED, (now,)) if service is None else (EXPIRED + " AND service = ?", (now, service))
        )
        query += " ORDER BY lease_expires_at, rowid"  # every backend expires (and logs) in this order
        changes = [(job, job.expire(now, self._policy)) for job in map(_job, db.execute(query, params))]
        self._save_final(db, changes, now)
        self._bump(db, expired=len(changes))
        return len(changes)

    def _save(self, db: sqlite3.Connection, changes: Sequence[tuple[Job, Job]], now: float) -> None:
        """Persist (before, after) pairs, with the state events of their transitions."""
        db.executemany(UPDATE, [_changes(after, self._policy) for _, after in changes])
        db.executemany(INSERT_EVENT, _event_rows(changes, now))
        self._step_deliveries(db, changes, now)

    def _step_deliveries(
        self, db: sqlite3.Connection, changes: Sequence[tuple[Job, Job]], now: float
    ) -> None:
        """Arm the deliveries of jobs that turned final, re-arm those of re-driven jobs."""
        steps = [(delivery_step(before, after), after) for before, after in changes]
        armed = [(a.finished_at or now, a.id) for step, a in steps if step is DeliveryStep.ARM]
        rearmed = [(a.id,) for step, a in steps if step is DeliveryStep.REARM]
        if armed:  # a lease or a renewal, the hot paths, arms nothing and costs no statement
            db.executemany(ARM, armed)
        if rearmed:
            db.executemany(REARM, rearmed)

    def _report(
        self,
        db: sqlite3.Connection,
        held: dict[str, Job],
        activity: dict[str, int],
        update: Update,
        owner: str,
        now: float,
    ) -> None:
        """Record one update of a job `owner` holds; `held` and `activity` follow it."""
        job, events = reported(held[update.job_id], update, activity.get(update.job_id, 0))
        held[job.id] = job
        activity[job.id] = activity.get(job.id, 0) + len(events)
        db.execute(REPORTED, (job.progress, job.progress_message, len(events), job.id, owner))
        db.executemany(INSERT_EVENT, [(job.id, kind, now, _dump(data)) for kind, data in events])

    def _trim(self, db: sqlite3.Connection, now: float) -> None:
        """Delete the progress and delta events of jobs final for `event_retention` seconds."""
        self._trimmed_at = now
        ids = [(row[0],) for row in db.execute(UNTRIMMED, (now - self.event_retention, TRIM_BATCH))]
        db.executemany(TRIM_EVENTS, ids)
        db.executemany(TRIMMED, ids)

    def _save_final(self, db: sqlite3.Connection, changes: Sequence[tuple[Job, Job]], now: float) -> None:
        """Persist (before, after) pairs of jobs whose delivery ended, counting those that reached a
        final state or went back uncounted."""
        self._save(db, changes, now)
        counts = Counters()
        for before, after in changes:
            counts.count_final(after)
            counts.split += uncounted(before, after)
        self._bump(db, succeeded=counts.succeeded, failed=counts.failed, dead=counts.dead, split=counts.split)

    def _bump(self, db: sqlite3.Connection, **deltas: int) -> None:
        if any(deltas.values()):
            db.execute(BUMP, [deltas.get(name, 0) for name in COUNTER_NAMES])

    def _counters(self, db: sqlite3.Connection) -> tuple[int, ...]:
        return tuple(db.execute(f"SELECT {', '.join(COUNTER_NAMES)} FROM counters").fetchone())

    def _depth(self, db: sqlite3.Connection) -> dict[str, dict[str, int]]:
        depth: dict[str, dict[str, int]] = {}
        for service, state, count in db.execute("SELECT service, state, count FROM depth WHERE count > 0"):
            depth.setdefault(service, {})[state] = count
        return depth


class _Pool:
    """Idle connections to one file, each lent to one thread at a time, none reused across a fork."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], keep: int = 8) -> None:
        self._connect = connect
        self._keep = keep
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's handles are not ours to use
                self._idle, self._pid = [], os.getpid()
            connection = self._idle.pop() if self._idle else None
        connection = connection or self._connect()
        try:
            yield connection
        finally:
            self._give_back(connection)

    def close(self) -> None:
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for connection in idle:
            connection.close()

    def _give_back(self, connection: sqlite3.Connection) -> None:
        if connection.in_transaction:  # a COMMIT that failed: never lend a connection mid-transaction
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                connection.close()
                return
        with self._lock:
            keep = not self._closed and self._pid == os.getpid() and len(self._idle) < self._keep
            if keep:
                self._idle.append(connection)
        if not keep:
            connection.close()


class _Checkpointer:
    """Copies the WAL back into the database file from a thread of its own, every CHECKPOINT_EVERY.

    Left to SQLite, the commit that grows the WAL past 1,000 pages runs the checkpoint itself, with
    its fsyncs: under a steady 200 submits/s that put a 30-50 ms stall into one acknowledgement in a
    hundred, once a second. A PASSIVE checkpoint takes no lock writers need, so here nobody waits
    for it. Each process that writes runs one; when two overlap, one finds the other busy and skips.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def start(self) -> None:
        """Start the thread unless this process already runs it (cheap: called by every write)."""
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._stop = threading.Event()
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name="sqlite-checkpoint", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread() and self._pid == os.getpid():
            thread.join(timeout=5)

    def _run(self, stop: threading.Event) -> None:
        db: sqlite3.Connection | None = None
        try:
            while not stop.wait(CHECKPOINT_EVERY):
                # busy: another process is checkpointing; an error: the file cannot be opened now (the
                # writes fail and say so); either way, try again next time
                with contextlib.suppress(sqlite3.Error):
                    db = db or self._connect()
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            if db is not None:
                db.close()


def _begin_immediate(db: sqlite3.Connection, timeout: float = BUSY_TIMEOUT) -> None:
    """Take SQLite's write lock, trying again every 0.1 ms growing to 2 ms, for up to `timeout`.

    SQLite's own busy handler sleeps 1, 2, 5, 10 ... then 100 ms between tries, so under steady
    contention with the workers' short transactions a lock free again after 1 ms can cost a submit
    tens of milliseconds (Rails' SQLite adapter retries on its own for the same reason). In WAL mode
    BEGIN IMMEDIATE is the only statement of a write transaction that can meet the lock."""
    pause, deadline = 0.0001, time.monotonic() + timeout
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.002)


def _enable_wal(db: sqlite3.Connection) -> None:
    """Switch the file to WAL. The switch ignores the busy timeout, and processes opening a new
    file together race for it, so a locked file is retried until the timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def _statements(script: str) -> Iterable[str]:
    """Split a migration into statements, keeping each trigger body whole."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete statement in a migration: {buffer.strip()[:60]}")
