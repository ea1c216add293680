"""Model affinity: a service with several checkpoints, workers that keep a few loaded.

Real worker processes over a real SQLite file, running `tests.worker.engines:CheckpointEngine`
(a checkpoint whose load sleeps and is written to a log), the gateway's real app for the submit
rules and /metrics, and `ModelSet` on its own with an injected footprint for the memory budget.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from swell.core.config import ServiceConfig, Settings, parse_config
from swell.core.errors import ConfigError
from swell.core.jobs import Job, JobSpec, JobState
from swell.core.replicas import ReplicaInfo, ReplicaState
from swell.gateway.app import create_app
from swell.queue.base import QueueBackend, open_queue
from swell.worker import contract
from swell.worker.contract import WorkerArgs, WorkerStatus
from swell.worker.models import ModelSet
from swell.worker.status import status_path
from tests.gateway.helpers import API_KEY, FakeReplicas
from tests.worker.engines import CheckpointEngine

ENGINE = "tests.worker.engines:CheckpointEngine"
LOAD_SECONDS = 0.2


def service(tmp_path: Path, names: str = "abc", **changes: Any) -> ServiceConfig:
    """Service `svc` with checkpoints named by the letters of `names`, loads logged to load.log."""
    log = str(tmp_path / "load.log")
    models = {name: {"checkpoint": name} for name in names}
    raw: dict[str, Any] = {
        "name": "svc",
        "engine": ENGINE,
        "options": {"load_seconds": LOAD_SECONDS, "log": log},
        "models": models,
        "max_batch_size": 4,
        "lease_seconds": 5.0,
        **changes,
    }
    return parse_config({"services": [raw]}).services[0]


def queue_for(tmp_path: Path) -> QueueBackend:
    return open_queue(f"sqlite:///{tmp_path / 'q.db'}")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts real worker processes; each is stopped (SIGTERM, then killed) at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        config: ServiceConfig, replica: str = "w1", models: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        queue_url = f"sqlite:///{tmp_path / 'q.db'}"
        args = WorkerArgs(config, replica, tmp_path, queue_url, models=models)
        proc = subprocess.Popen([sys.executable, "-m", "swell.worker", *args.argv()], env=_env(args))
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _env(args: WorkerArgs) -> dict[str, str]:
    import os

    return {**os.environ, **args.environment()}


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def submit_all(queue: QueueBackend, models: str, **input: Any) -> list[Job]:
    """One job per letter of `models`, in that order (1 ms apart, so the order is the rank order)."""
    jobs = []
    for n, model in enumerate(models):
        jobs.append(queue.submit(JobSpec("svc", {"n": n, **input}, model=model))[0])
        time.sleep(0.001)
    return jobs


def all_done(queue: QueueBackend, jobs: list[Job]) -> Callable[[], bool]:
    return lambda: all(queue.get(job.id).state is JobState.SUCCEEDED for job in jobs)


def log_lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "load.log"
    return path.read_text().splitlines() if path.exists() else []


def status_of(tmp_path: Path, replica: str = "w1") -> WorkerStatus:
    status = contract.load(status_path(tmp_path, replica))
    assert status is not None
    return status


# -- configuration and the gateway ------------------------------------------------------------


def test_models_are_checked_through_the_engine_with_merged_options(tmp_path: Path) -> None:
    config = service(tmp_path)
    assert config.default_model == "a" and config.affinity.max_loaded == 1
    assert config.model_options("b")["checkpoint"] == "b"
    with pytest.raises(ConfigError) as bad:
        service(tmp_path, models={"a": {"checkpoint": "a", "load_secs": 1}})
    assert bad.value.key == "services[svc].models.a.load_secs"
    with pytest.raises(ConfigError) as missing:
        service(tmp_path, models={"a": {}})
    assert missing.value.key == "services[svc].models.a.checkpoint"
    with pytest.raises(ConfigError) as default:
        service(tmp_path, default_model="z")
    assert default.value.key == "services[svc].default_model"
    with pytest.raises(ConfigError) as budget:
        service(tmp_path, affinity={"memory_budget": "lots"})
    assert budget.value.key == "services[svc].affinity.memory_budget"
    assert service(tmp_path, affinity={"memory_budget": "1.5Gi"}).affinity.budget_bytes == 1610612736


def test_the_cluster_sees_the_checkpoints_and_their_datasets(tmp_path: Path) -> None:
    from swell.cluster.base import model_datasets, service_models

    raw = {
        "datasets": {"d1": {"source": "memory://d1"}, "d2": {"source": "memory://d2"}},
        "services": [
            {
                "name": "svc",
                "engine": "diffusers",
                "options": {"device": "cpu"},
                "models": {"x": {"dataset": "d1"}, "y": {"dataset": "d2"}, "z": {"path": str(tmp_path)}},
            },
            {
                "name": "one",
                "engine": "diffusers",
                "options": {"dataset": "d1"},
            },
        ],
    }
    several, one = parse_config(raw).services
    assert service_models(several) == ("x", "y", "z") and service_models(one) == ("d1",)
    assert [model_datasets(several, m) for m in ("x", "y", "z", "nope")] == [("d1",), ("d2",), (), ()]
    assert model_datasets(one, "d1") == ("d1",)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_gateway_refuses_an_unknown_model_and_fills_in_the_default(tmp_path: Path) -> None:
    raw = {"services": [service(tmp_path, default_model="b").model_dump()]}
    config = parse_config(raw)
    queue = queue_for(tmp_path)
    app = create_app(config, Settings(data_dir=tmp_path, api_key=API_KEY), queue, replicas=FakeReplicas())
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as http:
        unknown = await http.post("/v1/jobs", json={"service": "svc", "input": {}, "model": "zz"})
        named = await http.post("/v1/jobs", json={"service": "svc", "input": {}, "model": "c"})
        default = await http.post("/v1/jobs", json={"service": "svc", "input": {}})
    assert unknown.status_code == 422
    assert unknown.json()["field"] == "model" and "zz" in str(unknown.json())
    assert queue.get(named.json()["id"]).model == "c"
    assert queue.get(default.json()["id"]).model == "b"


# -- the model set on its own ------------------------------------------------------------------


class Footprint:
    """An injected footprint: each loaded checkpoint weighs `sizes[name]` bytes."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.loaded: list[str] = []

    def build(self, model: str | None) -> CheckpointEngine:
        footprint = self

        class Weighed(CheckpointEngine):
            def load(self) -> dict[str, float]:
                footprint.loaded.append(str(self.model))
                return {"load": 0.0}

            def unload(self) -> None:
                footprint.loaded.remove(str(self.model))

        return Weighed(str(model), load_seconds=0)

    def __call__(self) -> int:
        return sum(self.sizes[name] for name in self.loaded)


