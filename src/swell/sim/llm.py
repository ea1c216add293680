"""LLM serving on virtual time: replicas that batch continuously, driven by the brain's policies.

A discrete-event model of a pool of LLM replicas (one GPU each, one model), replayed from a trace of
requests in tokens (`swell.sim.llm_trace`). The brain's parts are the live ones, as in the image
simulator (`swell.sim.engine`): what happens feeds `swell.brain.observe.Observer`, which builds the
policy's `Context`; the policy runs inside the guarded stack live runs (`swell.sim.engine.guard`);
scale-down picks replicas through `swell.brain.placement.release`. It returns the same `Report`
(an `LlmReport`, which adds the token metrics), so one table reads both simulators.

**A replica** (`LlmEngine`) batches continuously, as vLLM and Sarathi-Serve do. Each engine step
decodes one token for every running sequence and, with the step's token budget left over
(`step_tokens` minus one per decoding sequence), prefills the prompts of sequences that joined,
oldest first, in chunks (chunked prefill: a long prompt takes several steps, and decoding never
stalls behind it). A step takes

    decode_step_base + decode_step_per_seq * decoding + decode_step_per_kv_token * kv_of_decoding
        + prefill_tokens / prefill_tokens_per_s

so a bigger batch costs more per step but less per token: throughput grows with concurrency,
sub-linearly, until the KV cache is full. The base is the read of the weights, paid once per step
whatever the step does; the KV term is the read of the running sequences' caches (it is what makes
long prompts decode slower). It is evaluated at the start of each span of steps between two changes
of the batch (contexts grow by one token per step within it). The step that finishes a prompt emits
its first token; a request with `G` generated tokens then needs `G - 1` decode steps.

**Admission** reserves a request's whole final length (prompt + generated tokens, the generated
count standing in for the request's `max_tokens`) in the replica's `kv_tokens`, and at most
`max_batch` sequences run at once: a replica never exceeds its KV budget and never preempts.
Requests wait in one FIFO queue (the durable queue); one that fits goes at once to the ready replica
with the fewest reserved tokens (a least-loaded router), joining its batch at the next step
boundary; a replica that frees room pulls from the queue's head. A request larger than `kv_tokens`
could never run and is refused before the run starts.

**Cold start** is the image simulator's: `gpu_start_seconds` (x the seeded jitter), then a load from
the store of `model_gb` at `remote_gbps` plus `init_seconds` (every replica is a fresh node).

**What a policy sees.** Work is in slot-seconds, the unit `Context.replicas_for` divides by
`Context.slots`: a request costs its GPU-seconds at the nominal batch (`slots` sequences: its prompt
at the prefill rate, which holds the whole GPU, and its share of `G` decode steps) times `slots`.
It is known at arrival from the tokens, so the observer's work rate stays at its prior of 1 s per
unit (`Finished` carries no seconds): measured GPU time under batching depends on the load (one
lonely sequence "uses" every step) and would overstate the need at low load. `slots` defaults to
the sequences of the trace's mean length that fit the KV budget (at most `max_batch`): the
concurrency a capacity planner sizes a replica for. The brain's SLO signal is the queue wait
(arrival to admission), as live, against `PoolConfig.slo_wait`, which for LLM runs is the TTFT SLO:
a request that waited longer cannot meet it.

**Reported**: wait fields are time to first token (arrival to the first token: queueing, the rest
of the step it joined at, and its prefill steps); `slo_attainment` is the share of requests whose
TTFT <= `slo_wait` and whose time per output token ((e2e - TTFT) / (G - 1)) <= `tpot_slo`; each
part, end-to-end latency and queue wait are reported too. `work_gpu_hours` is the time replicas
spent stepping (a batch of any size), `idle` the rest of their ready time.

Defaults (`LlmEngine`, `llm_pool`) describe Llama-2-13B in fp16 on one A100-80GB SXM (312 TFLOP/s
dense bf16, 2.0 TB/s HBM) under vLLM; docs/brain.md ("LLM serving") gives each figure's source and
says which are assumptions.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from swell.brain import placement
from swell.brain.context import Arrival, Context, Plan, Policy
from swell.brain.observe import Observer, ReplicaSnapshot
from swell.brain.placement import MoveKind, Phase, Tier
from swell.core.errors import ValidationError
from swell.core.replicas import ReplicaState
from swell.sim.cluster import PoolConfig
from swell.sim.engine import guard
from swell.sim.llm_trace import LlmTrace
from swell.sim.report import Report, Series

STEP, LOADED, UP = 0, 1, 2  # at one instant: steps end (room frees), then loads, then starts
DECODE, MIXED = 0, 1  # a span of decode-only steps; one step with prefill chunks
MODEL = "llm"
GIVE_UP_SECONDS = 7 * 86_400.0  # past the last arrival: the pool never served the queue

# Pool defaults for a 13B fp16 model: 26 GB of weights; engine start (CUDA graphs, KV profiling)
# of 20 s; a TTFT SLO of 2 s (covers the p99 prompt's prefill, 7,400 tokens in 1.2 s).
LLM_POOL_DEFAULTS: dict[str, Any] = {
    "model_gb": 26.0,
    "init_seconds": 20.0,
    "slo_wait": 2.0,
    "work_prior": 1.0,
}


def llm_pool(**overrides: Any) -> PoolConfig:
    """The image simulator's `PoolConfig` with the LLM defaults (`LLM_POOL_DEFAULTS`) under `overrides`."""
    return PoolConfig(**{**LLM_POOL_DEFAULTS, **overrides})


