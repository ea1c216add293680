"""Why replicas fail, as the supervisor reports it: the worker's own `error`, a crash streak that
counts failed starts and resets once a start succeeds, and the reason a crash-looping service gives.

Real processes throughout: a stand-in worker (tests/cluster/fake_worker.py) spawned through the
supervisor's `spawn` factory that writes the status-file contract, and the real `python -m
swell.worker` with an engine that cannot load."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from swell.cluster.local import LocalSupervisor, Spawn
from swell.core.config import parse_config
from swell.core.replicas import ReplicaInfo, ReplicaState, unavailable_reason
from tests.cluster.test_local import wait_for

FAKE_WORKER = Path(__file__).with_name("fake_worker.py")


def fake_spawn(fail_times: int, starts: Path) -> Spawn:
    def spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        flags = argv[argv.index("--replica-id") :]
        command = [sys.executable, str(FAKE_WORKER), *flags, "--fail-times", str(fail_times)]
        return subprocess.Popen([*command, "--starts", str(starts)], start_new_session=True, env=env)

    return spawn


def config(engine: str = "callable", options: dict | None = None) -> object:
    service = {
        "name": "svc",
        "engine": engine,
        "options": {"function": "builtins:dict"} if options is None else options,
    }
    return parse_config({"services": [service]})


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Callable[..., LocalSupervisor]]:
    started: list[LocalSupervisor] = []

    def start(**kwargs: object) -> LocalSupervisor:
        cfg = kwargs.pop("config", None) or config()
        sup = LocalSupervisor(cfg, f"sqlite:///{tmp_path / 'q.db'}", tmp_path / "data", **kwargs)  # type: ignore[arg-type]
        sup.start()
        started.append(sup)
        return sup

    yield start
    for sup in started:
        sup.stop(timeout=10)


def only(sup: LocalSupervisor) -> ReplicaInfo:
    [replica] = sup.replicas()
    return replica


def test_a_crash_loop_keeps_the_workers_error_and_backs_off(supervise, tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    sup = supervise(spawn=fake_spawn(99, starts))
    wait_for(lambda: only(sup).crash_streak >= 3 and only(sup).state == ReplicaState.DEAD, timeout=60)
    replica = only(sup)
    assert replica.last_error is not None and replica.last_error.startswith("ConfigError: start ")
    assert replica.pid is None or replica.state == ReplicaState.DEAD
    reason = unavailable_reason(sup.replicas(), "svc")
    assert reason is not None and "svc" in reason and "ConfigError: start" in reason
    times = [float(t) for t in starts.read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0, "the restart back-off doubles"


def test_a_start_that_succeeds_resets_the_streak_and_keeps_the_last_error(supervise, tmp_path: Path) -> None:
    sup = supervise(spawn=fake_spawn(2, tmp_path / "starts"))
    wait_for(lambda: only(sup).state == ReplicaState.READY, timeout=60)
    replica = only(sup)
    assert (replica.crash_streak, replica.restarts) == (0, 2)
    assert replica.last_error == "ConfigError: start 2 failed"
    assert unavailable_reason(sup.replicas(), "svc") is None
    public = replica.to_public()
    assert (public["last_error"], public["crash_streak"]) == ("ConfigError: start 2 failed", 0)


def test_a_real_worker_whose_engine_cannot_load(supervise) -> None:
    """The engine imports and passes the config check, but its load fails in every worker."""
    sup = supervise(config=config("tests.engines.samples:Broken", {}))
    wait_for(lambda: only(sup).crash_streak >= 2, timeout=120)
    replica = only(sup)
    assert replica.last_error is not None
    assert "the weights are missing" in replica.last_error, replica.last_error
    assert replica.state in (ReplicaState.DEAD, ReplicaState.STARTING, ReplicaState.LOADING)