def test_model_set_unloads_the_least_recently_used_at_max_loaded() -> None:
    weights = Footprint(dict.fromkeys("abc", 1))
    models = ModelSet(weights.build, max_loaded=2, measure=weights)
    models.preload(["a", "b"])
    models.engine("a")  # a is now the most recent
    models.engine("c")
    assert models.held == ("c", "a") and weights.loaded == ["a", "c"]
    assert [s.evicted for s in models.switches] == [(), (), ("b",)]
    phases = models.phases()
    assert phases["loads:a"] == 1 and phases["loads:c"] == 1 and "switch" not in phases


def test_model_set_keeps_within_its_memory_budget() -> None:
    weights = Footprint({"small": 3, "big": 8, "tiny": 1})
    models = ModelSet(weights.build, max_loaded=3, budget_bytes=10, measure=weights)
    models.serving = True
    models.preload(["small", "tiny"])
    models.engine("big")  # 3 + 1 + 8 > 10: the oldest (small) goes after the load
    assert models.held == ("big", "tiny") and weights() == 9
    models.engine("small")  # its size is known now: room is made before loading it (8 + 3 > 10)
    assert models.held == ("small",) and models.switches[-1].evicted == ("tiny", "big")
    assert weights() == 3 and models.phases()["switches"] == 4


# -- real worker processes -------------------------------------------------------------------


