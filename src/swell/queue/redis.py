"""The Redis queue: for several machines sharing one queue.

Key schema (every key starts with the `prefix`, `swell` unless told otherwise):

    {p}:job:{id}                 hash: the job's fields (absent = None: `batch_limit`, `fingerprint`;
                                 `leased_with` absent reads 0), `version`, `seq`
    {p}:seq                      counter handing out submission numbers
    {p}:idem:{n}:{service}:{key} string: the job id an idempotency key maps to (n: len(service));
                                 the job's `fingerprint` tells a repeat from a different request
    {p}:ready:{service}          zset of queued jobs: score rank, member `{available_at}:{seq}:{id}`
    {p}:ready:{service}:{model}  the same for the jobs that name a model (model-affine leasing:
                                 a lease with `models` reads one per held model; its starvation
                                 guard reads `ready:{service}` by score up to `now - starve_after
                                 + aging_seconds`, the highest rank a starved job can have, so no
                                 key was added for it)
    {p}:leased:{service}         zset of leased job ids by lease expiry
    {p}:services                 set of every service that has had a job (reap)
    {p}:created[:{service}]      zset of job ids by seq (listing, newest first)
    {p}:state:{state}            zset of job ids by seq, per state
    {p}:finished:{service}       zset `{seq}:{id}` by finished_at (admission's drain rate)
    {p}:delivery:{id}:{channel}  hash: one outbox row (`Delivery`'s fields, `target` JSON; absent =
                                 None), and `member`, its entry in the two zsets below:
                                 `{seq:012d}:{n:03d}:{id}:{channel}` (n: its place among the job's)
    {p}:deliveries:{id}          list: the job's channels, in the order its rows were made
    {p}:due                      zset of pending rows' members by next_at
    {p}:open                     zset of waiting rows' members by expires_at (+inf when none)
    {p}:depth                    hash `{service}|{state}` -> count
    {p}:counters                 hash of the cumulative `QueueStats` counters
    {p}:probe                    string set with an expiry by `probe()` (readiness)
    {p}:eventseq                 counter handing out event sequence numbers (the events cursor)
    {p}:events:{id}              stream: the job's `state` and `cancel` events, entry id `0-{seq}`,
                                 fields kind, at, data (JSON); kept as long as the job
    {p}:activity:{id}            stream: the job's `progress` and `delta` events, the same shape;
                                 deleted once the job has been final for `event_retention` seconds
                                 (the job hash's `activity` field counts them for the per-job cap)
    {p}:log                      stream: every job's `state` and `cancel` events (fields job, kind,
                                 at, data), approximately capped at LOG_MAX entries
    {p}:log:activity             stream: every job's `progress` and `delta` events, capped at
                                 ACTIVITY_LOG_MAX (a reader further behind than a cap misses the
                                 oldest entries, and nothing else)
    {p}:untrimmed                zset of final job ids by finished_at, waiting for their trim

Transitions are decided in Python by `swell.core.jobs`; Redis only applies the writes, atomically,
through two Lua scripts: `APPLY` writes a job and its index entries only if the job's `version` is
still the one read (optimistic concurrency: a worker that lost the race re-reads and tries again),
and `SUBMIT` adds a job unless its idempotency key is taken or the service is full. An event is
one more op of the same script (`EVENT`: take the next seq, add the entry to the job's stream and
to the log), so a transition and its `state` event are written together or not at all; so is the
step it takes the job's outbox rows through (`ARM`, `REARM`: each row is read and written inside the
script, so a row the dispatcher saved meanwhile is judged as it is now). `submit` writes the rows with
the job, and `SAVE_DELIVERY` stores a dispatcher's try only over the row's version it read; `TRIM`
deletes the activity streams of jobs final for longer than the retention. Times come from
the injected clock and reach Redis as arguments, never from Redis TIME, so tests run on virtual time.

Listing pages by submission number (the `created` and `state` zsets' score), which is creation order
unless the clocks of several machines disagree. A lease that loses some picks to other workers and
tops up in a further round records in each job the batch size it had when that job was written.

Storage failures (the server unreachable or timing out, out of memory, refusing writes) leave every
public method as `Unavailable` (503), never as a raw `redis` error.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Concatenate, ParamSpec, TypeVar

import redis

from swell.core.clock import Clock, SystemClock
from swell.core.errors import (
    Conflict,
    IllegalTransition,
    JobNotFound,
    LeaseLost,
    QueueFull,
    SwellError,
    Unavailable,
)
from swell.core.jobs import (
    ACTIVITY_KINDS,
    Delivery,
    DeliveryState,
    Job,
    JobEvent,
    JobSpec,
    JobState,
    Priority,
    RetryPolicy,
    delivery_step,
)
from swell.queue._common import (
    ACTIVE_STATES,
    ADMISSION_WINDOW,
    COUNTER_NAMES,
    NO_MODEL_WINDOW,
    Appended,
    Counters,
    OneAtATime,
    affine_candidates,
    affine_key,
    apply_outcome,
    cancel_or_request,
    check_kinds,
    delivery_rows,
    fit_batch,
    full_message,
    holds,
    idempotency_conflict,
    interactive_waiting,
    lease_expired,
    missing_delivery,
    reported,
    require_owner,
    retry_after,
    starve_limit,
    transition_events,
    translated_failures,
    uncounted,
    unknown_cursor,
)
from swell.queue.base import (
    EVENT_RETENTION,
    TRIM_BATCH,
    TRIM_EVERY,
    Outcome,
    QueueStats,
    Submitted,
    Update,
)

CONFLICT_RETRIES = 50  # re-reads before an operation on one job gives up on a hot conflict
LEASE_ROUNDS = 8  # candidate pages a lease tries while other workers keep taking its picks
CONNECT_TIMEOUT = 5.0  # seconds to reach the server (a `socket_connect_timeout` in the URL wins)
SOCKET_TIMEOUT = 10.0  # seconds one reply may take (a `socket_timeout` in the URL wins)
PROBE_TTL = 60  # seconds the probe key lives
RETRY_AFTER = 5.0  # what a client is asked to wait while the server cannot serve
# replies by which a reachable server says it cannot serve now (not that the request is wrong): the
# classes redis-py maps some of them to (it strips their prefix), and the prefixes of the others
_REFUSING: tuple[type[redis.RedisError], ...] = tuple(
    getattr(redis.exceptions, name)
    for name in ("OutOfMemoryError", "ReadOnlyError", "MasterDownError", "TryAgainError", "ClusterDownError")
    if hasattr(redis.exceptions, name)
)
_REFUSALS = ("OOM", "MISCONF", "READONLY", "LOADING", "MASTERDOWN", "NOREPLICAS", "BUSY", "TRYAGAIN")

P = ParamSpec("P")
T = TypeVar("T")

_APPLY_OPS = """
-- {'ARM' | 'REARM', the job's channel list, due zset, open zset, row key prefix, now}: arm the job's
-- waiting rows (pending, due now), or re-arm every row (waiting, attempts reset).
local function step_deliveries(op)
  for _, channel in ipairs(redis.call('LRANGE', KEYS[op[2]], 0, -1)) do
    local row = op[5] .. channel
    local member = redis.call('HGET', row, 'member')
    if op[1] == 'ARM' then
      if redis.call('HGET', row, 'state') == 'waiting' then
        redis.call('HSET', row, 'state', 'pending', 'next_at', op[6])
        redis.call('HINCRBY', row, 'version', 1)
        redis.call('ZADD', KEYS[op[3]], op[6], member)
        redis.call('ZREM', KEYS[op[4]], member)
      end
    else
      redis.call('HSET', row, 'state', 'waiting', 'attempts', '0', 'progress_seq', '0')
      redis.call('HDEL', row, 'next_at', 'error')
      redis.call('HINCRBY', row, 'version', 1)
      redis.call('ZREM', KEYS[op[3]], member)
      redis.call('ZADD', KEYS[op[4]], redis.call('HGET', row, 'expires_at') or '+inf', member)
    end
  end
end

-- An op is {command, key index, arg...}, or {'EVENT', seq key, job stream, log, log cap, job id,
-- kind, at, data}: the next event seq, its entry added to the job's stream and to the log, or a
-- step of the job's outbox rows (above).
local function apply_ops(ops)
  for _, op in ipairs(ops) do
    if op[1] == 'EVENT' then
      local id = '0-' .. redis.call('INCR', KEYS[op[2]])
      redis.call('XADD', KEYS[op[3]], id, 'kind', op[7], 'at', op[8], 'data', op[9])
      redis.call('XADD', KEYS[op[4]], 'MAXLEN', '~', op[5], id,
                 'job', op[6], 'kind', op[7], 'at', op[8], 'data', op[9])
    elseif op[1] == 'ARM' or op[1] == 'REARM' then
      step_deliveries(op)
    else
      local args = {op[1], KEYS[op[2]]}
      for i = 3, #op do args[#args + 1] = op[i] end
      redis.call(unpack(args))
    end
  end
end
"""

SAVE_DELIVERY = """
-- KEYS[1] the row, KEYS[2] due zset, KEYS[3] open zset. ARGV: the version read, state, attempts,
-- next_at ('' for none), progress_seq, error given ('1' or ''), error. Returns -1 for no such row,
-- 0 when the row changed since read (left as it is), 1 when stored.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
local member = redis.call('HGET', KEYS[1], 'member')
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'attempts', ARGV[3], 'progress_seq', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'version', 1)
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[1], 'next_at')
else
  redis.call('HSET', KEYS[1], 'next_at', ARGV[4])
