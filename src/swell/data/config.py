"""Typed configuration of the `datasets:` section of swell.yaml (owned by the data plane)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str  # file://, s3://, http(s)://
    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)
    revision: str | None = None
