"""The GPU pool's parts: model-loading tiers, node caches and replicas (mutable, owned by the engine)."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from swell.brain.placement import Phase, Tier
from swell.core.errors import ValidationError


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """The simulated pool. Defaults: a 5 GB checkpoint (an SDXL-class pipeline in fp16), PCIe from
    pinned host memory at 10 GB/s, NVMe at 2 GB/s, an object store at 0.5 GB/s (4 Gbit/s) per node;
    64 GB of host memory and 200 GB of local disk per node set aside for checkpoints."""

    gpu_start_seconds: float = 100.0  # node request to serving, as measured in production
    start_jitter: float = 0.1  # each start takes gpu_start_seconds x (1 +- jitter), seeded
    init_seconds: float = 5.0  # engine initialisation on every load
    model_gb: float = 5.0
    host_gbps: float = 10.0
    disk_gbps: float = 2.0
    remote_gbps: float = 0.5
    host_cache_gb: float = 64.0
    disk_cache_gb: float = 200.0
    max_gpus: int | None = None
    tick_seconds: float = 10.0
    slo_wait: float = 30.0
    attainment_window: float = 300.0
    seed: int = 0
    # the guarded stack live runs (swell.brain.guardrails.guarded), on by default: a sweep's figures
    # are those of the code that runs; `guardrails=False` replays the bare policy (research)
    guardrails: bool = True
    slo_target: float = 0.99
    reactive_policy: str = "concurrency"
    max_changes_per_minute: int = 6
    min_replicas: int = 0
    work_prior: float | None = None  # seconds per unit before any job finished; None: by the trace's kind
    # shared GPUs: `gpu_shares` replicas packed per GPU, each 1/gpu_shares of it; `share_gain` is
    # what all shares busy together get done per second against one whole GPU (the seed: three
    # time-sliced shares of an A10g finished the same work in 11.9 % less time than serially, so
    # 1 / 0.881 = 1.135 and each share runs at 1.135 / 3 = 0.378 of a whole GPU)
    gpu_shares: int = 1
    share_gain: float = 1 / 0.881
    # the batch class: `batch_gpu_hours` of whole-GPU work queued at the start, in chunks of
    # `batch_chunk_seconds`, run only on ready replicas no interactive job needs; a replica running
    # one is handed back to interactive work `handback_seconds` after it is needed (the chunk in
    # flight is lost and queued again)
    batch_gpu_hours: float = 0.0
    batch_chunk_seconds: float = 60.0
    handback_seconds: float = 2.0

    def __post_init__(self) -> None:
        for name in ("gpu_start_seconds", "init_seconds", "model_gb", "start_jitter"):
            if getattr(self, name) < 0:
                raise ValidationError(f"{name} must be >= 0", field=name)
        for name in ("host_gbps", "disk_gbps", "remote_gbps", "tick_seconds", "slo_wait"):
            if getattr(self, name) <= 0:
                raise ValidationError(f"{name} must be > 0", field=name)
        if not 0 < self.slo_target <= 1:
            raise ValidationError("slo_target must be in (0, 1]", field="slo_target")
        if self.max_changes_per_minute < 1 or self.min_replicas < 0:
            raise ValidationError(
                "max_changes_per_minute must be >= 1, min_replicas >= 0", field="guardrails"
            )
        if self.max_gpus is not None and self.max_gpus < 1:
            raise ValidationError("max_gpus must be >= 1", field="max_gpus")
        if self.gpu_shares < 1:
            raise ValidationError("gpu_shares must be >= 1", field="gpu_shares")
        if not 1 <= self.share_gain <= self.gpu_shares and self.gpu_shares > 1:
            raise ValidationError("share_gain must be in [1, gpu_shares]", field="share_gain")
        for name in ("batch_gpu_hours", "handback_seconds"):
            if getattr(self, name) < 0:
                raise ValidationError(f"{name} must be >= 0", field=name)
        if self.batch_chunk_seconds <= 0:
            raise ValidationError("batch_chunk_seconds must be > 0", field="batch_chunk_seconds")

    def load_seconds(self, tier: Tier) -> float:
        gbps = {Tier.HOST: self.host_gbps, Tier.DISK: self.disk_gbps, Tier.REMOTE: self.remote_gbps}[tier]
        return self.init_seconds + self.model_gb / gbps

    def slots(self, gb: float) -> int:
        return 1_000_000 if self.model_gb == 0 else max(1, math.floor(gb / self.model_gb))

    @property
    def share_speed(self) -> float:
        """How fast one replica runs against a whole GPU: 1 unshared, else `share_gain / gpu_shares`
        (the all-shares-busy figure, also used when its neighbours idle: pessimistic for sharing)."""
        return 1.0 if self.gpu_shares == 1 else self.share_gain / self.gpu_shares

    @property
    def start_seconds(self) -> float:
        """What a policy is told it takes to bring up a replica: start plus a load from the store."""
        return self.gpu_start_seconds + self.load_seconds(Tier.REMOTE)


class Cache:
    """An LRU set of checkpoints, each usable from its `ready_at` time (a prefetch in flight)."""

    __slots__ = ("capacity", "items")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: OrderedDict[int, float] = OrderedDict()

    def has(self, model: int, now: float) -> bool:
        at = self.items.get(model)
        return at is not None and at <= now

    def put(self, model: int, ready_at: float) -> None:
        if model in self.items:
            self.items[model] = min(self.items[model], ready_at)
            self.items.move_to_end(model)
            return
        self.items[model] = ready_at
        while len(self.items) > self.capacity:
            self.items.popitem(last=False)


State = Phase  # a simulated replica's life: starting (GPU coming up), loading, ready


class Gpu:
    """One physical GPU on its own node: the replicas sharing it (`shares`, by id) and the node's
    caches, which they share. Its GPU-hours run from `acquired_at` until its last share goes."""

    __slots__ = ("acquired_at", "disk", "host", "id", "shares", "up_at")

    def __init__(self, gid: int, now: float, up_at: float, host: int, disk: int) -> None:
        self.id = gid
        self.acquired_at = now
        self.up_at = up_at
        self.shares: set[int] = set()
        self.host = Cache(host)
        self.disk = Cache(disk)


class Replica:
    """One GPU on its own node (or a share of one, `gpu`), holding at most one checkpoint (`model`,
    an index into the trace's models, None while it holds none). `version` invalidates stale events.
    `batch_work` is the batch chunk it runs (whole-GPU seconds, 0 when none), `batch_seq` invalidates
    the chunk's end event when it is handed back. A `placement.Holder`."""

    __slots__ = (
        "acquired_at",
        "batch_at",
        "batch_seq",
        "batch_work",
        "busy",
        "disk",
        "draining",
        "free_at",
        "gpu",
        "host",
        "id",
        "load_started",
        "model",
        "slots",
        "state",
        "version",
    )

    def __init__(self, rid: int, now: float, slots: int, host: int, disk: int) -> None:
        self.id = rid
        self.acquired_at = now
        self.state = State.STARTING
        self.model: int | None = None
        self.busy = 0
        self.slots = slots
        self.draining = False
        self.version = 0
        self.load_started = 0.0
        self.host = Cache(host)
        self.disk = Cache(disk)
        self.gpu = rid
        self.batch_work = 0.0
        self.batch_at = 0.0
        self.batch_seq = 0
        self.free_at = 0.0  # a batch chunk handed back frees it at this time

    @property
    def phase(self) -> Phase:
        return self.state

    @property
    def free(self) -> bool:
        return self.state is State.READY and self.busy < self.slots and not self.draining

    @property
    def idle(self) -> bool:
        return self.state is State.READY and self.busy == 0

    def tier(self, model: int, now: float) -> Tier:
        if self.host.has(model, now):
            return Tier.HOST
        if self.disk.has(model, now):
            return Tier.DISK
        return Tier.REMOTE
