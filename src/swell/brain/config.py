"""Typed configuration of the `brain:` section of swell.yaml (owned by the brain).

Imported by `swell.core.config`, so it holds only pydantic models: no policy code is loaded here.

    brain:
      mode: dry-run            # off | dry-run (plan logged and shown) | enforce (supervisor follows it)
      policy: swell            # a name from swell.brain.policies.POLICIES
      options: {}              # its knobs, e.g. {keep_alive: 3600} (see docs/brain.md)
      tick_seconds: 10
      slo_wait_seconds: 30     # a job meets the SLO when it waits at most this long in the queue
      slo_target: 0.99         # below this attainment (over fallback_window_seconds) use `reactive_policy`
      fallback_window_seconds: 300
      reactive_policy: concurrency
      reactive_options: {}
      max_changes_per_minute: 6
      start_seconds: 100       # time to bring up a replica (node request to serving), the forecast horizon
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class BrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["off", "dry-run", "enforce"] = "dry-run"
    policy: str = "swell"
    options: dict[str, float] = Field(default_factory=dict)  # the policy's knobs, e.g. {keep_alive: 3600}
    tick_seconds: float = Field(10.0, gt=0)
    slo_wait_seconds: float = Field(30.0, gt=0)
    slo_target: float = Field(0.99, gt=0, le=1)
    fallback_window_seconds: float = Field(300.0, gt=0)
    reactive_policy: str = "concurrency"
    reactive_options: dict[str, float] = Field(default_factory=dict)
    max_changes_per_minute: int = Field(6, ge=1)
    start_seconds: float = Field(100.0, ge=0)