end
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'error', ARGV[7])
else
  redis.call('HDEL', KEYS[1], 'error')
end
if ARGV[2] == 'pending' and ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[4], member)
else
  redis.call('ZREM', KEYS[2], member)
end
if ARGV[2] ~= 'waiting' then redis.call('ZREM', KEYS[3], member) end
return 1
"""

TRIM = """
-- KEYS[1] untrimmed zset, KEYS[2] the activity log. ARGV: cutoff, key prefix, job ids. Each job
-- still final since before the cutoff loses its activity stream, its entries in the log (and its
-- count) and leaves the zset.
local trimmed = 0
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    local stream = ARGV[2] .. ':activity:' .. ARGV[i]
    for _, entry in ipairs(redis.call('XRANGE', stream, '-', '+')) do
      redis.call('XDEL', KEYS[2], entry[1])
    end
    redis.call('DEL', stream)
    if redis.call('EXISTS', ARGV[2] .. ':job:' .. ARGV[i]) == 1 then
      redis.call('HSET', ARGV[2] .. ':job:' .. ARGV[i], 'activity', '0')
    end
    redis.call('ZREM', KEYS[1], ARGV[i])
    trimmed = trimmed + 1
  end
end
return trimmed
"""

APPLY = (
    _APPLY_OPS
    + """
-- ARGV[1]: JSON list of groups {"key": i, "version": v, "ops": [[command, key index, arg...]]}.
-- A group is applied only while KEYS[i]'s `version` field is still v ('' for a job not yet
-- written). Returns 1 or 0 per group.
local applied = {}
for g, group in ipairs(cjson.decode(ARGV[1])) do
  if (redis.call('HGET', KEYS[group.key], 'version') or '') == group.version then
    apply_ops(group.ops)
    applied[g] = 1
  else
    applied[g] = 0
  end
end
return applied
"""
)

SUBMIT = (
    _APPLY_OPS
    + """
-- KEYS[1] idempotency key (unused when ARGV[2] is ''), KEYS[2] depth, KEYS[3] counters.
-- ARGV: job id, idempotency key given ('1' or ''), limit ('' for none), depth fields of the
-- service's queued and leased counts, JSON ops that write the new job.
-- An existing key is answered with its job's id; the caller compares the requests and counts.
if ARGV[2] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then
    return {'existing', existing}
  end
