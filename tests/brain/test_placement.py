"""Placement's rules on hand-made pools: swaps, a fresh replica's checkpoint, warm sets, scale-down."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from swell.brain.placement import (
    LiveHolder,
    Move,
    MoveKind,
    Phase,
    Tier,
    Waiting,
    first_model,
    holdings,
    place,
    release,
    rewarm,
    swaps,
    warm,
)


@dataclass(frozen=True)
class R:
    """A replica with a node cache: `host` loads at host speed, `disk` from disk."""

    id: str
    model: str | None = None
    phase: Phase = Phase.READY
    busy: int = 0
    draining: bool = False
    acquired_at: float = 0.0
    host: frozenset[str] = frozenset()
    disk: frozenset[str] = frozenset()

    def tier(self, model: Hashable, now: float) -> Tier:
        return Tier.HOST if model in self.host else Tier.DISK if model in self.disk else Tier.REMOTE


def test_an_idle_replica_swaps_to_an_uncovered_queue_fastest_tier_first() -> None:
    pool = [R("a", "m1"), R("b", "m2", disk=frozenset({"m3"})), R("c", "m4", host=frozenset({"m3"}))]
    moves = swaps(pool, [Waiting("m3", 2, head=1.0)], {"m1": 1, "m2": 1, "m4": 1})
    assert moves == [Move(MoveKind.SWAP, "c", "m3", tier=Tier.HOST)]


def test_an_empty_replica_goes_before_one_holding_a_checkpoint_then_the_most_held() -> None:
    pool = [R("a", "m1"), R("b", "m2"), R("c")]
    assert swaps(pool, [Waiting("m3", 1)], {"m1": 1, "m2": 1})[0] == Move(
        MoveKind.LOAD, "c", "m3", tier=Tier.REMOTE
    )
    moves = swaps(pool[:2], [Waiting("m3", 1)], {"m1": 1, "m2": 3})
    assert [m.replica for m in moves] == ["b"]  # m2 keeps two other holders


def test_swaps_skip_busy_draining_and_needed_replicas_and_covered_queues() -> None:
    pool = [R("busy", "m1", busy=1), R("gone", "m2", draining=True), R("needed", "m3"), R("free", "m4")]
    waiting = [Waiting("m3", 1, head=2.0), Waiting("m5", 1, head=1.0), Waiting("m6", 1, head=3.0, loading=1)]
    moves = swaps(pool, waiting, {})
    assert [(m.replica, m.model) for m in moves] == [("free", "m5")]  # m3 is queued itself; m6 loads


def test_oldest_queue_first_and_stop_when_no_replica_is_idle() -> None:
    pool = [R("a", "m1")]
    moves = swaps(pool, [Waiting("late", 1, head=9.0), Waiting("early", 1, head=1.0)], {"m1": 1})
    assert [m.model for m in moves] == ["early"]


def test_a_fresh_replica_loads_the_most_queued_work_then_what_the_plan_lacks() -> None:
    waiting = [Waiting("m1", 1, work=5.0), Waiting("m2", 3, work=9.0), Waiting("m3", 1, work=50.0, loading=1)]
    assert first_model(waiting, {}, lambda m: 0) == "m2"
    held: dict[Hashable, int] = {"m1": 2, "m2": 0}
    assert first_model((), {"m1": 2, "m2": 1, "m3": 1}, lambda m: held.get(m, 0)) == "m2"  # ties: lowest
    assert first_model((), {"m1": 2}, lambda m: held.get(m, 0)) is None


def test_warm_sets_and_when_to_fetch_them() -> None:
    assert warm("r", ["m1", "m2", "m3"], 2, lambda m: m == "m1") == Move(
        MoveKind.WARM, "r", models=("m1", "m2")
    )
    assert warm("r", ["m1"], 4, lambda m: True) is None
    assert rewarm((), ("m1",)) and not rewarm(("m1",), ("m1",)) and not rewarm(("m1",), ())


def test_scale_down_cancels_starts_then_idle_least_wanted_then_drains() -> None:
    pool = [
        R("busy", "m1", busy=1, acquired_at=0.0),
        R("wanted", "m1", acquired_at=1.0),
        R("unwanted", "m2", acquired_at=2.0),
        R("loading", "m3", phase=Phase.LOADING, acquired_at=3.0),
        R("old-start", phase=Phase.STARTING, acquired_at=4.0),
        R("new-start", phase=Phase.STARTING, acquired_at=5.0),
    ]
    moves = release(pool, 6, {"m1": 2})
    assert [m.replica for m in moves] == ["new-start", "old-start", "unwanted", "wanted", "loading", "busy"]
    assert [m.kind for m in moves][-1] is MoveKind.DRAIN and moves[0].kind is MoveKind.EVICT
    assert release(pool, 0, {}) == []


def test_place_for_a_live_pool_and_the_models_the_cluster_is_told() -> None:
    pool = [
        LiveHolder("r1", "m1", Phase.READY),
        LiveHolder("r2", None, Phase.READY),
        LiveHolder("r3", None, Phase.READY),
        LiveHolder("r4", "m1", Phase.READY, busy=1),
    ]
    moves = place(pool, [Waiting("m2", 1)], {"m1": 2, "m3": 1}, ("m1",), ())
    assert [(m.kind, m.replica, m.model) for m in moves if m.kind is not MoveKind.WARM] == [
        (MoveKind.LOAD, "r2", "m2"),
        (MoveKind.LOAD, "r3", "m3"),
    ]
    assert sum(m.kind is MoveKind.WARM for m in moves) == 4
    assert moves[0].to_public() == {"kind": "load", "replica": "r2", "model": "m2", "tier": "remote"}
    assert holdings({"m1": 2, "m3": 1, "m0": 1}, ["m2", "m1"]) == ["m1", "m0", "m3", "m2"]
