"""Typed configuration: `swell.yaml` plus `SWELL_*` environment variables, validated when loaded.

    services:
      - name: embeddings
        engine: embeddings            # a registry name or "package.module:attr"
        options: {model: all-MiniLM-L6-v2}   # or {dataset: NAME}, a key of `datasets`
        replicas: {min: 1, max: 2}
        max_batch_size: 32
        job_timeout: 60
        max_attempts: 3
        pass_env: [OPENAI_API_KEY]    # extra variables its workers inherit (swell.cluster.local)
    datasets: {...}                   # swell.data.config.DatasetConfig
    brain: {...}                      # swell.brain.config.BrainConfig

An error names the bad key (as a dotted path) and the file. `parse_config` (and so `load_config`)
also checks every service's engine through swell.engines.registry: the engine is known, its options
are valid for it (`services[NAME].options.KEY`), and a callable's function imports. That check imports
the user's modules but never torch.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from swell.brain.config import BrainConfig
from swell.core.errors import ConfigError
from swell.data.config import DatasetConfig

ENV_PREFIX = "SWELL_"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*\*?$"  # a variable's name, or a prefix ending in *
GATEWAY_SECRETS = ("SWELL_API_KEY", "SWELL_WEBHOOK_SECRET")  # never passed to a worker


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Replicas(Strict):
    min: int = Field(default=1, ge=0)
    max: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


MEMORY_PATTERN = r"^[0-9]+(\.[0-9]+)?([KMGT]i?)?$"  # bytes, or 512Mi, 16G, 1.5Ti (Kubernetes quantities)


class Resources(Strict):
    """What one replica of a service needs from the node it is placed on (Ray, Kubernetes)."""

    gpus: float = Field(default=0.0, ge=0, le=64)  # a fraction shares one GPU with other replicas
    cpus: float = Field(default=1.0, gt=0, le=512)
    memory: str | None = Field(default=None, pattern=MEMORY_PATTERN)  # host memory, e.g. "16Gi"
    gpu_kind: str | None = Field(default=None, pattern=NAME_PATTERN)  # e.g. "a10g": a node group per kind
    custom: dict[str, float] = Field(default_factory=dict)  # Ray custom resources
    spot: bool = False  # may run on preemptible (Spot) nodes
    warm_cache: Literal["soft", "hard", "off"] = "soft"  # prefer (or require) a node holding the model

    @model_validator(mode="after")
    def _whole_gpus_above_one(self) -> Resources:
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise ValueError(f"gpus above 1 must be whole ({self.gpus}); fractions share one GPU")
        return self


class ClusterConfig(Strict):
    """Where replicas run: `local` processes (the default), a `ray` cluster, or `module:attr`."""

    kind: str = "local"
    address: str | None = None  # ray: "ray://host:10001" or "auto"; None: the kind's default
    namespace: str = Field(default="swell", pattern=NAME_PATTERN)
    results_url: str | None = None  # where result files go when nodes share no disk (s3://, file://)


class ServiceConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    engine: str
    options: dict[str, Any] = Field(default_factory=dict)
    replicas: Replicas = Field(default_factory=Replicas)
    max_batch_size: int = Field(default=1, ge=1, le=4096)
    job_timeout: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=100)
    queue_limit: int = Field(default=10_000, ge=1)  # queued + leased jobs before submit answers 429
    lease_seconds: float = Field(default=30.0, gt=0)  # renewed by the worker while a job runs
    # variables (names, or prefixes ending in *) this service's workers inherit beyond the allow-list
    pass_env: list[str] = Field(default_factory=list, max_length=100)
    resources: Resources = Field(default_factory=Resources)

    @field_validator("pass_env")
    @classmethod
    def _no_gateway_secrets(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(ENV_NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not an environment variable's name (or a prefix ending in *)")
            if any(fnmatch.fnmatchcase(secret, name) for secret in GATEWAY_SECRETS):
                raise ValueError(f"{name!r} would pass the gateway's secrets to workers")
        return names


class GatewayConfig(Strict):
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_wait_seconds: float = Field(default=300.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_timeout: float = Field(default=10.0, gt=0)
    # The serving path's limits (swell.gateway.limits.GatewayLimits reads them; docs/usage.md explains).
    max_header_bytes: int = Field(default=16_384, ge=1024)
    max_connections: int = Field(default=1024, ge=1)
    keep_alive_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=30.0, gt=0)
    max_pending_submits: int = Field(default=4096, ge=1)
    max_storage_backlog: int = Field(default=512, ge=1)
    max_loop_lag_seconds: float = Field(default=0.5, gt=0)
    storage_threads: int = Field(default=8, ge=1, le=256)
    dns_threads: int = Field(default=4, ge=1, le=64)
    dns_timeout_seconds: float = Field(default=5.0, gt=0)
    retry_after_seconds: float = Field(default=1.0, gt=0)


class SwellConfig(Strict):
    services: list[ServiceConfig] = Field(default_factory=list)
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    brain: BrainConfig = Field(default_factory=lambda: BrainConfig.model_validate({}))  # typed for mypy

    @model_validator(mode="after")
    def _unique_services(self) -> SwellConfig:
        names = [s.name for s in self.services]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"service names must be unique; repeated: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _known_datasets(self) -> SwellConfig:
        """An engine option `dataset: NAME` must name a key of `datasets` (the error is at that option)."""
        for index, service in enumerate(self.services):
            if "dataset" not in service.options:
                continue
            name = service.options["dataset"]
            if not isinstance(name, str):
                message = "must be the name of a dataset (a string)"
            elif name not in self.datasets:
                known = ", ".join(sorted(self.datasets)) or "none"
                message = f"no dataset named {name!r} in datasets (known: {known})"
            else:
                continue
            error = InitErrorDetails(
                type=PydanticCustomError("unknown_dataset", message),
                loc=("services", index, "options", "dataset"),
                input=name,
            )
            raise pydantic.ValidationError.from_exception_data(type(self).__name__, [error])
        return self

    def service(self, name: str) -> ServiceConfig:
        from swell.core.errors import ServiceNotFound

        for service in self.services:
            if service.name == name:
                return service
        raise ServiceNotFound(f"no service named {name!r}", field="service")


def demo_config() -> SwellConfig:
    """What `swell up` serves with no file: the real all-MiniLM-L6-v2, offline."""
    return SwellConfig(
        services=[
            ServiceConfig(
                name="embeddings",
                engine="embeddings",
                options={"model": "all-MiniLM-L6-v2"},
                replicas=Replicas(min=1, max=2),
                max_batch_size=32,
                job_timeout=60,
            )
        ]
    )


def load_config(path: str | Path | None) -> SwellConfig:
    """Load and validate `path` (YAML), or the demo when `path` is None."""
    if path is None:
        return demo_config()
    file = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError("configuration file not found", file=file) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=file) from None
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping", file=file)
    return parse_config(raw, file=file)


def parse_config(raw: dict[str, Any], *, file: str | None = None) -> SwellConfig:
    """Validate `raw` (swell.yaml's content) and every service's engine; errors name the key."""
    try:
        config = SwellConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        key = _dotted(error["loc"], raw)
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(message, key=key or "(top level)", file=file) from None
    check_engines(config, raw, file=file)
    return config


def check_engines(config: SwellConfig, raw: Any = None, *, file: str | None = None) -> None:
    """Refuse a service whose engine is unknown or does not import, or whose options do not fit it:
    a ConfigError at `services[NAME].engine` or `services[NAME].options.KEY`."""
    from swell.engines.registry import engine_problem  # imports no engine, and no torch

    for index, service in enumerate(config.services):
        problem = engine_problem(service.engine, service.options)
        if problem is not None:
            where = _dotted(("services", index), raw if raw is not None else config.model_dump())
            raise ConfigError(problem.message, key=f"{where}.{problem.key}", file=file)


def _dotted(loc: tuple[Any, ...], raw: Any) -> str:
    """`('services', 0, 'replicas', 'min')` -> `services[embeddings].replicas.min`."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            name = node[item].get("name") if isinstance(node, list) and isinstance(node[item], dict) else None
            parts[-1] += f"[{name or item}]"
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


class Settings(BaseModel):
    """Process settings from `SWELL_*` variables and command-line flags (flags win)."""

    model_config = ConfigDict(frozen=True)

    data_dir: Path = Path(".swell")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: str | None = None
    auth: bool = True
    webhook_secret: str | None = None
    callback_allow_hosts: frozenset[str] = frozenset()
    queue_url: str | None = None  # default: sqlite in data_dir

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in ("data_dir", "host", "port", "api_key", "webhook_secret", "queue_url"):
            if (value := env.get(ENV_PREFIX + name.upper())) not in (None, ""):
                values[name] = value
        if hosts := env.get(ENV_PREFIX + "CALLBACK_ALLOW_HOSTS"):
            values["callback_allow_hosts"] = frozenset(
                h.strip().lower() for h in re.split(r"[,\s]+", hosts) if h
            )
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except pydantic.ValidationError as exc:
            error = exc.errors()[0]
            key = ENV_PREFIX + str(error["loc"][0]).upper()
            raise ConfigError(error["msg"], key=key) from None

    @property
    def database_url(self) -> str:
        return self.queue_url or f"sqlite:///{self.data_dir / 'swell.db'}"
