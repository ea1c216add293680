"""The brain inside `swell up`: on each tick, observe, plan, guard, place, and carry the moves out.

The loop is I/O at the edge of the pure parts the simulator runs too:

1. **Observe** (`swell.brain.observe.Observer`, one per service): what happened since the previous
   tick is read through the queue's event cursor (`events_since`, the one the gateway's metrics read
   too: a sequence number, so each transition is learned from once) and fed as observations:
   queued (an arrival, or a requeue of a job that ran), leased (a start), final (a finish with its
   GPU-seconds). Jobs already queued or running when the loop starts are seeded from the queue. The
   cluster's `replicas()` is the pool's snapshot.
2. **Policy inside the guardrails** (`swell.brain.guardrails.guarded`): the configured policy, the
   fall-back to the reactive policy while recent SLO attainment is below target, a limit on changes
   per minute, each service's `replicas.min..max`.
3. **Place** (`swell.brain.placement.place`): swaps for queued checkpoints no ready replica
   holds, a first checkpoint for empty replicas, the warm set when the plan names a new one.
4. **Act**: in `enforce`, `cluster.scale(service, n, models=...)` with the checkpoints its replicas
   should hold, most wanted first (`placement.holdings`); the workers' affinity leases take jobs for
   the checkpoints they hold first and load another when it is queued and they are free, which is
   the swap carried out. When the plan names a new warm set (`placement.rewarm`, the simulator's
   rule), `cluster.warm(service, plan.warm)`: the nodes fetch those checkpoints' datasets into their
   cache in the background, ahead of a replica needing them. In `dry-run` the plan, its moves and
   its warm set are logged and shown (`plan_view`, GET /v1/services, /metrics), and nothing is
   changed.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge

from swell.brain import placement
from swell.brain.context import Context, Plan, Policy
from swell.brain.guardrails import guarded
from swell.brain.observe import Observer, ReplicaSnapshot, work_prior
from swell.brain.placement import LiveHolder, Move, Phase, Waiting
from swell.brain.policies import make_policy
from swell.core.clock import Clock
from swell.core.config import ServiceConfig, SwellConfig
from swell.core.errors import ConfigError, ValidationError
from swell.core.jobs import Job, JobEvent, JobState
from swell.core.replicas import ReplicaInfo, ReplicaState
from swell.engines.registry import work_units
from swell.queue.base import QueueBackend

log = logging.getLogger("swell.brain")

SCAN_LIMIT = 1000  # jobs read per state when the loop starts, and state events per tick
FINAL = frozenset(state.value for state in JobState if state.final)
PHASES = {
    ReplicaState.STARTING: Phase.STARTING,
    ReplicaState.LOADING: Phase.LOADING,
    ReplicaState.READY: Phase.READY,
    ReplicaState.BUSY: Phase.READY,
    ReplicaState.DRAINING: Phase.READY,
}


class Supervisor(Protocol):
    """What the loop needs of a `swell.cluster.base.Cluster`."""

    def replicas(self) -> list[ReplicaInfo]: ...

    def scale(self, service: str, replicas: int, *, models: Sequence[str] | None = None) -> None: ...

    def warm(self, service: str, models: Sequence[str]) -> None: ...


def job_units(engine: str, job: Job) -> float:
    """The work a job carries, as its engine's spec counts it (steps x images x area for images,
    tokens for text; one for an engine that knows nothing finer): what work rates are learned on."""
    return work_units(engine, job.input)


@dataclass
class ServiceBrain:
    """One service's guarded policy, its state, its observer, and what the loop last decided."""

    config: ServiceConfig
    policy: Policy
    state: Any
    observer: Observer
    plan: Plan | None = None
    at: float = 0.0
    moves: tuple[Move, ...] = ()
    holdings: tuple[str, ...] = ()  # the checkpoints the replicas should hold, most wanted first
    warm: tuple[str, ...] = ()  # the warm set last placed
    told: tuple[str, ...] = ()  # the checkpoints the last scale() in enforce named
    warmed: tuple[str, ...] = ()  # the warm set the last warm() in enforce named

    @property
    def rate(self) -> Any:
        return self.observer.rate


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
        self._cursor = queue.event_cursor()  # what happened before is seeded, not replayed
        self._seed()
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
        observer = Observer(
            tick_seconds=b.tick_seconds,
            start_seconds=b.start_seconds,
            slo_wait=b.slo_wait_seconds,
            slots=service.max_batch_size,
            window=b.fallback_window_seconds,
            prior=work_prior(service.engine),
        )
        return ServiceBrain(service, policy, policy.initial(), observer)

    def __repr__(self) -> str:
        services = list(self.services)
        return f"LiveLoop(mode={self.brain.mode!r}, policy={self.brain.policy!r}, services={services})"

    # -- observe ----------------------------------------------------------------------------------

    def _seed(self) -> None:
        """The jobs queued or running when the loop starts, as arrivals (and starts)."""
        for name, sb in self.services.items():
            for state in (JobState.QUEUED, JobState.LEASED):
                for job in self.queue.jobs(service=name, state=state, limit=SCAN_LIMIT):
                    self._arrive(sb, job)
                    if state is JobState.LEASED:
                        sb.observer.start(job.id, job.started_at or job.created_at)
            sb.observer.clear_arrivals()  # the backlog is load, not a burst of arrivals

    def _arrive(self, sb: ServiceBrain, job: Job) -> None:
        sb.observer.arrive(job.id, job.created_at, job_units(sb.config.engine, job), job.model or "")

    def observe(self) -> None:
        """Feed every service's observer what happened since the previous call (at most SCAN_LIMIT
        state events; the cursor resumes after the last one read)."""
        events = self.queue.events_since(self._cursor, kinds=("state",), limit=SCAN_LIMIT)
        if not events:
            return
        self._cursor = events[-1].seq
        mine = [e for e in events if e.data.get("service") in self.services]
        unknown = list(dict.fromkeys(e.job_id for e in mine if not self._knows(e)))
        jobs = {job.id: job for job in self.queue.get_many(unknown)} if unknown else {}
        for event in mine:
            self._apply(self.services[event.data["service"]], event, jobs)

    def _knows(self, event: JobEvent) -> bool:
        return event.job_id in self.services[event.data["service"]].observer

    def _apply(self, sb: ServiceBrain, event: JobEvent, jobs: dict[str, Job]) -> None:
        obs, state, job_id = sb.observer, event.data.get("state"), event.job_id
        if job_id not in obs:
            job = jobs.get(job_id)
            if job is None or state in FINAL:
                return  # gone, or it ended before we saw it queued: nothing to learn from its wait
            self._arrive(sb, job)
            if state == JobState.QUEUED.value:
                return
        if state == JobState.QUEUED.value:
            obs.requeue(job_id, event.at)
        elif state == JobState.LEASED.value:
            obs.start(job_id, event.at)
        elif state in FINAL:
            obs.finish(job_id, event.at, _gpu_seconds(event))

    # -- the tick ---------------------------------------------------------------------------------

    def tick(self) -> None:
        now = self.clock.now()
        self.observe()
        replicas = self.supervisor.replicas()
        for name, sb in self.services.items():
            mine = [r for r in replicas if r.service == name]
            sb.observer.replicas(_snapshot(r) for r in mine)
            ctx = sb.observer.context(now)
            plan, sb.state = sb.policy.decide(ctx, sb.state)
            self._place(sb, plan, ctx, mine, now)
            self._act(sb, plan, ctx, now)

    def _place(
        self, sb: ServiceBrain, plan: Plan, ctx: Context, replicas: list[ReplicaInfo], now: float
    ) -> None:
        holders = [_holder(r) for r in replicas if r.state in PHASES]
        heads = sb.observer.heads()
        waiting = [
            Waiting(m, load.queued, load.queued_work, heads.get(m, now))
            for m, load in ctx.models.items()
            if load.queued
        ]
        sb.moves = tuple(
            placement.place(holders, waiting, plan.models, plan.warm, sb.warm, slots=ctx.slots, now=now)
        )
        sb.warm = plan.warm
        sb.holdings = tuple(placement.holdings(plan.models, (w.model for w in waiting)))  # type: ignore[misc]

    def _act(self, sb: ServiceBrain, plan: Plan, ctx: Context, now: float) -> None:
        name = sb.config.name
        changed = sb.plan is None or sb.plan.replicas != plan.replicas or sb.plan.models != plan.models
        sb.plan, sb.at = plan, now
        self._planned.labels(name).set(plan.replicas)
        self._actual.labels(name).set(ctx.replicas)
        if ctx.attainment is not None:
            self._slo.labels(name).set(ctx.attainment)
        moved = bool(sb.holdings) and sb.holdings != sb.told
        if self.brain.mode == "enforce" and (plan.replicas != ctx.replicas or moved):
            log.info(
                "scaling %s from %d to %d (models %s): %s",
                name,
                ctx.replicas,
                plan.replicas,
                list(sb.holdings) or "as configured",
                plan.reason,
            )
            self.supervisor.scale(name, plan.replicas, models=list(sb.holdings) or None)
            sb.told = sb.holdings
        elif changed:
            log.info(
                "plan for %s (%s): %d replicas, %d running, models %s: %s",
                name,
                self.brain.mode,
                plan.replicas,
                ctx.replicas,
                dict(plan.models),
                plan.reason,
            )
        if self.brain.mode == "enforce" and placement.rewarm(sb.warmed, plan.warm):
            log.info("warming %s: %s", name, list(plan.warm))
            self.supervisor.warm(name, list(plan.warm))
            sb.warmed = plan.warm

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
            if sb.plan.gpu_share != 1:
                body["gpu_share"], body["gpus"] = sb.plan.gpu_share, sb.plan.gpus
            if sb.plan.models:
                body["models"] = dict(sb.plan.models)
            if sb.plan.warm:
                body["warm"] = list(sb.plan.warm)
            if sb.holdings:
                body["holdings"] = list(sb.holdings)
            body["moves"] = [move.to_public() for move in sb.moves]
            view[name] = {"plan": body}
        return view