@dataclass(frozen=True, slots=True)
class LlmEngine:
    """How one LLM replica runs (defaults: Llama-2-13B fp16 on an A100-80GB under vLLM)."""

    prefill_tokens_per_s: float = 6000.0  # 2 x 13e9 FLOP per token at ~55 % of 312 TFLOP/s
    decode_step_base: float = 0.017  # 26 GB of weights read at ~75 % of 2.04 TB/s
    decode_step_per_seq: float = 1.5e-4  # 26 GFLOP per token at ~55 % of peak, per sequence
    decode_step_per_kv_token: float = 5.4e-7  # 819,200 B of KV per token read at ~1.5 TB/s
    kv_tokens: int = 50_000  # ~44 GB left for KV at vLLM's gpu_memory_utilization 0.9
    max_batch: int = 256  # vLLM's max_num_seqs
    step_tokens: int = 512  # tokens per step (vLLM's first chunked-prefill default, best ITL on A100)
    tpot_slo: float = 0.2  # seconds per output token after the first (DistServe's code-completion SLO)
    slots: int | None = None  # the nominal batch a policy plans with; None: from the trace

    def __post_init__(self) -> None:
        for name in ("prefill_tokens_per_s", "decode_step_base", "tpot_slo"):
            if getattr(self, name) <= 0:
                raise ValidationError(f"{name} must be > 0", field=name)
        for name in ("decode_step_per_seq", "decode_step_per_kv_token"):
            if getattr(self, name) < 0:
                raise ValidationError(f"{name} must be >= 0", field=name)
        for name in ("kv_tokens", "max_batch"):
            if getattr(self, name) < 1:
                raise ValidationError(f"{name} must be >= 1", field=name)
        if self.step_tokens <= self.max_batch:
            raise ValidationError(
                "step_tokens must exceed max_batch (each decoding sequence takes one token of a step)",
                field="step_tokens",
            )
        if self.slots is not None and self.slots < 1:
            raise ValidationError("slots must be >= 1", field="slots")

    def step_seconds(self, decoding: int, kv: float, prefill: int = 0) -> float:
        """One engine step: `decoding` sequences holding `kv` tokens, plus `prefill` prompt tokens."""
        return (
            self.decode_step_base
            + self.decode_step_per_seq * decoding
            + self.decode_step_per_kv_token * kv
            + prefill / self.prefill_tokens_per_s
        )

    def decode_tokens_per_s(self, batch: int, context: float) -> float:
        """Steady decode throughput of `batch` sequences of `context` tokens each (pure)."""
        return batch / self.step_seconds(batch, batch * context) if batch > 0 else 0.0

    def concurrency(self, tokens_per_request: float) -> int:
        """Sequences of that length that run at once: the KV budget or `max_batch`, the lower."""
        return max(1, min(self.max_batch, int(self.kv_tokens // max(1.0, tokens_per_request))))

    def nominal_slots(self, trace: LlmTrace) -> int:
        if self.slots is not None:
            return self.slots
        mean = float(np.mean(trace.prompt + trace.output)) if len(trace) else 1.0
        return self.concurrency(mean)

    def cost(self, prompt: np.ndarray, output: np.ndarray, slots: int) -> np.ndarray:
        """Slot-seconds per request at the nominal batch (see the module docstring)."""
        p = prompt.astype(np.float64)
        g = output.astype(np.float64)
        per_token = self.decode_step_base / slots + self.decode_step_per_seq
        decode = g * (per_token + self.decode_step_per_kv_token * (p + g / 2))
        return slots * (p / self.prefill_tokens_per_s + decode)


@dataclass(frozen=True)
class LlmReport(Report):
    """`Report` whose wait fields are time to first token, with the token metrics added."""

    tpot_slo_s: float = 0.0
    ttft_attainment: float = 1.0
    tpot_attainment: float = 1.0
    p50_queue_s: float = 0.0
    p99_queue_s: float = 0.0
    p50_e2e_s: float = 0.0
    p99_e2e_s: float = 0.0
    p50_tpot_s: float = 0.0
    p99_tpot_s: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    slots: int = 1
    kv_tokens: int = 0
    peak_kv_tokens: int = 0
    peak_batch: int = 0


class LlmReplica:
    """One GPU serving the model; a `placement.Holder`. Its batch: `pending` (taken, joining at the
    next step), `prefilling` (FIFO, prompt left in `left`), and decoding sequences kept as a heap of
    the step count (`counter`) at which each finishes, so a span of steps costs O(log n)."""

    __slots__ = (
        "acquired_at",
        "base",
        "busy_s",
        "chunk",
        "count",
        "counter",
        "decoders",
        "draining",
        "id",
        "kind",
        "load_started",
        "peak_batch",
        "peak_kv",
        "pending",
        "prefilled",
        "prefilling",
        "reserved",
        "span_dt",
        "span_start",
        "span_steps",
        "state",
        "stepping",
        "version",
    )

    def __init__(self, rid: int, now: float) -> None:
        self.id, self.acquired_at = rid, now
        self.state = Phase.STARTING
        self.draining = self.stepping = False
        self.version = 0
        self.load_started = self.busy_s = self.span_start = self.span_dt = 0.0
        self.reserved = self.count = self.counter = self.prefilled = self.base = 0
        self.peak_kv = self.peak_batch = 0
        self.pending: list[int] = []
        self.prefilling: deque[int] = deque()
        self.decoders: list[tuple[int, int]] = []  # (counter at which it finishes, request)
        self.kind, self.span_steps = DECODE, 0
        self.chunk: list[tuple[int, int]] = []  # (request, prompt tokens) of a mixed step

    @property
    def phase(self) -> Phase:
        return self.state

    @property
    def model(self) -> str | None:
        return None if self.state is Phase.STARTING else MODEL

    @property
    def busy(self) -> int:
        return self.count

    def tier(self, model: Any, now: float) -> Tier:
        return Tier.REMOTE  # every replica is a fresh node: the weights come from the store

    def kv_decoding(self) -> int:
        """KV tokens of the decoding sequences: sum of (prompt + 1 + steps since joining)."""
        return self.base + len(self.decoders) * self.counter

    def kv_used(self) -> int:
        return self.kv_decoding() + self.prefilled


class LlmSimulator:
    """One replay of an `LlmTrace` under a policy (guarded unless `pool.guardrails` is off)."""

    def __init__(
        self,
        trace: LlmTrace,
        policy: Policy,
        engine: LlmEngine | None = None,
        pool: PoolConfig | None = None,
        *,
        knob: str = "-",
        initial_replicas: int = 0,
    ) -> None:
        if initial_replicas < 0:
            raise ValidationError("initial_replicas must be >= 0", field="initial_replicas")
        self.trace, self.knob, self.initial_replicas = trace, knob, initial_replicas
        self.engine = engine or LlmEngine()
        self.pool = pool or llm_pool()
        self._check_fits()
        self.oracle = policy if hasattr(policy, "lookahead") else None
        self.policy = guard(policy, self.pool)
        self.rng = np.random.default_rng(self.pool.seed)
        self.slots = self.engine.nominal_slots(trace)
        self.need = (trace.prompt + trace.output).astype(np.int64)
        self.units = self.engine.cost(trace.prompt, trace.output, self.slots)
        n = len(trace)
        self.admitted, self.first, self.done = (np.full(n, np.nan) for _ in range(3))
        self.left = trace.prompt.astype(np.int64).copy()  # prompt tokens not prefilled yet
        self.joined = np.zeros(n, dtype=np.int64)  # the replica's counter when decoding began
        self.finishes = np.zeros(n, dtype=np.int64)  # times each request finished (tests: once)
        self.wants_future = self.oracle is not None
        self.observer = Observer(
            tick_seconds=self.pool.tick_seconds,
            start_seconds=self.pool.start_seconds,
            slo_wait=self.pool.slo_wait,
            slots=self.slots,
            window=self.pool.attainment_window,
            prior=1.0,
            track_ends=self.wants_future,
        )
        self.queue: deque[int] = deque()
        self.replicas: dict[int, LlmReplica] = {}
        self.ready: dict[int, LlmReplica] = {}
        self.events: list[tuple[float, int, int, int, int]] = []
        self.running = self.next_id = self.seq = self.actions = self.peak = 0
        self.gpu_s = self.starting_s = self.loading_s = self.over_s = self.busy_s = 0.0
        self.peak_kv = self.peak_batch = self.loads = 0
        self.samples: list[tuple[float, int, int, int]] = []

    def _check_fits(self) -> None:
        need = self.trace.prompt + self.trace.output
        too_big = np.flatnonzero(need > self.engine.kv_tokens)
        if len(too_big):
            i = int(too_big[0])
            raise ValidationError(
                f"{len(too_big)} request(s) need more KV tokens than a replica holds (request {i}: "
                f"{int(need[i])} > kv_tokens {self.engine.kv_tokens}); raise kv_tokens",
                field="kv_tokens",
            )

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> LlmReport:
        state = self.policy.initial()
        for _ in range(self.initial_replicas):
            self._warm(0.0)
        arrival, n = self.trace.arrival, len(self.trace)
        i, now, tick, last = 0, 0.0, 0.0, 0.0
        give_up = (float(arrival[-1]) if n else 0.0) + GIVE_UP_SECONDS
        while i < n or self.queue or self.running:
            t_arr = float(arrival[i]) if i < n else math.inf
            t_ev = self.events[0][0] if self.events else math.inf
            now = min(t_arr, t_ev, tick)
            if now > give_up:
                raise ValidationError(
                    f"{self.policy.name}: {len(self.queue)} requests still queued a week after the "
                    "last arrival (the policy never provisioned a replica)",
                    field="policy",
                )
            self._account(last, now)
            last = now
            if t_ev == now:
                self._event(now, *heapq.heappop(self.events)[1:])
            elif t_arr == now:
                self._arrive(i, now)
                i += 1
            else:
                state = self._tick(now, state)
                tick = now + self.pool.tick_seconds
        for r in list(self.replicas.values()):
            self._release(r, now)
        return self._report(now)

    def _account(self, last: float, now: float) -> None:
        if len(self.queue) + self.running > len(self.ready) * self.slots:
            self.over_s += now - last

    def _push(self, t: float, kind: int, rid: int, version: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, kind, self.seq, rid, version))

    def _event(self, now: float, kind: int, _seq: int, rid: int, version: int) -> None:
        r = self.replicas.get(rid)
        if r is None or r.version != version:
            return
        if kind == STEP:
            self._boundary(r, now)
        elif kind == UP:
            self._up(r, now)
        else:
            self._loaded(r, now)

    # -- requests ---------------------------------------------------------------------------------

    def _arrive(self, i: int, now: float) -> None:
        self.observer.arrive(i, now, float(self.units[i]), MODEL)
        self.queue.append(i)
        self._dispatch(now)

    def _dispatch(self, now: float) -> None:
        """Hand the queue's head to the least-loaded ready replica it fits, while one fits (FIFO:
        a head that fits nowhere holds the rest back, as vLLM's first-come scheduler does)."""
        while self.queue:
            i = self.queue[0]
            r = self._room_for(int(self.need[i]))
            if r is None:
                return
            self.queue.popleft()
            self._take(r, i, now)

    def _room_for(self, need: int) -> LlmReplica | None:
        best: LlmReplica | None = None
        for r in self.ready.values():
            if r.draining or r.count >= self.engine.max_batch or r.reserved + need > self.engine.kv_tokens:
                continue
            if best is None or r.reserved < best.reserved:
                best = r
        return best

    def _take(self, r: LlmReplica, i: int, now: float) -> None:
        r.reserved += int(self.need[i])
        r.count += 1
        r.pending.append(i)
        self.admitted[i] = now
        self.running += 1
        self.observer.start(i, now, now + float(self.units[i]) if self.wants_future else None)
        self._poke(r, now)

    def _finish(self, r: LlmReplica, i: int, now: float) -> None:
        r.reserved -= int(self.need[i])
        r.count -= 1
        r.base -= int(self.trace.prompt[i]) + 1 - int(self.joined[i])
        self.done[i] = now
        self.finishes[i] += 1
        self.running -= 1
        self.observer.finish(i, now)

    # -- a replica's steps ------------------------------------------------------------------------

    def _poke(self, r: LlmReplica, now: float) -> None:
        """New work for `r`: an idle replica steps now; one in a span of decode steps stops that span
        at the end of the step under way, so the newcomer joins there."""
        if not r.stepping:
            self._plan(r, now)
            return
        if r.kind != DECODE or r.span_dt <= 0:
            return
        done = max(0, math.ceil((now - r.span_start) / r.span_dt - 1e-9))
        if done >= r.span_steps:
            return
        r.span_steps = done
        r.version += 1
        self._push(r.span_start + done * r.span_dt, STEP, r.id, r.version)

    def _plan(self, r: LlmReplica, now: float) -> None:
        """Start the next step, or span of decode steps, of `r`; nothing when its batch is empty."""
        r.prefilling.extend(r.pending)
        r.pending.clear()
        if not r.prefilling and not r.decoders:
            r.stepping = False
            if r.draining:
                self._release(r, now)
            return
        decoding, kv = len(r.decoders), r.kv_decoding()
        if r.prefilling:
            r.chunk = self._chunk(r, self.engine.step_tokens - decoding)
            prefill = sum(c for _, c in r.chunk)
            r.kind, r.span_steps = MIXED, 1
            r.span_dt = self.engine.step_seconds(decoding, kv, prefill)
        else:
            r.kind, r.span_steps = DECODE, r.decoders[0][0] - r.counter
            r.span_dt = self.engine.step_seconds(decoding, kv)
        r.span_start, r.stepping = now, True
        r.version += 1
        self._push(now + r.span_steps * r.span_dt, STEP, r.id, r.version)

    def _chunk(self, r: LlmReplica, budget: int) -> list[tuple[int, int]]:
        chunk = []
        for i in r.prefilling:
            take = min(int(self.left[i]), budget)
            if take > 0:
                chunk.append((i, take))
                budget -= take
            if budget <= 0:
                break
        return chunk

    def _boundary(self, r: LlmReplica, now: float) -> None:
        """The step (or span) under way ended: apply it, retire finished sequences, refill, go on."""
        r.busy_s += now - r.span_start
        if r.kind == MIXED:
            r.counter += 1
            self._prefill(r, now)
        else:
            r.counter += r.span_steps
        r.peak_kv = max(r.peak_kv, r.kv_used())
        r.peak_batch = max(r.peak_batch, r.count)
        r.stepping = False
        freed = False
        while r.decoders and r.decoders[0][0] <= r.counter:
            _, i = heapq.heappop(r.decoders)
            self._finish(r, i, now)
            freed = True
        if freed:
            self._dispatch(now)
        if not r.stepping:
            self._plan(r, now)

    def _prefill(self, r: LlmReplica, now: float) -> None:
        """Apply a mixed step's chunks; a prompt finished emits its first token and starts decoding."""
        for i, take in r.chunk:
            self.left[i] -= take
            r.prefilled += take
            if self.left[i] > 0:
                continue
            r.prefilling.remove(i)
            prompt = int(self.trace.prompt[i])
            r.prefilled -= prompt
            self.first[i] = now
            self.joined[i] = r.counter
            r.base += prompt + 1 - r.counter
            heapq.heappush(r.decoders, (r.counter + int(self.trace.output[i]) - 1, i))
        r.chunk = []

    # -- replicas ---------------------------------------------------------------------------------

    def _acquire(self, now: float) -> None:
        pool = self.pool
        r = LlmReplica(self.next_id, now)
        self.next_id += 1
        self.replicas[r.id] = r
        self.peak = max(self.peak, len(self.replicas))
        jitter = pool.start_jitter * (2 * self.rng.random() - 1) if pool.start_jitter else 0.0
        self._push(now + pool.gpu_start_seconds * (1 + jitter), UP, r.id, r.version)

    def _warm(self, now: float) -> None:
        """A replica already serving when the trace starts (it costs from `now`, loads nothing)."""
        r = LlmReplica(self.next_id, now)
        self.next_id += 1
        self.replicas[r.id] = r
        self.peak = max(self.peak, len(self.replicas))
        r.state = Phase.READY
        self.ready[r.id] = r

    def _up(self, r: LlmReplica, now: float) -> None:
        self.starting_s += now - r.acquired_at
        self.loads += 1
        r.state, r.load_started = Phase.LOADING, now
        r.version += 1
        self._push(now + self.pool.load_seconds(Tier.REMOTE), LOADED, r.id, r.version)

    def _loaded(self, r: LlmReplica, now: float) -> None:
        self.loading_s += now - r.load_started
        r.state = Phase.READY
        self.ready[r.id] = r
        self._dispatch(now)

    def _release(self, r: LlmReplica, now: float) -> None:
        self.gpu_s += now - r.acquired_at
        if r.state is Phase.STARTING:
            self.starting_s += now - r.acquired_at
        elif r.state is Phase.LOADING:
            self.loading_s += now - r.load_started
        self.ready.pop(r.id, None)
        self.peak_kv = max(self.peak_kv, r.peak_kv)
        self.peak_batch = max(self.peak_batch, r.peak_batch)
        self.busy_s += r.busy_s
        r.version += 1
        del self.replicas[r.id]

    # -- the policy -------------------------------------------------------------------------------

    def _tick(self, now: float, state: Any) -> Any:
        self.observer.replicas(self._snapshot(r) for r in self.replicas.values())
        future = self._future(now) if self.wants_future else ()
        ctx: Context = self.observer.context(now, future=future)
        plan, state = self.policy.decide(ctx, state)
        self._scale(plan, now)
        self.samples.append((now, len(self.queue) + self.running, len(self.ready), len(self.replicas)))
        return state

    def _snapshot(self, r: LlmReplica) -> ReplicaSnapshot:
        if r.draining:
            state = ReplicaState.DRAINING
        elif r.state is Phase.READY:
            state = ReplicaState.BUSY if r.count else ReplicaState.READY
        else:
            state = ReplicaState.STARTING if r.state is Phase.STARTING else ReplicaState.LOADING
        models = () if r.model is None else (MODEL,)
        return ReplicaSnapshot(r.id, models=models, state=state, busy=r.count)

    def _future(self, now: float) -> tuple[Arrival, ...]:
        lookahead = self.oracle.lookahead(self.pool.start_seconds, self.pool.tick_seconds)  # type: ignore[union-attr]
        a = self.trace.arrival
        lo, hi = np.searchsorted(a, [now, now + lookahead], side="right")
        return tuple(Arrival(float(a[j]), float(self.units[j]), MODEL) for j in range(lo, hi))

    def _scale(self, plan: Plan, now: float) -> None:
        target = plan.replicas
        if self.pool.max_gpus is not None:
            target = min(target, self.pool.max_gpus)
        active = [r for r in self.replicas.values() if not r.draining]
        if target == len(active):
            return
        self.actions += 1
        if target > len(active):
            self._grow(target - len(active), now)
            return
        for move in placement.release(active, len(active) - target, {MODEL: target}):
            r = self.replicas[move.replica]  # type: ignore[index]
            if move.kind is MoveKind.DRAIN:
                r.draining = True
            else:
                self._release(r, now)

    def _grow(self, count: int, now: float) -> None:
        for r in self.replicas.values():
            if count and r.draining:
                r.draining, count = False, count - 1
        for _ in range(count):
            self._acquire(now)
        if self.queue:
            self._dispatch(now)  # a replica no longer draining takes work again

    # -- the report -------------------------------------------------------------------------------

    def _report(self, end: float) -> LlmReport:
        t = self.trace
        ttft = self.first - t.arrival
        e2e = self.done - t.arrival
        queue = self.admitted - t.arrival
        multi = t.output > 1
        tpot = (e2e[multi] - ttft[multi]) / (t.output[multi] - 1)
        slo = self.pool.slo_wait
        ttft_ok = ttft <= slo + 1e-9
        tpot_ok = np.ones(len(t), dtype=bool)
        tpot_ok[multi] = tpot <= self.engine.tpot_slo + 1e-9
        busy = self.busy_s
        columns = zip(*self.samples, strict=True) if self.samples else [()] * 4
        ts, demand, ready, replicas = (np.array(c) for c in columns)
        return LlmReport(
            policy=self.policy.name,
            knob=self.knob,
            trace=t.name,
            jobs=len(t),
            slo_wait_s=slo,
            slo_attainment=_share(ttft_ok & tpot_ok),
            p50_wait_s=_pct(ttft, 50),
            p99_wait_s=_pct(ttft, 99),
            max_wait_s=float(ttft.max()) if len(t) else 0.0,
            gpu_hours=self.gpu_s / 3600,
            work_gpu_hours=busy / 3600,
            starting_gpu_hours=self.starting_s / 3600,
            loading_gpu_hours=self.loading_s / 3600,
            idle_gpu_hours=max(0.0, self.gpu_s - busy - self.starting_s - self.loading_s) / 3600,
            model_loads={"host": 0, "disk": 0, "remote": self.loads},
            scale_actions=self.actions,
            peak_gpus=self.peak,
            demand_over_ready_s=self.over_s,
            sim_seconds=end,
            series=Series(ts, demand, ready, replicas, t.arrival.copy(), ttft.copy()),
            tpot_slo_s=self.engine.tpot_slo,
            ttft_attainment=_share(ttft_ok),
            tpot_attainment=_share(tpot_ok),
            p50_queue_s=_pct(queue, 50),
            p99_queue_s=_pct(queue, 99),
            p50_e2e_s=_pct(e2e, 50),
            p99_e2e_s=_pct(e2e, 99),
            p50_tpot_s=_pct(tpot, 50),
            p99_tpot_s=_pct(tpot, 99),
            prompt_tokens=int(t.prompt.sum()),
            output_tokens=int(t.output.sum()),
            slots=self.slots,
            kv_tokens=self.engine.kv_tokens,
            peak_kv_tokens=self.peak_kv,
            peak_batch=self.peak_batch,
        )


def _share(ok: np.ndarray) -> float:
    return float(np.mean(ok)) if len(ok) else 1.0


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else 0.0


def simulate_llm(
    trace: LlmTrace,
    policy: Policy,
    engine: LlmEngine | None = None,
    pool: PoolConfig | None = None,
    *,
    knob: str = "-",
    initial_replicas: int = 0,
) -> LlmReport:
    """Replay `trace` under `policy` (guarded unless `pool.guardrails` is off) on simulated LLM
    replicas; deterministic for `pool.seed`. `pool` defaults to `llm_pool()`. `initial_replicas`
    are serving when the trace starts (a slice of a running service); 0 starts from an empty pool,
    as the image simulator does."""
    sim = LlmSimulator(trace, policy, engine, pool, knob=knob, initial_replicas=initial_replicas)
    return sim.run()


def run_policies(
    trace: LlmTrace,
    names: list[str],
    engine: LlmEngine,
    pool: PoolConfig,
    *,
    initial_replicas: int = 0,
) -> list[LlmReport]:
    """Each named policy at its documented defaults (`swell sim llm`)."""
    from swell.brain.policies import make_policy

    return [
        simulate_llm(trace, make_policy(name), engine, pool, initial_replicas=initial_replicas)
        for name in names
    ]


def table(reports: list[LlmReport]) -> Any:
    """A rich table of LLM reports, one row per run."""
    from rich.table import Table

    head = reports[0]
    title = (
        f"{head.trace}: {head.jobs} requests, {head.prompt_tokens:,} prompt / {head.output_tokens:,} "
        f"generated tokens, nominal batch {head.slots}; SLO TTFT <= {head.slo_wait_s:g} s, "
        f"TPOT <= {head.tpot_slo_s:g} s"
    )
    out = Table("policy", "SLO att.", "TTFT att.", "TTFT p50/p99 s", "e2e p99 s", "TPOT p99 s", title=title)
    for column in ("GPU-h", "busy/start/load/idle GPU-h", "peak GPUs", "scale actions"):
        out.add_column(column)
    for r in reports:
        out.add_row(
            r.policy,
            f"{r.slo_attainment:.2%}",
            f"{r.ttft_attainment:.2%}",
            f"{r.p50_wait_s:.2f}/{r.p99_wait_s:.2f}",
            f"{r.p99_e2e_s:.2f}",
            f"{r.p99_tpot_s:.3f}",
            f"{r.gpu_hours:.2f}",
            f"{r.work_gpu_hours:.2f}/{r.starting_gpu_hours:.2f}/{r.loading_gpu_hours:.2f}/{r.idle_gpu_hours:.2f}",
            str(r.peak_gpus),
            str(r.scale_actions),
        )
    return out


__all__ = [
    "LLM_POOL_DEFAULTS",
    "LlmEngine",
    "LlmReplica",
    "LlmReport",
    "LlmSimulator",
    "llm_pool",
    "run_policies",
    "simulate_llm",
    "table",
]
