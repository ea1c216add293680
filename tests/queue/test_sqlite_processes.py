"""One SQLite file, several real processes: the gateway submits while workers lease and complete.

Workers are spawned (not forked), so each opens the file on its own as a real worker does.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

from swell.core.jobs import JobSpec, JobState
from swell.queue.sqlite import SQLiteQueue

WORKERS = 4
JOBS = 500


def _work(path: str, owner: str, out: str, stop: str) -> None:
    """Lease batches until told to stop and nothing is left; record every job this owner got."""
    queue = SQLiteQueue(path)
    Path(f"{out}.ready").touch()
    got: list[str] = []
    batch = 1 + int(owner[-1]) % 3
    while True:
        jobs = queue.lease("svc", owner, max_jobs=batch, lease_seconds=120)
        for job in jobs:
            got.append(job.id)
            queue.complete(job.id, owner, {"owner": owner})
        if not jobs:
            if Path(stop).exists() and not queue.depth().get("svc", {}).get("queued"):
                break
            time.sleep(0.002)
    queue.close()
    Path(out).write_text(json.dumps(got))


def _submit_keys(path: str, keys: list[str], out: str, start: Any) -> None:
    start.wait()
    queue = SQLiteQueue(path)
    ids = {key: queue.submit(JobSpec(service="svc", input={}, idempotency_key=key))[0].id for key in keys}
    queue.close()
    Path(out).write_text(json.dumps(ids))


def _run(processes: list[multiprocessing.process.BaseProcess]) -> None:
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * len(processes)


def test_every_job_goes_to_exactly_one_worker_process(tmp_path: Path) -> None:
    path, stop = tmp_path / "queue.db", tmp_path / "stop"
    gateway = SQLiteQueue(path)
    spawn = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"w{i}.json" for i in range(WORKERS)]
    workers = [
        spawn.Process(target=_work, args=(str(path), f"w{i}", str(out), str(stop)))
        for i, out in enumerate(outs)
    ]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 60
    while not all(Path(f"{out}.ready").exists() for out in outs):
        assert all(w.is_alive() for w in workers) and time.monotonic() < deadline, "a worker did not start"
        time.sleep(0.01)
    submitted = {gateway.submit(JobSpec(service="svc", input={"i": i}))[0].id for i in range(JOBS)}
    stop.touch()
    _run(workers)

    delivered = [(job_id, f"w{i}") for i, out in enumerate(outs) for job_id in json.loads(out.read_text())]
    assert len(delivered) == JOBS, "a job was delivered twice or never"
    assert {job_id for job_id, _ in delivered} == submitted
    for job_id, owner in delivered:
        job = gateway.get(job_id)
        assert (job.state, job.attempts, job.result) == (JobState.SUCCEEDED, 1, {"owner": owner})
    stats = gateway.statistics()
    assert (stats.submitted, stats.leased, stats.succeeded) == (JOBS, JOBS, JOBS)
    assert gateway.depth() == {"svc": {"succeeded": JOBS}}


def test_one_idempotency_key_makes_one_job_across_processes(tmp_path: Path) -> None:
    """Three processes create the file together, then submit the same keys."""
    path = tmp_path / "queue.db"
    keys = [f"key-{i}" for i in range(40)]
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(3)
    outs = [tmp_path / f"s{i}.json" for i in range(3)]
    submitters = [spawn.Process(target=_submit_keys, args=(str(path), keys, str(out), start)) for out in outs]
    for submitter in submitters:
        submitter.start()
    _run(submitters)

    answers = [json.loads(out.read_text()) for out in outs]
    assert answers[0] == answers[1] == answers[2]
    queue = SQLiteQueue(path)
    assert sorted(job.id for job in queue.jobs(limit=1000)) == sorted(answers[0].values())
    assert queue.depth() == {"svc": {"queued": len(keys)}}
