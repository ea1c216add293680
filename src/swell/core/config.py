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
      - name: sd
        engine: diffusers
        options: {device: cuda, steps: 25}
        models:                       # checkpoints: a job's `model` picks one; options merged over
          sd15: {dataset: sd15}       # `options` and checked like them (services[sd].models.sd15.KEY)
          dreamshaper: {dataset: dreamshaper, steps: 30}
        default_model: sd15           # a job naming none; default: the first key
        affinity: {max_loaded: 2, memory_budget: 20Gi, max_wait_seconds: 30}
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
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from swell.brain.config import BrainConfig
from swell.core.errors import ConfigError
from swell.data.config import DatasetConfig
from swell.gateway.a1111.config import A1111Config
from swell.gateway.discord.config import BOT_TOKEN_ENV, DiscordConfig
from swell.gateway.filtering import FilterConfig

ENV_PREFIX = "SWELL_"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*\*?$"  # a variable's name, or a prefix ending in *
GATEWAY_SECRETS = ("SWELL_API_KEY", "SWELL_WEBHOOK_SECRET", BOT_TOKEN_ENV)  # never passed to a worker


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


MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # a checkpoint's name (a job's `model`)


class Affinity(Strict):
    """How a worker of a service with several `models` keeps checkpoints loaded (swell.worker.models).

    `max_loaded` engines are held at once, fewer when `memory_budget` is set and the measured
    footprint (GPU memory when CUDA is in use, else the process's RSS) is above it: the least
    recently used one is unloaded first. A worker leases jobs for the models it holds first; a job
    for another model is taken only when none of those wait, or once it has waited
    `max_wait_seconds` (the starvation guard: a cold model's jobs are never held back for ever).
    """

    max_loaded: int = Field(default=1, ge=1, le=64)
    memory_budget: str | None = Field(default=None, pattern=MEMORY_PATTERN)  # e.g. "12Gi"
    max_wait_seconds: float = Field(default=30.0, gt=0)
    prefer_held: bool = True  # False: plain rank order, a switch whenever the next job needs one

    @property
    def budget_bytes(self) -> int | None:
        return None if self.memory_budget is None else memory_bytes(self.memory_budget)


def memory_bytes(text: str) -> int:
    """A quantity MEMORY_PATTERN accepts (`12Gi`, `512M`, `1000`) in bytes."""
    unit = text.lstrip("0123456789.")
    number = float(text[: len(text) - len(unit)])
    power = "KMGT".index(unit[0]) + 1 if unit else 0
    return int(number * (1024 if unit.endswith("i") else 1000) ** power)


class ServiceConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    engine: str
    options: dict[str, Any] = Field(default_factory=dict)
    # checkpoint name -> engine options merged over `options` for it; a job's `model` picks one
    models: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=1000)
    # what a job naming no model gets; default: the first of `models`
    default_model: str | None = Field(default=None, validate_default=True)
    affinity: Affinity = Field(default_factory=Affinity)
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

    @field_validator("models")
    @classmethod
    def _model_names(cls, models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in models:
            if not re.fullmatch(MODEL_NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not a checkpoint name (letters, digits, '.', '_', '-')")
        return models

    @field_validator("default_model")
    @classmethod
    def _default_model_known(cls, name: str | None, info: ValidationInfo) -> str | None:
        """A key of `models`; left out, the first key (None without models). Runs on the default
        too (`validate_default`), after `models` (declared first) was validated."""
        models = info.data.get("models")
        if models is None:  # `models` itself was refused; that error is the one reported
            return name
        if name is None:
            return next(iter(models), None)
        if name not in models:
            known = ", ".join(models) or "none"
            raise ValueError(f"{name!r} is not a key of models (known: {known})")
        return name

    def model_options(self, model: str | None) -> dict[str, Any]:
        """The engine options of checkpoint `model` (its entry merged over `options`); `options`
        itself for None or a service without `models`. KeyError for an unknown checkpoint."""
        if model is None or not self.models:
            return dict(self.options)
        return {**self.options, **self.models[model]}


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
    filter: FilterConfig = Field(default_factory=FilterConfig)  # swell.gateway.filtering


class SwellConfig(Strict):
    services: list[ServiceConfig] = Field(default_factory=list)
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    brain: BrainConfig = Field(default_factory=lambda: BrainConfig.model_validate({}))  # typed for mypy
    a1111: A1111Config = Field(default_factory=A1111Config)  # swell.gateway.a1111.config
    discord: DiscordConfig | None = None  # swell.gateway.discord.config; None: no Discord door

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
            places: list[tuple[tuple[str, ...], dict[str, Any]]] = [(("options",), service.options)]
            places += [(("models", model), options) for model, options in service.models.items()]
            for where, options in places:
                if "dataset" in options:
                    self._check_dataset(options["dataset"], ("services", index, *where, "dataset"))
        return self

    def _check_dataset(self, name: Any, loc: tuple[str | int, ...]) -> None:
        if not isinstance(name, str):
            message = "must be the name of a dataset (a string)"
        elif name not in self.datasets:
            known = ", ".join(sorted(self.datasets)) or "none"
            message = f"no dataset named {name!r} in datasets (known: {known})"
        else:
            return
        error = InitErrorDetails(type=PydanticCustomError("unknown_dataset", message), loc=loc, input=name)
        raise pydantic.ValidationError.from_exception_data(type(self).__name__, [error])

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
    a ConfigError at `services[NAME].engine` or `services[NAME].options.KEY`; with `models`, each
    checkpoint's merged options are checked, at `services[NAME].models.MODEL.KEY`."""
    from swell.engines.registry import engine_problem  # imports no engine, and no torch

    for index, service in enumerate(config.services):
        where = _dotted(("services", index), raw if raw is not None else config.model_dump())
        # with `models`, `options` is only what the checkpoints share: each merge is checked instead
        problem = None if service.models else engine_problem(service.engine, service.options)
        if problem is not None:
            raise ConfigError(problem.message, key=f"{where}.{problem.key}", file=file)
        for model in service.models:
            problem = engine_problem(service.engine, service.model_options(model))
            if problem is not None:
                raise ConfigError(problem.message, key=_model_key(where, model, problem.key), file=file)


def _model_key(where: str, model: str, key: str) -> str:
    """A problem of checkpoint `model`'s options (`options.steps`) at `services[S].models.MODEL.steps`;
    one of the engine itself stays at `services[S].engine`."""
    if key != "options" and not key.startswith("options."):
        return f"{where}.{key}"
    rest = key.removeprefix("options").lstrip(".")
    return f"{where}.models.{model}" + (f".{rest}" if rest else "")


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
