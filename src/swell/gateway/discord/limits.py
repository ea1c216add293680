"""Per-user limits of the Discord door: commands per minute and unfinished jobs at once.

Both are pure bookkeeping over times the caller passes in (no clock is read here).

- The rate is a sliding window: a user may start `per_minute` commands in any 60 seconds.
- Concurrency counts the jobs a user has that are not yet answered. A job is held from its submit
  until its follow-up is delivered or its token expires (`release`), and never past `until` (the
  token's 15 minutes), so a release that never comes (a restart, a lost dispatcher) frees the slot
  by itself. The door may also ask storage which held jobs are already final (`drop`) before it
  refuses a user as over the cap.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW = 60.0  # seconds of the per-user rate


@dataclass(slots=True)
class _User:
    starts: deque[float] = field(default_factory=deque)  # command times within the window, oldest first
    jobs: dict[str, float] = field(default_factory=dict)  # job id -> the time it stops counting


class UserLimits:
    """Commands per minute and unfinished jobs per user (see the module docstring)."""

    def __init__(self, per_minute: int, concurrency: int) -> None:
        self.per_minute = per_minute
        self.concurrency = concurrency
        self._users: dict[str, _User] = {}
        self._owners: dict[str, str] = {}  # job id -> user id

    def rate_wait(self, user: str, now: float) -> float:
        """Seconds until `user` may start another command (0: now); counts nothing."""
        state = self._users.get(user)
        if state is None:
            return 0.0
        while state.starts and state.starts[0] <= now - WINDOW:
            state.starts.popleft()
        if len(state.starts) < self.per_minute:
            return 0.0
        return state.starts[0] + WINDOW - now

    def held(self, user: str, now: float) -> list[str]:
        """The jobs `user` has unanswered (those past their `until` are let go first)."""
        state = self._users.get(user)
        if state is None:
            return []
        for job_id in [job for job, until in state.jobs.items() if until <= now]:
            self.release(job_id)
        return list(state.jobs)

    def start(self, user: str, now: float) -> None:
        """Count a command of `user` at `now` against the rate."""
        self._users.setdefault(user, _User()).starts.append(now)

    def hold(self, user: str, job_id: str, until: float) -> None:
        """Count `job_id` as one of `user`'s unfinished jobs until it is released or `until`."""
        self._users.setdefault(user, _User()).jobs[job_id] = until
        self._owners[job_id] = user

    def release(self, job_id: str) -> None:
        """`job_id` is answered (or can no longer be): it stops counting. Unknown ids are ignored."""
        user = self._owners.pop(job_id, None)
        state = None if user is None else self._users.get(user)
        if user is None or state is None:
            return
        state.jobs.pop(job_id, None)
        if not state.jobs and not state.starts:
            del self._users[user]

    def prune(self, now: float) -> None:
        """Forget users with nothing in the window and nothing held (bounded memory)."""
        for user in list(self._users):
            self.rate_wait(user, now)
            self.held(user, now)
            state = self._users.get(user)
            if state is not None and not state.starts and not state.jobs:
                del self._users[user]

    def statistics(self) -> dict[str, int]:
        return {"users": len(self._users), "held_jobs": len(self._owners)}

    def __repr__(self) -> str:
        return (
            f"UserLimits(per_minute={self.per_minute}, concurrency={self.concurrency}, {self.statistics()})"
        )


__all__ = ["WINDOW", "UserLimits"]
