"""Typed configuration of the `datasets:` section of swell.yaml (owned by the data plane).

Light on purpose: swell.core.config imports it, so it needs nothing beyond pydantic.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMES = ("file://", "s3://", "http://", "https://", "memory://")


class DatasetConfig(BaseModel):
    """A named set of model files at a source URI.

    S3 credentials come from these fields or, when unset, from the usual AWS_* variables
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str  # file://, s3://, http(s)://
    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)
    revision: str | None = None  # pins the manifest; unset: the manifest follows the listing
    endpoint: str | None = None  # S3-compatible endpoint, e.g. http://127.0.0.1:9000
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    anonymous: bool = False  # unsigned S3 requests (public buckets)

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(SCHEMES):
            raise ValueError(f"source must start with one of {', '.join(SCHEMES)}")
        return value