end
if ARGV[3] ~= '' then
  local active = tonumber(redis.call('HGET', KEYS[2], ARGV[4]) or '0')
    + tonumber(redis.call('HGET', KEYS[2], ARGV[5]) or '0')
  if active >= tonumber(ARGV[3]) then
    redis.call('HINCRBY', KEYS[3], 'rejected', 1)
    return {'full', tostring(active)}
  end
end
apply_ops(cjson.decode(ARGV[6]))
if ARGV[2] == '1' then redis.call('SET', KEYS[1], ARGV[1]) end
return {'created', ARGV[1]}
"""
)

_FLOATS = frozenset(
    {
        "created_at",
        "available_at",
        "timeout",
        "started_at",
        "finished_at",
        "lease_expires_at",
    }
)
_FLOATS = _FLOATS | {"progress"}
_INTS = frozenset({"max_attempts", "attempts", "batch_limit", "leased_with"})
_BOOLS = frozenset({"cancel_requested"})
_JSON = frozenset({"input", "result"})
_ENUMS: dict[str, Callable[[str], Any]] = {
    "priority": Priority,
    "state": JobState,
}
_JOB_FIELDS = tuple(f.name for f in fields(Job))
STORED_KINDS = frozenset({"state", "cancel"})  # the kinds `{p}:log` holds
LOG_MAX = 1_000_000  # entries `{p}:log` keeps, about
ACTIVITY_LOG_MAX = 100_000  # entries `{p}:log:activity` keeps, about


def _encode(value: Any, name: str) -> str:
    if name in _JSON:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if name in _ENUMS:
        return str(value.value)
    if name in _FLOATS:
        return repr(float(value))
    return str(value)


def _decode(name: str, text: str) -> Any:
    if name in _JSON:
        return json.loads(text)
    if name in _ENUMS:
        return _ENUMS[name](text)
    if name in _FLOATS:
        return float(text)
    if name in _INTS:
        return int(text)
    if name in _BOOLS:
        return text == "True"
    return text


def _seq(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[1])


def _event(job_id: str, entry_id: str, values: dict[str, str]) -> JobEvent:
    return JobEvent(_seq(entry_id), job_id, values["kind"], float(values["at"]), json.loads(values["data"]))


def _merged(streams: Iterable[list[JobEvent]], limit: int) -> list[JobEvent]:
    """The first `limit` events of several streams' reads, each in seq order, by seq."""
    return sorted((e for events in streams for e in events), key=lambda e: e.seq)[:limit]


def _unavailable(where: str, exc: redis.RedisError) -> Unavailable | None:
    """The `Unavailable` a server failure is answered with; None for an error that is a bug here."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return Unavailable(f"the queue's {where} cannot be reached: {exc}", retry_after=RETRY_AFTER)
    refused = isinstance(exc, redis.ResponseError) and str(exc).startswith(_REFUSALS)
    if refused or isinstance(exc, _REFUSING):
        message = f"the queue's {where} refuses to serve now: {type(exc).__name__}: {exc}"
        return Unavailable(message, retry_after=RETRY_AFTER)
    return None


def _storage(where: str) -> contextlib.AbstractContextManager[None]:
    """Translate the server failures raised inside into `Unavailable`, at this backend's boundary."""
    return translated_failures(redis.RedisError, lambda exc: _unavailable(where, exc))


def _translated(method: Callable[Concatenate[RedisQueue, P], T]) -> Callable[Concatenate[RedisQueue, P], T]:
    """A public method whose server failures leave it as `Unavailable`."""

    @functools.wraps(method)
    def translated(self: RedisQueue, *args: P.args, **kwargs: P.kwargs) -> T:
        with _storage(self.where):
            return method(self, *args, **kwargs)

    return translated


@dataclass(frozen=True, slots=True)
class _Stored:
    """A job as read, with the version that guards its next write and its submission number."""

    job: Job
    version: int
    seq: int


