"""The brain inside `swell up`: on each tick, read the serving path, plan replicas per service.

The loop builds the same `Context` the simulator builds, from what the queue and the supervisor
report (finished jobs through the queue's event cursor, `events_since`, the one the gateway's
metrics read too: a sequence number, so a job that finished is learned from once), and runs the
configured policy wrapped in the guardrails: the fall-back to the reactive policy while recent SLO
attainment is below target, a limit on changes per minute, and each service's `replicas.min..max`.
In `dry-run` the plan is logged and shown (`plan_view`, /metrics); in `enforce` the supervisor is
told to follow it.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge

from swell.brain.context import Context, ModelLoad, Plan, Policy
from swell.brain.forecast import WorkRate
from swell.brain.guardrails import guarded
from swell.brain.policies import make_policy
from swell.core.clock import Clock
from swell.core.config import ServiceConfig, SwellConfig
from swell.core.errors import ConfigError, ValidationError
from swell.core.jobs import Job, JobState
from swell.core.replicas import ReplicaInfo, ReplicaState
from swell.engines.registry import work_units
from swell.queue.base import QueueBackend

log = logging.getLogger("swell.brain")

LIVE = frozenset({ReplicaState.STARTING, ReplicaState.LOADING, ReplicaState.READY, ReplicaState.BUSY})
SERVING = frozenset({ReplicaState.READY, ReplicaState.BUSY})
SCAN_LIMIT = 1000  # jobs read per state per tick, and state events per tick
FINAL = frozenset(state.value for state in JobState if state.final)


class Supervisor(Protocol):
    def replicas(self) -> list[ReplicaInfo]: ...

    def scale(self, service: str, replicas: int) -> None: ...


def job_units(engine: str, job: Job) -> float:
    """The work a job carries, as its engine's spec counts it (steps x images x area for images,
    tokens for text; one for an engine that knows nothing finer): what work rates are learned on."""
    return work_units(engine, job.input)


@dataclass
class ServiceBrain:
    """One service's policy, its state, and what the loop has learned about its jobs."""

    config: ServiceConfig
    policy: Policy
    state: Any
    rate: WorkRate = field(default_factory=lambda: WorkRate(prior=1.0, prior_units=5.0))
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    plan: Plan | None = None
    at: float = 0.0


