"""Typed configuration of the `brain:` section of swell.yaml (owned by the brain)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class BrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["off", "dry-run", "enforce"] = "dry-run"
    policy: str = "swell"
    tick_seconds: float = Field(10.0, gt=0)