class _Keys:
    """The KEYS of one script call: scripts name keys by their 1-based position in it."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self._positions = {name: i + 1 for i, name in enumerate(self.names)}

    def index(self, name: str) -> int:
        if name not in self._positions:
            self.names.append(name)
            self._positions[name] = len(self.names)
        return self._positions[name]

    def indexed(self, ops: Iterable[tuple[str, ...]]) -> list[list[str | int]]:
        return [self._op(command, key, *args) for command, key, *args in ops]

    def _op(self, command: str, key: str, *args: str) -> list[str | int]:
        if command == "EVENT":  # three keys: seq counter, the job's stream, the log
            stream, log, *rest = args
            return [command, self.index(key), self.index(stream), self.index(log), *rest]
        if command in ("ARM", "REARM"):  # three keys: the channel list, the due and open zsets
            due, open_, *rest = args
            return [command, self.index(key), self.index(due), self.index(open_), *rest]
        return [command, self.index(key), *args]


@dataclass
class _Writes:
    """Redis commands for one APPLY group; keys are named here and become KEYS indexes later."""

    job_id: str
    version: str
    ops: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, command: str, key: str, *args: str) -> None:
        self.ops.append((command, key, *args))


class RedisQueue(OneAtATime):
    """A `QueueBackend` on a Redis server; safe across threads, processes and machines."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = SystemClock(),
        policy: RetryPolicy = RetryPolicy(),
        prefix: str = "swell",
        event_retention: float = EVENT_RETENTION,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._clock = clock
        self._policy = policy
        self.event_retention = event_retention
        self._trimmed_at = clock.now()
        # Any: redis-py types every reply as sync-or-async; with decode_responses they are str.
        self._redis: Any = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT
        )
        options = self._redis.connection_pool.connection_kwargs
        # named without the URL, which may hold a password
        self.where = f"redis at {options.get('host', options.get('path'))}:{options.get('port', '')}"
        self.where += f"/{options.get('db', 0)}"
        self._apply_script = self._redis.register_script(APPLY)
        self._submit_script = self._redis.register_script(SUBMIT)
        self._trim_script = self._redis.register_script(TRIM)
        self._save_delivery_script = self._redis.register_script(SAVE_DELIVERY)
        with _storage(self.where):
            self._baseline = self._counters()

    # -- the protocol -----------------------------------------------------------------------------

    @_translated
    def submit(self, spec: JobSpec, *, limit: int | None = None) -> Submitted:
        now = self._clock.now()
        job = Job.create(spec, now)
        seq = int(self._redis.incr(self._key("seq")))
        writes = self._writes(None, _Stored(job, 0, seq))
        self._add_deliveries(writes, delivery_rows(job, spec), seq)
        writes.add("SADD", self._key("services"), job.service)
        writes.add("HINCRBY", self._key("counters"), "submitted", "1")
        key = spec.idempotency_key
        # the service's length keeps ("a:b", "c") and ("a", "b:c") apart
        idem = (
            self._key("idem", str(len(spec.service)), spec.service, key)
            if key is not None
            else self._key("idem")
        )
        keys = _Keys([idem, self._key("depth"), self._key("counters")])
        ops = json.dumps(keys.indexed(writes.ops))
        depth_fields = [_depth_field(spec.service, state) for state in ACTIVE_STATES]
        outcome, value = self._submit_script(
            keys=keys.names,
            args=[
                job.id,
                "1" if key is not None else "",
                "" if limit is None else str(limit),
                *depth_fields,
                ops,
            ],
        )
        if outcome == "existing":
            return self._repeat(self.get(value), spec), False
        if outcome == "full":
            assert limit is not None
            active = int(value)
            wait = retry_after(active - limit + 1, self._finished_recently(spec.service, now))
            raise QueueFull(full_message(spec.service, active, limit), retry_after=wait)
        return job, True

    def submit_many(
        self, specs: Sequence[JobSpec], *, limits: Mapping[str, int] | None = None
    ) -> list[Submitted | SwellError]:
        """One script call per spec: each submit is atomic on its own, the batch is not."""
        limits = limits or {}
        outcomes: list[Submitted | SwellError] = []
        for spec in specs:
            try:
                outcomes.append(self.submit(spec, limit=limits.get(spec.service)))
            except (QueueFull, Conflict) as exc:
                outcomes.append(exc)
        return outcomes

    @_translated
    def get(self, job_id: str) -> Job:
        return self._load(job_id).job

    @_translated
    def get_many(self, job_ids: Sequence[str]) -> list[Job]:
        return self._load_many(job_ids)

    @_translated
    def lease(
        self,
        service: str,
        owner: str,
        *,
        max_jobs: int = 1,
        lease_seconds: float = 30.0,
        model: str | None = None,
        models: Sequence[str] = (),
        starve_after: float | None = None,
    ) -> list[Job]:
        now = self._clock.now()
        self._reap([service], now)
        affine = bool(models) or starve_after is not None
        held = [*models, *([model] if model is not None else [])]
        before = starve_limit(now, starve_after)
        leased: list[Job] = []
        for _ in range(LEASE_ROUNDS):
            want = max_jobs - len(leased)
            if want <= 0:
                break
            if affine:  # a later round tops up with the models already leased: still one load
                held += [job.model for job in leased if job.model is not None and job.model not in held]
                found = self._affine(service, held, now, want, before)
            else:
                found = self._candidates(service, model, now, want)
            candidates = {s.job.id: s for s in found if s.job.state is JobState.QUEUED}
            chosen = fit_batch([s.job for s in candidates.values()], max_jobs, leased)
            if not chosen:
                break
            batch = len(leased) + len(chosen)
            changes = [
                (candidates[job.id], job.lease(owner, now, lease_seconds, batch=batch)) for job in chosen
            ]
            applied = self._apply(changes, leased=1)
            leased += applied
            if len(applied) == len(changes):
                break  # nobody took a pick: what did not fit waits for the next lease
        if affine:
            leased.sort(key=lambda job: affine_key(job, self._policy, before))
        else:
            self._sort_like_candidates(leased, model)
        return leased

    @_translated
    def interactive_waiting(self, service: str, models: Sequence[str | None] = ()) -> bool:
        return interactive_waiting(_RedisView(self, service, self._clock.now()), models)

    @_translated
    def renew(self, job_ids: Sequence[str], owner: str, lease_seconds: float) -> None:
        """Renews every lease `owner` still holds; then `LeaseLost` naming any it does not."""
        lost = []
        for job_id in job_ids:
            try:
                self._change(job_id, lambda job: self._renewed(job, owner, lease_seconds))
            except (LeaseLost, JobNotFound):
                lost.append(job_id)
        if lost:
            raise LeaseLost(f"{owner} no longer holds the lease on {', '.join(lost)}")

    @_translated
    def settle(self, owner: str, outcomes: Sequence[Outcome]) -> list[Job | SwellError]:
        """One checked write per outcome: each is atomic on its own, the batch is not."""
        settled: list[Job | SwellError] = []
        for outcome in outcomes:

            def decide(job: Job, outcome: Outcome = outcome) -> Job:
                return apply_outcome(job, owner, outcome, self._clock.now(), self._policy)

            try:
                settled.append(self._change(outcome.job_id, decide, settling=True))
            except (LeaseLost, JobNotFound) as exc:
                settled.append(exc)
        now = self._clock.now()
        if now - self._trimmed_at >= TRIM_EVERY:
            self._trim(now)
        return settled

    @_translated
    def release(self, job_id: str, owner: str) -> Job:
        def release(job: Job) -> Job:
            require_owner(job, owner)
            return job.release(self._clock.now())

        return self._change(job_id, release)

    @_translated
    def cancel(self, job_id: str) -> Job:
        return self._change(job_id, lambda job: cancel_or_request(job, self._clock.now()))

    @_translated
    def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self._key("job", job_id), ["state", "cancel_requested"])
        return {
            job_id
            for job_id, (state, requested) in zip(job_ids, pipe.execute(), strict=True)
            if requested == "True" or state == JobState.CANCELLED.value
        }

    @_translated
    def report(self, owner: str, updates: Sequence[Update]) -> None:
        """One checked write per job: its progress, activity count and events, retried on a race."""
        by_job: dict[str, list[Update]] = {}
        for update in updates:
            by_job.setdefault(update.job_id, []).append(update)
        for job_id, job_updates in by_job.items():
            self._report(job_id, owner, job_updates)

    @_translated
    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.exists(self._key("job", job_id))
        for stream in (self._key("events", job_id), self._key("activity", job_id)):
            pipe.xrange(stream, f"(0-{after}", "+", count=limit)
        exists, *reads = pipe.execute()
        if not exists:
            raise JobNotFound(f"no job {job_id!r}", field="id")
        return _merged(([_event(job_id, i, v) for i, v in read] for read in reads), limit)

    @_translated
    def events_since(
        self, after_seq: int, kinds: Sequence[str] = ("state",), limit: int = 1000
    ) -> list[JobEvent]:
        wanted = set(check_kinds(kinds))
        logs = [
            log
            for log, held in (
                (self._key("log"), STORED_KINDS),
                (self._key("log", "activity"), ACTIVITY_KINDS),
            )
            if wanted & held
        ]
        return _merged((self._log_read(log, after_seq, wanted, limit) for log in logs), limit)

    @_translated
    def cancel_many(self, *, service: str | None = None) -> int:
        """Cancels the jobs queued when it starts, one checked write each (one leased meanwhile runs
        on): atomic per job, not for the whole set."""
        if service is None:
            ids = self._redis.zrange(self._key("state", JobState.QUEUED.value), 0, -1)
        else:
            ids = [_member_id(m) for m in self._redis.zrange(self._key("ready", service), 0, -1)]
            ids = [s.job.id for s in sorted(self._load_stored(ids), key=lambda s: s.seq)]
        cancelled = 0
        for job_id in ids:
            try:
                self._change(job_id, lambda job: job.cancel(self._clock.now()))
                cancelled += 1
            except (IllegalTransition, JobNotFound):
                continue
        return cancelled

    @_translated
    def retry(self, job_id: str) -> Job:
        return self._change(job_id, lambda job: job.redrive(self._clock.now()), redriven=1)

    @_translated
    def event_cursor(self) -> int:
        return int(self._redis.get(self._key("eventseq")) or 0)

    @_translated
    def reap(self) -> int:
        now = self._clock.now()
        reaped = self._reap(sorted(self._redis.smembers(self._key("services"))), now)
        self._trim(now)
        return reaped

    @_translated
    def jobs(
        self,
        *,
        service: str | None = None,
        state: JobState | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Job]:
        if state is not None:
            index = self._key("state", state.value)
        else:
            index = self._key("created", service) if service is not None else self._key("created")
        top, page = self._cursor(before), max(limit, 16)
        found: list[Job] = []
        while len(found) < limit:
            rows = self._redis.zrevrangebyscore(index, top, "-inf", start=0, num=page, withscores=True)
            if not rows:
                break
            found += [
                j for j in self._load_many(i for i, _ in rows) if service is None or j.service == service
            ]
            top = f"({int(rows[-1][1])}"
        return found[:limit]

    @_translated
    def depth(self) -> dict[str, dict[str, int]]:
        depth: dict[str, dict[str, int]] = {}
        for name, count in self._redis.hgetall(self._key("depth")).items():
            service, state = name.rsplit("|", 1)
            if int(count):
                depth.setdefault(service, {})[state] = int(count)
        return depth

    @_translated
    def due_deliveries(
        self, now: float | None = None, limit: int = 100, channels: Sequence[str] | None = None
    ) -> list[tuple[Delivery, Job]]:
        now = self._clock.now() if now is None else now
        due = self._key("due")
        members = self._members(
            lambda start, n: self._redis.zrangebyscore(due, "-inf", repr(now), start=start, num=n),
            channels,
            limit,
        )
        rows = self._rows_with_jobs(members, DeliveryState.PENDING)
        return [(row, job) for row, job in rows if row.next_at is not None and row.next_at <= now]

    @_translated
    def open_deliveries(self, channels: Sequence[str], limit: int = 100) -> list[tuple[Delivery, Job]]:
        members = self._members(
            lambda start, n: self._redis.zrange(self._key("open"), start, start + n - 1), channels, limit
        )
        return self._rows_with_jobs(members, DeliveryState.WAITING)

    @_translated
    def save_delivery(self, delivery: Delivery) -> None:
        keys = [self._row_key(delivery.job_id, delivery.channel), self._key("due"), self._key("open")]
        args = [
            str(delivery.version),
            delivery.state.value,
            str(delivery.attempts),
            "" if delivery.next_at is None else repr(float(delivery.next_at)),
            str(delivery.progress_seq),
            "" if delivery.error is None else "1",
            delivery.error or "",
        ]
        if self._save_delivery_script(keys=keys, args=args) == -1:
            raise missing_delivery(delivery)

    @_translated
    def deliveries(self, job_id: str) -> list[Delivery]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.exists(self._key("job", job_id))
        pipe.lrange(self._key("deliveries", job_id), 0, -1)
        exists, channels = pipe.execute()
        if not exists:
            raise JobNotFound(f"no job {job_id!r}", field="id")
        return self._load_rows([(job_id, channel) for channel in channels])

    @_translated
    def probe(self) -> None:
        self._redis.set(self._key("probe"), repr(self._clock.now()), ex=PROBE_TTL)

    @_translated
    def statistics(self) -> QueueStats:
        """Counters since this handle was opened (every process's work counts), and depth now."""
        now = self._counters()
        since = Counters(*(a - b for a, b in zip(now, self._baseline, strict=True)))
        return since.snapshot(self.depth())

    def close(self) -> None:
        self._redis.close()

    def __repr__(self) -> str:
        return f"RedisQueue(url={self.url!r}, prefix={self.prefix!r}, clock={self._clock!r})"

    # -- reading ----------------------------------------------------------------------------------

    def _key(self, *parts: str | None) -> str:
        return ":".join([self.prefix, *(p for p in parts if p is not None)])

    def _load(self, job_id: str) -> _Stored:
        stored = self._parse(self._redis.hgetall(self._key("job", job_id)))
        if stored is None:
            raise JobNotFound(f"no job {job_id!r}", field="id")
        return stored

    def _cursor(self, job_id: str | None) -> str:
        """The highest score, exclusive, of the page after `job_id` (the previous page's last job)."""
        if job_id is None:
            return "+inf"
        seq = self._redis.hget(self._key("job", job_id), "seq")
        if seq is None:
            raise unknown_cursor(job_id)
        return f"({seq}"

    def _repeat(self, job: Job, spec: JobSpec) -> Job:
        """The job a repeated idempotency key maps to, counted; `Conflict` for a different request."""
        if not job.same_request(spec):
            raise idempotency_conflict(job, spec)
        self._redis.hincrby(self._key("counters"), "deduplicated", 1)
        return job

    def _log_read(self, log: str, after: int, kinds: set[str], limit: int) -> list[JobEvent]:
        """The first `limit` events of `kinds` in `log` after seq `after`, a page at a time."""
        found: list[JobEvent] = []
        start = f"(0-{after}"
        while len(found) < limit:
            entries = self._redis.xrange(log, start, "+", count=max(limit, 100))
            found += [_event(v["job"], i, v) for i, v in entries if v["kind"] in kinds]
            if len(entries) < max(limit, 100):
                break
            start = f"({entries[-1][0]}"
        return found[:limit]

    def _load_many(self, job_ids: Iterable[str]) -> list[Job]:
        return [s.job for s in self._load_stored(job_ids)]

    def _load_stored(self, job_ids: Iterable[str]) -> list[_Stored]:
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self._key("job", job_id))
        return [s for s in map(self._parse, pipe.execute()) if s is not None]

    @staticmethod
    def _parse(values: dict[str, str]) -> _Stored | None:
        if not values:
            return None
        job = Job(**{name: _decode(name, values[name]) for name in _JOB_FIELDS if name in values})
        return _Stored(job, int(values["version"]), int(values["seq"]))

    def _candidates(self, service: str, model: str | None, now: float, n: int) -> list[_Stored]:
        """Up to `n` queued jobs available at `now`, jobs for `model` first, each by rank."""
        ids: list[str] = []
        if model is not None:
            ids = self._available(self._key("ready", service, model), now, n, set())
        if len(ids) < n:
            ids += self._available(self._key("ready", service), now, n - len(ids), set(ids))
        return self._load_stored(ids)

    def _affine(
        self, service: str, models: Sequence[str], now: float, n: int, before: float | None
    ) -> list[_Stored]:
        """A model-affine lease's candidates (`affine_candidates` over `_RedisView`)."""
        view = _RedisView(self, service, now)
        jobs = affine_candidates(view, models, n, before, self._policy)
        return [view.stored[job.id] for job in jobs]

    def _available(self, index: str, now: float, n: int, skip: set[str]) -> list[str]:
        found: list[str] = []
        start, page = 0, max(2 * n, 16)
        while len(found) < n:
            members = self._redis.zrange(index, start, start + page - 1)
            if not members:
                break
            for member in members:
                available_at, _, job_id = member.split(":")
                if float(available_at) <= now and job_id not in skip and len(found) < n:
                    found.append(job_id)
            start += page
        return found

    def _sort_like_candidates(self, jobs: list[Job], model: str | None) -> None:
        """Jobs leased over several rounds, in the order one round would have given."""
        jobs.sort(key=lambda j: (model is None or j.model != model, j.rank(self._policy), j.available_at))

    def _finished_recently(self, service: str, now: float) -> int:
        return int(self._redis.zcount(self._key("finished", service), repr(now - ADMISSION_WINDOW), "+inf"))

    def _counters(self) -> tuple[int, ...]:
        values = self._redis.hmget(self._key("counters"), list(COUNTER_NAMES))
        return tuple(int(v or 0) for v in values)

    # -- writing ----------------------------------------------------------------------------------

    def _change(
        self, job_id: str, decide: Callable[[Job], Job], *, settling: bool = False, **counters: int
    ) -> Job:
        """Read the job, let `decide` compute its next value, write it unless it changed meanwhile;
        `counters` are added to the counters with the write (and, `settling` a delivery, a job that
        went back uncounted)."""
        for _ in range(CONFLICT_RETRIES):
            stored = self._load(job_id)
            new = decide(stored.job)
            counts = Counters()
            if not stored.job.state.final:
                counts.count_final(new)
            counts.split += settling and uncounted(stored.job, new)
            kept = {k: getattr(counts, k) for k in ("succeeded", "failed", "dead", "split")}
            if self._apply([(stored, new)], **kept, **counters):
                return new
        raise LeaseLost(f"job {job_id} kept changing under this write; try again")

    def _renewed(self, job: Job, owner: str, lease_seconds: float) -> Job:
        if job.state is not JobState.LEASED or job.lease_owner != owner:
            raise LeaseLost(f"job {job.id} is not leased to {owner}")
        return job.renew(owner, self._clock.now(), lease_seconds)

    def _report(self, job_id: str, owner: str, updates: Sequence[Update]) -> None:
        for _ in range(CONFLICT_RETRIES):
            values = self._redis.hgetall(self._key("job", job_id))
            stored = self._parse(values)
            if stored is None or not holds(stored.job, owner):
                return
            job, activity = stored.job, int(values.get("activity", 0))
            events: list[Appended] = []
            for update in updates:
                job, new = reported(job, update, activity + len(events))
                events += new
            if self._apply_report(stored, job, events):
                return

    def _apply_report(self, stored: _Stored, job: Job, events: list[Appended]) -> bool:
        writes = _Writes(job.id, str(stored.version))
        job_key = self._key("job", job.id)
        progress = [
            item
            for name in ("progress", "progress_message")
            if getattr(job, name) is not None
            for item in (name, _encode(getattr(job, name), name))
        ]
        writes.add("HSET", job_key, *progress, "version", str(stored.version + 1))
        writes.add("HINCRBY", job_key, "activity", str(len(events)))
        self._add_events(writes, job.id, events)
        return bool(self._run_groups([writes]))

    def _add_events(self, writes: _Writes, job_id: str, events: Iterable[Appended]) -> None:
        at = repr(self._clock.now())
        for kind, data in events:
            activity = kind in ACTIVITY_KINDS
            stream = self._key("activity" if activity else "events", job_id)
            log, cap = (
                (self._key("log", "activity"), ACTIVITY_LOG_MAX) if activity else (self._key("log"), LOG_MAX)
            )
            encoded = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
            writes.add("EVENT", self._key("eventseq"), stream, log, str(cap), job_id, kind, at, encoded)

    def _trim(self, now: float) -> None:
        """Delete the activity streams of jobs final for `event_retention` seconds, a batch a call."""
        self._trimmed_at = now
        cutoff = repr(now - self.event_retention)
        ids = self._redis.zrangebyscore(self._key("untrimmed"), "-inf", cutoff, start=0, num=TRIM_BATCH)
        if ids:
            keys = [self._key("untrimmed"), self._key("log", "activity")]
            self._trim_script(keys=keys, args=[cutoff, self.prefix, *ids])

    def _reap(self, services: Sequence[str], now: float) -> int:
        """Expire the leases of `services` that ran out, by expiry then submission (as every backend)."""
        ids = [
            i for s in services for i in self._redis.zrangebyscore(self._key("leased", s), "-inf", repr(now))
        ]
        expired = [s for s in self._load_stored(ids) if lease_expired(s.job, now)]
        expired.sort(key=lambda s: (s.job.lease_expires_at or 0.0, s.seq))
        changes = [(s, s.job.expire(now, self._policy)) for s in expired]
        reaped = 0
        for stored, new in changes:
            dead, split = int(new.state is JobState.DEAD), int(uncounted(stored.job, new))
            reaped += len(self._apply([(stored, new)], expired=1, dead=dead, split=split))
        return reaped

    def _apply(self, changes: Sequence[tuple[_Stored, Job]], **counters: int) -> list[Job]:
        """Write each (read, new) pair whose job is unchanged since read; returns those written."""
        if not changes:
            return []
        groups = []
        for stored, new in changes:
            writes = self._writes(stored, _Stored(new, stored.version + 1, stored.seq))
            for name, delta in counters.items():
                if delta:
                    writes.add("HINCRBY", self._key("counters"), name, str(delta))
            groups.append(writes)
        applied = self._run_groups(groups)
        return [new for (_, new), ok in zip(changes, applied, strict=True) if ok]

    def _run_groups(self, groups: Sequence[_Writes]) -> list[int]:
        """Run APPLY on `groups`: 1 for each applied, 0 for each whose job changed since read."""
        keys = _Keys([])
        encoded = [
            {"key": keys.index(self._key("job", w.job_id)), "version": w.version, "ops": keys.indexed(w.ops)}
            for w in groups
        ]
        return list(self._apply_script(keys=keys.names, args=[json.dumps(encoded)]))

    def _writes(self, old: _Stored | None, new: _Stored) -> _Writes:
        """The commands that take the job and every index from `old` to `new`."""
        job, seq = new.job, str(new.seq)
        writes = _Writes(job.id, "" if old is None else str(old.version))
        job_key = self._key("job", job.id)
        values = {name: getattr(job, name) for name in _JOB_FIELDS}
        empty = [name for name, value in values.items() if value is None]
        if empty:
            writes.add("HDEL", job_key, *empty)
        pairs = [
            item
            for name, value in values.items()
            if value is not None
            for item in (name, _encode(value, name))
        ]
        writes.add("HSET", job_key, *pairs, "version", str(new.version), "seq", seq)
        before = None if old is None else old.job
        if before is None:
            writes.add("ZADD", self._key("created"), seq, job.id)
            writes.add("ZADD", self._key("created", job.service), seq, job.id)
        if before is None or before.state is not job.state:
            self._move_state(writes, before, job, seq)
        self._index_ready(writes, before, job, seq)
        self._index_lease(writes, before, job)
        member = f"{new.seq:012d}:{job.id}"
        if job.finished_at is not None and (before is None or before.finished_at is None):
            writes.add("ZADD", self._key("finished", job.service), repr(job.finished_at), member)
            writes.add("ZADD", self._key("untrimmed"), repr(job.finished_at), job.id)
        elif job.finished_at is None and before is not None and before.finished_at is not None:
            writes.add("ZREM", self._key("finished", job.service), member)  # re-driven
            writes.add("ZREM", self._key("untrimmed"), job.id)
        self._add_events(writes, job.id, transition_events(before, job))
        step = delivery_step(before, job)
        if step is not None:
            now = repr(job.finished_at or self._clock.now())
            rows, due, open_ = self._key("deliveries", job.id), self._key("due"), self._key("open")
            writes.add(step.name, rows, due, open_, self._row_key(job.id, ""), now)
        return writes

    # -- the outbox -------------------------------------------------------------------------------

    def _row_key(self, job_id: str, channel: str) -> str:
        return self._key("delivery", job_id) + f":{channel}"

    def _add_deliveries(self, writes: _Writes, rows: Sequence[Delivery], seq: int) -> None:
        """The commands that make a new job's outbox rows (all waiting)."""
        for n, row in enumerate(rows):
            member = f"{seq:012d}:{n:03d}:{row.job_id}:{row.channel}"
            values = {
                "job_id": row.job_id,
                "channel": row.channel,
                "target": json.dumps(dict(row.target), separators=(",", ":"), ensure_ascii=False),
                "state": row.state.value,
                "attempts": str(row.attempts),
                "created_at": repr(float(row.created_at)),
                "progress_seq": str(row.progress_seq),
                "version": str(row.version),
                "member": member,
            }
            if row.expires_at is not None:
                values["expires_at"] = repr(float(row.expires_at))
            pairs = [item for pair in values.items() for item in pair]
            writes.add("HSET", self._row_key(row.job_id, row.channel), *pairs)
            writes.add("RPUSH", self._key("deliveries", row.job_id), row.channel)
            score = "+inf" if row.expires_at is None else values["expires_at"]
            writes.add("ZADD", self._key("open"), score, member)

    def _members(
        self, page: Callable[[int, int], list[str]], channels: Sequence[str] | None, limit: int
    ) -> list[tuple[str, str]]:
        """(job id, channel) of the first `limit` members of `channels` a zset gives, page by page."""
        found: list[tuple[str, str]] = []
        start, size = 0, max(limit, 100)
        while len(found) < limit:
            members = page(start, size)
            for member in members:
                _, _, job_id, channel = member.split(":", 3)
                if channels is None or channel in channels:
                    found.append((job_id, channel))
            if len(members) < size:
                break
            start += size
        return found[:limit]

    def _load_rows(self, keys: Sequence[tuple[str, str]]) -> list[Delivery]:
        pipe = self._redis.pipeline(transaction=False)
        for job_id, channel in keys:
            pipe.hgetall(self._row_key(job_id, channel))
        return [_delivery(values) for values in pipe.execute() if values]

    def _rows_with_jobs(
        self, keys: Sequence[tuple[str, str]], state: DeliveryState
    ) -> list[tuple[Delivery, Job]]:
        """The rows of `keys` still in `state` (one may have moved since its zset was read), with jobs."""
        rows = [row for row in self._load_rows(keys) if row.state is state]
        jobs = {job.id: job for job in self._load_many(dict.fromkeys(row.job_id for row in rows))}
        return [(row, jobs[row.job_id]) for row in rows if row.job_id in jobs]

    def _move_state(self, writes: _Writes, before: Job | None, job: Job, seq: str) -> None:
        depth = self._key("depth")
        if before is not None:
            writes.add("HINCRBY", depth, _depth_field(before.service, before.state), "-1")
            writes.add("ZREM", self._key("state", before.state.value), job.id)
        writes.add("HINCRBY", depth, _depth_field(job.service, job.state), "1")
        writes.add("ZADD", self._key("state", job.state.value), seq, job.id)

    def _index_ready(self, writes: _Writes, before: Job | None, job: Job, seq: str) -> None:
        if before is not None and before.state is JobState.QUEUED:
            for index in self._ready_indexes(before):
                writes.add("ZREM", index, _ready_member(before, seq))
        if job.state is JobState.QUEUED:
            for index in self._ready_indexes(job):
                writes.add("ZADD", index, repr(job.rank(self._policy)), _ready_member(job, seq))

    def _index_lease(self, writes: _Writes, before: Job | None, job: Job) -> None:
        leased = self._key("leased", job.service)
        if job.state is JobState.LEASED and job.lease_expires_at is not None:
            writes.add("ZADD", leased, repr(job.lease_expires_at), job.id)
        elif before is not None and before.state is JobState.LEASED:
            writes.add("ZREM", leased, job.id)

    def _ready_indexes(self, job: Job) -> list[str]:
        indexes = [self._key("ready", job.service)]
        if job.model is not None:
            indexes.append(self._key("ready", job.service, job.model))
        return indexes