def test_a_worker_runs_held_models_jobs_first_and_loads_each_model_once(tmp_path: Path, workers: Any) -> None:
    queue = queue_for(tmp_path)
    jobs = submit_all(queue, "babababa")
    workers(service(tmp_path), models=("a",))
    wait_for(all_done(queue, jobs))
    assert log_lines(tmp_path) == ["load a", "unload a", "load b"]
    results = [queue.get(job.id) for job in jobs]
    assert all(r.result is not None and r.result["model"] == r.model for r in results)
    assert all(r.result is not None and r.result["batch"] <= 4 for r in results)
    a_done = max(r.finished_at or 0 for r in results if r.model == "a")
    b_started = min(r.started_at or 0 for r in results if r.model == "b")
    assert a_done <= b_started  # b's jobs, though older, waited while a (held) had work
    wait_for(lambda: status_of(tmp_path).models == ("b",))
    phases = status_of(tmp_path).phases
    assert (phases["loads:a"], phases["loads:b"], phases["switches"]) == (1, 1, 1)
    assert phases["load:b"] >= LOAD_SECONDS and phases["switch"] >= LOAD_SECONDS


def test_without_affinity_the_worker_switches_whenever_the_next_job_needs_it(
    tmp_path: Path, workers: Any
) -> None:
    queue = queue_for(tmp_path)
    jobs = submit_all(queue, "babababa")
    workers(service(tmp_path, affinity={"prefer_held": False}, max_batch_size=1), models=("a",))
    wait_for(all_done(queue, jobs))
    loads = [line for line in log_lines(tmp_path) if line.startswith("load")]
    assert loads == ["load a", *["load b", "load a"] * 4]  # every job of "babababa" switches


def test_a_cold_models_job_is_served_once_it_waited_max_wait_seconds(tmp_path: Path, workers: Any) -> None:
    queue = queue_for(tmp_path)
    cold = queue.submit(JobSpec("svc", {"n": 0}, model="b"))[0]
    hot = submit_all(queue, "a" * 40, seconds=0.05)  # 2 s of work for the held model
    workers(service(tmp_path, affinity={"max_wait_seconds": 0.5}, max_batch_size=1), models=("a",))
    wait_for(all_done(queue, [cold, *hot]))
    served = queue.get(cold.id).started_at or 0
    after = [job for job in hot if (queue.get(job.id).started_at or 0) > served]
    assert len(after) >= 10  # served while the held model still had work waiting


def test_a_worker_unloads_the_least_recently_used_model_at_max_loaded(tmp_path: Path, workers: Any) -> None:
    queue = queue_for(tmp_path)
    workers(service(tmp_path, affinity={"max_loaded": 2}), models=("a",))
    for model in "bacb":  # held after each: b a | a b | c a (b was least recent) | b c
        job = queue.submit(JobSpec("svc", {}, model=model))[0]
        wait_for(all_done(queue, [job]))
    assert log_lines(tmp_path) == ["load a", "load b", "unload b", "load c", "unload a", "load b"]
    wait_for(lambda: status_of(tmp_path).models == ("b", "c"))
    assert status_of(tmp_path).model == "b"


def test_switch_counts_reach_the_gateways_metrics(tmp_path: Path, workers: Any) -> None:
    queue = queue_for(tmp_path)
    jobs = submit_all(queue, "abab")
    workers(service(tmp_path), models=("a",))
    wait_for(all_done(queue, jobs))
    wait_for(lambda: "loads:b" in status_of(tmp_path).phases)
    status = status_of(tmp_path)
    replica = ReplicaInfo("w1", "svc", ReplicaState.READY, model=status.model, phases=dict(status.phases))
    config = parse_config({"services": [service(tmp_path).model_dump()]})
    registry = CollectorRegistry()
    create_app(
        config,
        Settings(data_dir=tmp_path, api_key=API_KEY),
        queue,
        replicas=FakeReplicas([replica]),
        registry=registry,
    )
    text = generate_latest(registry).decode()
    assert 'swell_model_loads_total{model="a",service="svc"} 1.0' in text
    assert 'swell_model_loads_total{model="b",service="svc"} 1.0' in text
    assert 'swell_model_load_seconds_count{model="b",service="svc"} 1.0' in text
    seconds = [
        line for line in text.splitlines() if line.startswith('swell_model_load_seconds_sum{model="b"')
    ]
    assert seconds and float(seconds[0].split()[-1]) >= LOAD_SECONDS


def test_an_unloaded_models_cycles_are_collected_though_the_heap_was_frozen() -> None:
    import gc
    import weakref

    from swell.worker.models import release_memory

    class Pipeline:
        pass

    pipeline = Pipeline()
    pipeline.self = pipeline  # type: ignore[attr-defined]  # a cycle, as model objects have
    alive = weakref.ref(pipeline)
    gc.freeze()
    try:
        del pipeline
        release_memory()
        assert alive() is None and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