class LiveLoop:
    def __init__(
        self,
        config: SwellConfig,
        queue: QueueBackend,
        supervisor: Supervisor,
        *,
        clock: Clock,
        registry: CollectorRegistry,
    ) -> None:
        self.brain = config.brain
        self.queue, self.supervisor, self.clock = queue, supervisor, clock
        b = self.brain
        self._policy = _policy(b.policy, b.options, "brain.policy")
        self._reactive = _policy(b.reactive_policy, b.reactive_options, "brain.reactive_policy")
        self.services = {s.name: self._service_brain(s) for s in config.services}
        self._cursor = queue.event_cursor()  # what finished before the loop started is not news
        self._last_tick: float | None = None
        labels = ["service"]
        self._planned = Gauge(
            "swell_brain_planned_replicas", "Replicas the brain plans", labels, registry=registry
        )
        self._actual = Gauge(
            "swell_brain_actual_replicas", "Replicas running or starting", labels, registry=registry
        )
        self._slo = Gauge(
            "swell_brain_slo_attainment",
            "Share of recent jobs within the SLO wait",
            labels,
            registry=registry,
        )

    def _service_brain(self, service: ServiceConfig) -> ServiceBrain:
        b = self.brain
        policy = guarded(
            self._policy,
            self._reactive,
            target=b.slo_target,
            max_changes=b.max_changes_per_minute,
            low=service.replicas.min,
            high=service.replicas.max,
        )
        return ServiceBrain(service, policy, policy.initial())

    def __repr__(self) -> str:
        services = list(self.services)
        return f"LiveLoop(mode={self.brain.mode!r}, policy={self.brain.policy!r}, services={services})"

    # -- the tick ---------------------------------------------------------------------------------

    def tick(self) -> None:
        now = self.clock.now()
        last = self._last_tick if self._last_tick is not None else now - self.brain.tick_seconds
        finished = self._finished()
        replicas = self.supervisor.replicas()
        for name, sb in self.services.items():
            done = [j for j in finished if j.service == name]
            self._learn(sb, done, now)
            ctx = self._context(sb, now, last, done, [r for r in replicas if r.service == name])
            plan, sb.state = sb.policy.decide(ctx, sb.state)
            self._act(sb, plan, ctx, now)
        self._last_tick = now

    def _finished(self) -> list[Job]:
        """Jobs that reached a final state since the previous tick, each once, as they are now
        (one re-driven meanwhile is left out: it is queued again). At most SCAN_LIMIT state events
        a tick; the cursor resumes after the last one read."""
        events = self.queue.events_since(self._cursor, kinds=("state",), limit=SCAN_LIMIT)
        if events:
            self._cursor = events[-1].seq
        ids = list(dict.fromkeys(e.job_id for e in events if e.data.get("state") in FINAL))
        return [job for job in self.queue.get_many(ids) if job.state.final] if ids else []

    def _learn(self, sb: ServiceBrain, done: list[Job], now: float) -> None:
        for job in done:
            if job.state is JobState.SUCCEEDED and job.started_at is not None and job.finished_at is not None:
                sb.rate = sb.rate.observe(job.finished_at - job.started_at, job_units(sb.config.engine, job))
            if job.started_at is not None:
                sb.outcomes.append((now, job.started_at - job.created_at <= self.brain.slo_wait_seconds))
        while sb.outcomes and sb.outcomes[0][0] < now - self.brain.fallback_window_seconds:
            sb.outcomes.popleft()

    def _context(
        self, sb: ServiceBrain, now: float, last: float, done: list[Job], replicas: list[ReplicaInfo]
    ) -> Context:
        name = sb.config.name
        queued = self.queue.jobs(service=name, state=JobState.QUEUED, limit=SCAN_LIMIT)
        leased = self.queue.jobs(service=name, state=JobState.LEASED, limit=SCAN_LIMIT)
        depth = self.queue.depth().get(name, {})
        # a job may move between the reads (queued, then leased, then done): count it once
        seen = {j.id: j for j in (*done, *queued, *leased)}
        arrived = [j for j in seen.values() if j.created_at > last]
        engine = sb.config.engine
        est = {j.id: sb.rate.estimate(job_units(engine, j)) for j in (*queued, *leased, *arrived)}
        late = sum(1 for j in queued if now - j.created_at > self.brain.slo_wait_seconds)
        outcomes = [ok for _, ok in sb.outcomes]
        total = len(outcomes) + late
        return Context(
            now=now,
            tick_seconds=self.brain.tick_seconds,
            start_seconds=self.brain.start_seconds,
            slo_wait=self.brain.slo_wait_seconds,
            arrived=len(arrived),
            arrived_work=sum(est[j.id] for j in arrived),
            queued=depth.get(JobState.QUEUED.value, len(queued)),
            queued_work=sum(est[j.id] for j in queued),
            running=depth.get(JobState.LEASED.value, len(leased)),
            running_until=tuple((j.started_at or now) + est[j.id] for j in leased),
            replicas=sum(1 for r in replicas if r.state in LIVE),
            ready=sum(1 for r in replicas if r.state in SERVING),
            models=_models(queued, leased, arrived, replicas, est),
            slots=sb.config.max_batch_size,
            attainment=sum(outcomes) / total if total else None,
        )

    def _act(self, sb: ServiceBrain, plan: Plan, ctx: Context, now: float) -> None:
        name = sb.config.name
        changed = sb.plan is None or sb.plan.replicas != plan.replicas
        sb.plan, sb.at = plan, now
        self._planned.labels(name).set(plan.replicas)
        self._actual.labels(name).set(ctx.replicas)
        if ctx.attainment is not None:
            self._slo.labels(name).set(ctx.attainment)
        if self.brain.mode == "enforce" and plan.replicas != ctx.replicas:
            log.info("scaling %s from %d to %d: %s", name, ctx.replicas, plan.replicas, plan.reason)
            self.supervisor.scale(name, plan.replicas)
        elif changed:
            log.info(
                "plan for %s (%s): %d replicas, %d running: %s",
                name,
                self.brain.mode,
                plan.replicas,
                ctx.replicas,
                plan.reason,
            )

    # -- views ------------------------------------------------------------------------------------

    def plan_view(self) -> dict[str, dict[str, Any]]:
        """{service: {"plan": {...}}}, merged by the gateway into GET /v1/services."""
        view: dict[str, dict[str, Any]] = {}
        for name, sb in self.services.items():
            if sb.plan is None:
                continue
            body: dict[str, Any] = {
                "replicas": sb.plan.replicas,
                "policy": self.brain.policy,
                "mode": self.brain.mode,
                "reason": sb.plan.reason,
                "at": sb.at,
            }
            if sb.plan.models:
                body["models"] = dict(sb.plan.models)
            view[name] = {"plan": body}
        return view


def _policy(name: str, options: dict[str, float], key: str) -> Policy:
    """A live policy by name; the simulator-only reference and bad names are configuration errors."""
    if name == "clairvoyant":
        raise ConfigError("clairvoyant knows future arrivals: it runs only in the simulator", key=key)
    try:
        return make_policy(name, **options)
    except ValidationError as exc:
        raise ConfigError(exc.message, key=key) from None


def _models(
    queued: list[Job],
    leased: list[Job],
    arrived: list[Job],
    replicas: list[ReplicaInfo],
    est: dict[str, float],
) -> dict[str, ModelLoad]:
    names = {j.model for j in (*queued, *leased, *arrived) if j.model} | {
        r.model for r in replicas if r.model
    }
    out = {}
    for m in sorted(n for n in names if n):
        q = [j for j in queued if j.model == m]
        out[m] = ModelLoad(
            queued=len(q),
            queued_work=sum(est[j.id] for j in q),
            running=sum(1 for j in leased if j.model == m),
            replicas=sum(1 for r in replicas if r.model == m and r.state in LIVE),
            arrived_work=sum(est[j.id] for j in arrived if j.model == m),
        )
    return out