class _RedisView:
    """`ReadyView` over the `ready` zsets (read without a lock: the lease's versioned APPLY refuses
    a job another worker took meanwhile). `stored` keeps what was read, for that write."""

    def __init__(self, queue: RedisQueue, service: str, now: float) -> None:
        self.queue, self.service, self.now = queue, service, now
        self.stored: dict[str, _Stored] = {}

    def starved(self, before: float, n: int) -> list[Job]:
        """Scans `ready:{service}` up to rank `before + aging`: no starved job ranks above it."""
        index = self.queue._key("ready", self.service)
        bound = repr(before + self.queue._policy.aging_seconds)
        found: list[str] = []
        start, page = 0, max(2 * n, 16)
        while len(found) < n:
            members = self.queue._redis.zrangebyscore(index, "-inf", bound, start=start, num=page)
            if not members:
                break
            for member in members:
                available_at, _, job_id = member.split(":")
                if float(available_at) <= min(before, self.now) and len(found) < n:
                    found.append(job_id)
            start += page
        return self._jobs(found)

    def of_model(self, model: str | None, n: int) -> list[Job]:
        if model is not None:
            return self._jobs(
                self.queue._available(self.queue._key("ready", self.service, model), self.now, n, set())
            )
        window = max(NO_MODEL_WINDOW, 4 * n)  # jobs naming no model have no index of their own
        ids = self.queue._available(self.queue._key("ready", self.service), self.now, window, set())
        return [job for job in self._jobs(ids) if job.model is None][:n]

    def first(self) -> Job | None:
        found = self._jobs(self.queue._available(self.queue._key("ready", self.service), self.now, 1, set()))
        return found[0] if found else None

    def _jobs(self, ids: list[str]) -> list[Job]:
        stored = [s for s in self.queue._load_stored(ids) if s.job.state is JobState.QUEUED]
        self.stored.update((s.job.id, s) for s in stored)
        return [s.job for s in stored]


def _delivery(values: dict[str, str]) -> Delivery:
    def number(name: str) -> float | None:
        return float(values[name]) if name in values else None

    return Delivery(
        job_id=values["job_id"],
        channel=values["channel"],
        target=json.loads(values["target"]),
        state=DeliveryState(values["state"]),
        attempts=int(values["attempts"]),
        next_at=number("next_at"),
        error=values.get("error"),
        expires_at=number("expires_at"),
        created_at=float(values["created_at"]),
        progress_seq=int(values.get("progress_seq", 0)),
        version=int(values["version"]),
    )


def _depth_field(service: str, state: JobState) -> str:
    return f"{service}|{state.value}"


def _ready_member(job: Job, seq: str) -> str:
    """Sorts ties in rank by availability, then submission, as every backend does."""
    return f"{job.available_at:020.6f}:{int(seq):012d}:{job.id}"


def _member_id(member: str) -> str:
    return member.rsplit(":", 1)[1]
