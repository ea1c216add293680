"""The live loop on real queues (memory and a SQLite file) and a fake supervisor recording scale()."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from swell.brain.config import BrainConfig
from swell.brain.live import LiveLoop, job_units
from swell.cluster.fake import FakeCluster
from swell.core.clock import ManualClock
from swell.core.config import Replicas, ServiceConfig, SwellConfig
from swell.core.errors import ConfigError
from swell.core.jobs import Job, JobSpec, JobState, Priority
from swell.core.replicas import ReplicaInfo, ReplicaState
from swell.engines.registry import work_units
from swell.queue.base import QueueBackend, open_queue


@dataclass
class FakeSupervisor:
    """Records scale() calls and reports that many ready replicas (the real one spawns processes)."""

    counts: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)
    models: list[list[str] | None] = field(default_factory=list)
    warms: list[tuple[str, list[str]]] = field(default_factory=list)

    def replicas(self) -> list[ReplicaInfo]:
        return [
            ReplicaInfo(id=f"{name}-{i}", service=name, state=ReplicaState.READY)
            for name, n in self.counts.items()
            for i in range(n)
        ]

    def scale(self, service: str, replicas: int, *, models: Sequence[str] | None = None) -> None:
        self.calls.append((service, replicas))
        self.models.append(None if models is None else list(models))
        self.counts[service] = replicas

    def warm(self, service: str, models: Sequence[str]) -> None:
        self.warms.append((service, list(models)))


Made = tuple[LiveLoop, QueueBackend, FakeSupervisor, ManualClock, CollectorRegistry]
Make = Callable[..., Made]


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    """Builds a loop over a real queue (in memory, or a SQLite file) and a fake supervisor."""
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'swell.db'}"
    queues: list[QueueBackend] = []

    def build(
        mode: str, *, policy: str = "queue-length", low: int = 1, high: int = 3, **brain: object
    ) -> Made:
        clock = ManualClock(1_000.0)
        queue = open_queue(url, clock=clock)
        queues.append(queue)
        service = ServiceConfig.model_validate(
            {"name": "img", "engine": "diffusers", "replicas": Replicas(min=low, max=high)}
        )
        config = SwellConfig(services=[service], brain=BrainConfig(mode=mode, policy=policy, **brain))  # type: ignore[arg-type]
        supervisor = FakeSupervisor({"img": low})
        registry = CollectorRegistry()
        return (
            LiveLoop(config, queue, supervisor, clock=clock, registry=registry),
            queue,
            supervisor,
            clock,
            registry,
        )

    yield build
    for queue in queues:
        queue.close()


def submit(queue: QueueBackend, n: int, **spec: object) -> None:
    for _ in range(n):
        queue.submit(JobSpec(service="img", input={"prompt": "x"}, **spec))  # type: ignore[arg-type]


def test_dry_run_plans_and_shows_but_never_scales(make: Make) -> None:
    loop, queue, supervisor, clock, registry = make("dry-run")
    submit(queue, 10)
    clock.advance(10)
    loop.tick()
    assert supervisor.calls == []
    plan = loop.plan_view()["img"]["plan"]
    assert plan["replicas"] == 3  # 10 queued jobs, clamped to replicas.max
    assert plan["mode"] == "dry-run" and plan["policy"] == "queue-length" and plan["at"] == clock.now()
    assert registry.get_sample_value("swell_brain_planned_replicas", {"service": "img"}) == 3
    assert registry.get_sample_value("swell_brain_actual_replicas", {"service": "img"}) == 1


def test_enforce_makes_the_supervisor_follow_within_bounds(make: Make) -> None:
    loop, queue, supervisor, clock, _ = make("enforce", options={"cooldown": 0})
    submit(queue, 10)
    clock.advance(10)
    loop.tick()
    assert supervisor.calls == [("img", 3)]
    for job in queue.lease("img", "w1", max_jobs=10):
        queue.complete(job.id, "w1", {"ok": True})
    clock.advance(10)
    loop.tick()
    assert supervisor.calls[-1] == ("img", 1)  # idle: back to replicas.min, never below


def test_changes_per_minute_are_limited(make: Make) -> None:
    loop, queue, supervisor, clock, _ = make(
        "enforce", high=10, max_changes_per_minute=1, options={"cooldown": 0}
    )
    submit(queue, 2)
    clock.advance(10)
    loop.tick()
    submit(queue, 5)
    clock.advance(10)
    loop.tick()
    assert supervisor.calls == [("img", 2)]
    clock.advance(60)
    loop.tick()
    assert supervisor.calls == [("img", 2), ("img", 7)]


def test_falls_back_to_reactive_while_the_slo_is_breached(make: Make) -> None:
    loop, queue, supervisor, clock, registry = make(
        "enforce", policy="static", high=10, reactive_policy="queue-length", slo_wait_seconds=5
    )
    submit(queue, 6)
    clock.advance(60)  # every job waits 60 s > 5 s: attainment 0
    loop.tick()
    assert supervisor.calls == [("img", 6)]
    assert "SLO" in loop.plan_view()["img"]["plan"]["reason"]
    assert registry.get_sample_value("swell_brain_slo_attainment", {"service": "img"}) == 0.0


def test_learns_from_finished_jobs_once(make: Make) -> None:
    loop, queue, _, clock, _ = make("dry-run", policy="swell")
    submit(queue, 3, model="m1", priority=Priority.HIGH)
    clock.advance(2)
    jobs = queue.lease("img", "w1", max_jobs=3)
    clock.advance(20)
    for job in jobs:
        queue.complete(job.id, "w1", {})
    loop.tick()
    loop.tick()
    brain = loop.services["img"]
    assert brain.rate.seconds == pytest.approx(60.0)  # three 20 s jobs, counted once
    assert brain.observer.attainment(clock.now()) == 1.0  # each started 2 s after it was queued
    assert "swell" in repr(loop)


def test_job_units_are_what_the_engines_spec_counts() -> None:
    def job(data: dict[str, object]) -> Job:
        return Job.create(JobSpec(service="s", input=data), 0.0)

    image = job({"prompt": "x", "steps": 30, "images": 4})
    assert job_units("diffusers", image) == work_units("diffusers", image.input) == 120
    assert job_units("transformers", job({"prompt": "x", "max_tokens": 100})) >= 100
    assert job_units("callable", job({"steps": 30, "max_tokens": 100})) == 1, "no guessing from keys"
    assert JobState.QUEUED.value == "queued"


@pytest.mark.parametrize(
    ("brain", "key"),
    [
        ({"policy": "clairvoyant"}, "brain.policy"),
        ({"policy": "nope"}, "brain.policy"),
        ({"reactive_policy": "static", "reactive_options": {"bogus": 1}}, "brain.reactive_policy"),
    ],
)
def test_bad_policies_are_configuration_errors(brain: dict[str, object], key: str) -> None:
    config = SwellConfig(brain=BrainConfig(**brain))  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as err:
        LiveLoop(
            config,
            open_queue("memory://"),
            FakeSupervisor(),
            clock=ManualClock(),
            registry=CollectorRegistry(),
        )
    assert err.value.key == key


def test_swell_knobs_from_yaml_run_a_tick(make: Make) -> None:
    loop, queue, supervisor, clock, _ = make(
        "enforce", policy="swell", options={"warm_models": 2, "keep_alive": 600, "seasonal": 0}
    )
    for _ in range(4):  # 30 steps each at the prior 1 s per step: 120 GPU-s to drain within 30 s
        queue.submit(JobSpec(service="img", input={"prompt": "x", "steps": 30}, model="m1"))
    clock.advance(10)
    loop.tick()
    plan = loop.plan_view()["img"]["plan"]
    assert plan["replicas"] == 3 and plan["models"] == {"m1": 3}  # 4 wanted, clamped to max
    assert supervisor.calls == [("img", 3)]


@pytest.mark.parametrize("mode", ["enforce", "dry-run"])
def test_placement_moves_are_carried_out_in_enforce_and_only_shown_in_dry_run(mode: str) -> None:
    """On the shipped fake cluster: the checkpoints the plan wants reach `scale(models=...)`, and the
    cluster places them on the node that holds them warm; in dry-run the moves are only shown."""
    service = ServiceConfig.model_validate(
        {"name": "img", "engine": "diffusers", "replicas": Replicas(min=1, max=4)}
    )
    brain = BrainConfig.model_validate({"mode": mode, "policy": "swell", "options": {"seasonal": 0}})
    config = SwellConfig(services=[service], brain=brain)
    clock = ManualClock(1_000.0)
    cluster = FakeCluster(config, clock=clock, nodes=2, warm={"node-1": ["m2"]})
    cluster.start()
    queue = open_queue("memory://", clock=clock)
    loop = LiveLoop(config, queue, cluster, clock=clock, registry=CollectorRegistry())
    for model in ("m2", "m2", "m2", "m1"):  # m2's jobs wait longest: its queue goes first
        queue.submit(JobSpec(service="img", input={"prompt": "x", "steps": 30}, model=model))
        clock.advance(1)
    clock.advance(10)
    loop.tick()
    plan = loop.plan_view()["img"]["plan"]
    assert plan["holdings"][0] == "m2" and set(plan["holdings"]) == {"m1", "m2"}
    assert {"kind": "load", "replica": "img-1", "model": "m2", "tier": "remote"} in plan["moves"]
    if mode == "enforce":
        assert cluster.desired("img") == plan["replicas"] > 1
        assert cluster.statistics().started_warm >= 1  # new replicas went to the node holding m2
    else:
        assert cluster.desired("img") == 1 and cluster.statistics().started_warm == 0
    queue.close()


@pytest.mark.parametrize("mode", ["enforce", "dry-run"])
def test_the_warm_set_is_carried_out_in_enforce_once_per_change_and_only_shown_in_dry_run(
    mode: str,
) -> None:
    """The shipped fake cluster records `warm()`: in enforce the plan's warm set reaches it when the
    plan names a new one (a tick with the same set does not call again); in dry-run it is only shown."""
    service = ServiceConfig.model_validate(
        {"name": "img", "engine": "diffusers", "replicas": Replicas(min=1, max=4)}
    )
    brain = BrainConfig.model_validate(
        {"mode": mode, "policy": "swell", "options": {"seasonal": 0, "warm_models": 1}}
    )
    config = SwellConfig(services=[service], brain=brain)
    clock = ManualClock(1_000.0)
    cluster = FakeCluster(config, clock=clock)
    cluster.start()
    queue = open_queue("memory://", clock=clock)
    loop = LiveLoop(config, queue, cluster, clock=clock, registry=CollectorRegistry())
    for model in ("m2", "m2", "m2", "m1"):
        queue.submit(JobSpec(service="img", input={"prompt": "x", "steps": 30}, model=model))
    clock.advance(10)
    loop.tick()
    warm = loop.plan_view()["img"]["plan"]["warm"]
    assert warm == ["m2"]  # the busiest checkpoint, `warm_models` of them
    clock.advance(10)
    loop.tick()
    assert loop.plan_view()["img"]["plan"]["warm"] == warm
    assert cluster.warm_calls == ([("img", ("m2",))] if mode == "enforce" else [])
    queue.close()


def test_a_backlog_found_at_start_is_load_not_arrivals(make: Make) -> None:
    _, queue, supervisor, clock, _ = make("dry-run", policy="queue-length")
    submit(queue, 4, model="m1")
    jobs = queue.lease("img", "w1", max_jobs=1)
    config = SwellConfig(
        services=[ServiceConfig.model_validate({"name": "img", "engine": "diffusers"})],
        brain=BrainConfig.model_validate({"mode": "dry-run", "policy": "queue-length"}),
    )
    loop = LiveLoop(config, queue, supervisor, clock=clock, registry=CollectorRegistry())
    ctx = loop.services["img"].observer.context(clock.now())
    assert (ctx.queued, ctx.running, ctx.arrived) == (3, 1, 0)
    queue.complete(jobs[0].id, "w1", {})
    loop.observe()
    assert loop.services["img"].observer.running == 0
