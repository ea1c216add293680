"""Which replica holds which checkpoint, what to swap, what to keep warm: placement in one place.

Pure (sans-I/O): each function reads views of the pool and the queues and returns `Move`s; the
caller carries them out. The simulator applies them to its model of the pool; the live loop
(`swell.brain.live`) hands the checkpoints to the cluster (`scale(service, n, models=...)`), where
the workers' affinity leases take jobs for what they hold first, and shows every move in the plan.

The rules (those of the simulator of the first version, moved here unchanged):

- **Serve what you hold.** A free replica takes jobs for the checkpoint it holds first (the queue's
  lease with `model=`; the simulator models it in its dispatch): no move.
- **Swap an idle replica** (`swaps`): for each checkpoint with queued jobs that the loads already
  under way do not cover, oldest head job first, an idle replica whose own checkpoint has nothing
  queued loads it. Chosen: the fastest tier first (a node that keeps it in host memory, then on
  disk, then the store), then an empty replica, then one whose checkpoint has the most other
  holders. No idle replica left: stop, the rest wait for one.
- **A fresh replica** (`first_model`) loads the checkpoint with the most queued work not covered by
  loads under way, else the one the plan is shortest of (`Plan.models`), else nothing.
- **Warm host sets** (`warm`): a node brings the plan's warm checkpoints (`Plan.warm`, at most what
  its host memory holds) into host memory, from its disk if there, else from the store; nodes fetch
  when they come up and when the plan's warm set changes.
- **Scale-down** (`release`): cancel the newest starts first, then idle replicas holding the least
  wanted checkpoints, then loads; busy replicas drain (they finish their jobs, then stop). On
  shared GPUs, among equals the replicas of the emptiest GPU go first, so whole GPUs empty out.
- **Shared GPUs** (`pack`): a new replica takes a free share of the fullest GPU that is up (it
  serves after a load, without a GPU start), else of the fullest one starting, else a new GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Protocol


class Tier(IntEnum):
    """Where a checkpoint loads from, fastest first."""

    HOST = 0
    DISK = 1
    REMOTE = 2


class Phase(IntEnum):
    STARTING = 0
    LOADING = 1
    READY = 2


class MoveKind(StrEnum):
    LOAD = "load"  # an empty replica loads a checkpoint
    SWAP = "swap"  # an idle replica replaces its checkpoint with another
    WARM = "warm"  # a node brings checkpoints into its host memory
    EVICT = "evict"  # a replica that runs nothing is released
    DRAIN = "drain"  # a busy replica finishes its jobs, then is released


@dataclass(frozen=True, slots=True)
class Move:
    kind: MoveKind
    replica: Hashable
    model: Hashable | None = None  # what it loads (load, swap)
    models: tuple[Hashable, ...] = ()  # what its node warms (warm)
    tier: Tier | None = None  # where the load comes from (load, swap)

    def to_public(self) -> dict[str, object]:
        body: dict[str, object] = {"kind": self.kind.value, "replica": str(self.replica)}
        if self.model is not None:
            body["model"] = str(self.model)
        if self.models:
            body["models"] = [str(m) for m in self.models]
        if self.tier is not None:
            body["tier"] = self.tier.name.lower()
        return body


class Holder(Protocol):
    """A replica as placement reads it (the simulator's `Replica` is one; live, `LiveHolder`)."""

    @property
    def id(self) -> Hashable: ...
    @property
    def model(self) -> Hashable | None: ...  # the checkpoint it holds or loads
    @property
    def phase(self) -> Phase: ...
    @property
    def busy(self) -> int: ...
    @property
    def draining(self) -> bool: ...
    @property
    def acquired_at(self) -> float: ...

    def tier(self, model: Any, now: float) -> Tier: ...


@dataclass(frozen=True, slots=True)
class Waiting:
    """A checkpoint with queued jobs: how many, their estimated work, the rank of the first one (lower
    runs first; the simulator adds the job's index to break ties) and the replicas loading it now."""

    model: Hashable
    queued: int
    work: float = 0.0
    head: float | tuple[float, int] = 0.0
    loading: int = 0


def idle(r: Holder) -> bool:
    return r.phase is Phase.READY and r.busy == 0


def swaps(
    replicas: Iterable[Holder],
    waiting: Sequence[Waiting],
    holders: Mapping[Any, int],
    *,
    slots: int = 1,
    now: float = 0.0,
) -> list[Move]:
    """Idle replicas to swap to uncovered queued checkpoints (the module docstring says which).

    `waiting` lists the checkpoints with jobs still queued after free holders took theirs;
    `holders` counts the ready replicas holding each checkpoint."""
    pool = list(replicas)
    queued = {w.model for w in waiting}
    lost: dict[Any, int] = {}
    taken: set[Hashable] = set()
    moves: list[Move] = []
    for w in sorted(waiting, key=lambda w: w.head):
        if w.loading * slots >= w.queued:
            continue
        spare = _swap_candidate(pool, w.model, queued, holders, lost, taken, now)
        if spare is None:
            break
        taken.add(spare.id)
        if spare.model is not None:
            lost[spare.model] = lost.get(spare.model, 0) + 1
        kind = MoveKind.LOAD if spare.model is None else MoveKind.SWAP
        moves.append(Move(kind, spare.id, w.model, tier=spare.tier(w.model, now)))
    return moves


def _swap_candidate(
    pool: list[Holder],
    model: Hashable,
    queued: set[Hashable],
    holders: Mapping[Any, int],
    lost: Mapping[Any, int],
    taken: set[Hashable],
    now: float,
) -> Holder | None:
    best: tuple[int, bool, int] | None = None
    chosen: Holder | None = None
    for r in pool:
        if not idle(r) or r.draining or r.id in taken or (r.model is not None and r.model in queued):
            continue
        others = holders.get(r.model, 0) - lost.get(r.model, 0) if r.model is not None else 0
        key = (int(r.tier(model, now)), r.model is not None, -others)
        if best is None or key < best:
            best, chosen = key, r
    return chosen


def first_model(
    waiting: Sequence[Waiting],
    planned: Mapping[Any, int],
    holding: Callable[[Any], int],
    *,
    slots: int = 1,
) -> Hashable | None:
    """The checkpoint a fresh replica loads: the most queued work that loads under way do not cover,
    else the checkpoint the plan is shortest of (`holding(m)`: replicas holding or loading it;
    ties: the lowest key), else None."""
    uncovered = [w for w in waiting if w.queued and w.loading * slots < w.queued]
    if uncovered:
        return max(uncovered, key=lambda w: w.work).model
    short: list[tuple[int, Any]] = [
        (holding(m) - want, m) for m, want in planned.items() if holding(m) < want
    ]
    return min(short)[1] if short else None


def warm(
    replica: Hashable, plan_warm: Sequence[Hashable], capacity: int, cached: Callable[[Any], bool]
) -> Move | None:
    """The plan's warm checkpoints `replica`'s node should keep in host memory (the first
    `capacity`, most wanted first), or None when it holds them all. The node fetches, in order, those
    it lacks when it gets there (a fetch may push an older one out of its memory)."""
    wanted = tuple(plan_warm[:capacity])
    return None if all(cached(m) for m in wanted) else Move(MoveKind.WARM, replica, models=wanted)


def rewarm(previous: Sequence[Hashable], plan_warm: Sequence[Hashable]) -> bool:
    """Whether nodes already up should fetch the warm set again: the plan names a new one."""
    return bool(plan_warm) and tuple(plan_warm) != tuple(previous)


_RELEASE_RANK = {Phase.STARTING: 0, Phase.READY: 1, Phase.LOADING: 2}


def release(
    replicas: Iterable[Holder],
    count: int,
    planned: Mapping[Any, int],
    *,
    packed: Callable[[Any], int] | None = None,
) -> list[Move]:
    """`count` replicas to give up (the module docstring's order): evict what runs nothing, drain
    what is busy. `planned` is the plan's replicas per checkpoint. On shared GPUs, `packed(r)` is
    how many replicas share `r`'s GPU: among equals, the emptiest GPU's go first, so whole GPUs
    empty out and are handed back."""

    def order(r: Holder) -> tuple[bool, int, int, int, float]:
        wanted = planned.get(r.model, 0) if r.model is not None else 0
        return (r.busy > 0, _RELEASE_RANK[r.phase], wanted, packed(r) if packed else 0, -r.acquired_at)

    chosen = sorted((r for r in replicas if not r.draining), key=order)[: max(0, count)]
    return [Move(MoveKind.DRAIN if r.busy else MoveKind.EVICT, r.id) for r in chosen]


def pack(gpus: Iterable[tuple[Hashable, int, bool]], shares: int) -> Hashable | None:
    """Where a new replica goes on shared GPUs: of `(gpu, replicas on it, up)`, one with a free
    share among `shares`, an up one first (it serves after a load, no GPU start), then the fullest
    (best fit: small models pack several to a GPU and whole GPUs stay free to hand back); ties by
    key order. None: take a new GPU (always so for `shares == 1`)."""
    best: tuple[bool, int] | None = None
    chosen: Hashable | None = None
    for gpu, used, up in gpus:
        if used >= shares:
            continue
        key = (not up, -used)
        if best is None or key < best:
            best, chosen = key, gpu
    return chosen


def holdings(planned: Mapping[str, int], waiting: Iterable[str] = ()) -> list[str]:
    """The checkpoints a service's replicas should hold, most wanted first: the plan's, by replicas
    planned (ties by name), then any other with queued jobs. What `Cluster.scale(models=...)` gets."""
    ranked = sorted(planned, key=lambda m: (-planned[m], m))
    return list(dict.fromkeys([*ranked, *sorted(waiting)]))


@dataclass(frozen=True, slots=True)
class LiveHolder:
    """A live replica (a `ReplicaSnapshot`'s fields) as placement reads it. One node cache per
    machine is not known replica by replica: the checkpoint it holds loads from host memory, any
    other from the store."""

    id: Hashable
    model: Hashable | None
    phase: Phase
    busy: int = 0
    draining: bool = False
    acquired_at: float = 0.0

    def tier(self, model: Hashable, now: float) -> Tier:
        return Tier.HOST if model == self.model else Tier.REMOTE


def place(
    replicas: Sequence[Holder],
    waiting: Sequence[Waiting],
    planned: Mapping[Any, int],
    plan_warm: Sequence[Hashable] = (),
    previous_warm: Sequence[Hashable] = (),
    *,
    slots: int = 1,
    now: float = 0.0,
) -> list[Move]:
    """Every move for the pool now: swaps and loads for queued checkpoints, a first checkpoint for
    each empty ready replica (toward the plan), and the warm set when the plan names a new one."""
    holders: dict[Any, int] = {}
    for r in replicas:
        if r.model is not None and r.phase is Phase.READY and not r.draining:
            holders[r.model] = holders.get(r.model, 0) + 1
    moves = swaps(replicas, waiting, holders, slots=slots, now=now)
    moved = {m.replica for m in moves}
    holding = dict(holders)
    for m in moves:
        holding[m.model] = holding.get(m.model, 0) + 1
    for r in replicas:
        if r.id in moved or r.model is not None or r.phase is not Phase.READY or r.draining:
            continue
        model = first_model((), planned, lambda m: holding.get(m, 0), slots=slots)
        if model is None:
            break
        holding[model] = holding.get(model, 0) + 1
        moves.append(Move(MoveKind.LOAD, r.id, model, tier=r.tier(model, now)))
    if rewarm(previous_warm, plan_warm):
        moves += [Move(MoveKind.WARM, r.id, models=tuple(plan_warm)) for r in replicas if not r.draining]
    return moves


__all__ = [
    "Holder",
    "LiveHolder",
    "Move",
    "MoveKind",
    "Phase",
    "Tier",
    "Waiting",
    "first_model",
    "holdings",
    "pack",
    "place",
    "release",
    "rewarm",
    "swaps",
    "warm",
]