def _gpu_seconds(event: JobEvent) -> float | None:
    """A succeeded job's run time (what the work rate learns from); None for any other end."""
    data = event.data
    started, finished = data.get("started_at"), data.get("finished_at")
    if data.get("state") != JobState.SUCCEEDED.value or started is None or finished is None:
        return None
    return float(finished) - float(started)


def _snapshot(r: ReplicaInfo) -> ReplicaSnapshot:
    models = r.models or ((r.model,) if r.model else ())
    loading = r.started_at if r.state in (ReplicaState.STARTING, ReplicaState.LOADING) else None
    return ReplicaSnapshot(r.id, r.service, models, r.state, loading, int(r.state is ReplicaState.BUSY))


def _holder(r: ReplicaInfo) -> LiveHolder:
    model: Hashable | None = r.model or None
    return LiveHolder(
        r.id,
        model,
        PHASES[r.state],
        busy=int(r.state is ReplicaState.BUSY),
        draining=r.state is ReplicaState.DRAINING,
        acquired_at=r.started_at or 0.0,
    )


def _policy(name: str, options: dict[str, float], key: str) -> Policy:
    """A live policy by name; the simulator-only reference and bad names are configuration errors."""
    if name == "clairvoyant":
        raise ConfigError("clairvoyant knows future arrivals: it runs only in the simulator", key=key)
    try:
        return make_policy(name, **options)
    except ValidationError as exc:
        raise ConfigError(exc.message, key=key) from None


__all__ = ["LiveLoop", "ServiceBrain", "Supervisor", "job_units"]
