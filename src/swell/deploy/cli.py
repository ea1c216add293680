"""`swell deploy kubernetes`: write the manifests for a Kubernetes cluster with KubeRay.

Secrets come from SWELL_API_KEY / SWELL_WEBHOOK_SECRET / SWELL_RAY_AUTH_TOKEN (never from flags, which
shells keep in their history), else from the `secrets.yaml` an earlier run wrote in the same
directory, else they are generated; they are written to `secrets.yaml` (mode 0600) and never printed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar, cast

import typer
from rich.console import Console
from rich.markup import escape

from swell.core.errors import ConfigError, SwellError
from swell.deploy import kubernetes as k8s

T = TypeVar("T")

app = typer.Typer(
    name="deploy", help="Deploy past one machine: Kubernetes with KubeRay.", no_args_is_help=True
)
err = Console(stderr=True)

SECRET_ENV = {
    "api_key": "SWELL_API_KEY",
    "webhook_secret": "SWELL_WEBHOOK_SECRET",
    "ray_token": "SWELL_RAY_AUTH_TOKEN",
}
SECRETS_FILE = "secrets.yaml"


@app.callback()
def deploy() -> None:
    """Write what runs Swell on a cluster."""


@app.command()
def kubernetes(
    config: Annotated[Path, typer.Option("--config", "-c", help="swell.yaml to deploy.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory the manifests are written to.")],
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "swell",
    image: Annotated[
        str | None, typer.Option("--image", help="Swell image (with ray); default swell:VERSION.")
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option("--redis-url", envvar="SWELL_REDIS_URL", help="External Redis: no Redis is deployed."),
    ] = None,
    name: Annotated[
        str, typer.Option("--name", help="Prefix of every object; the RayCluster's name.")
    ] = "swell",
    node_label: Annotated[
        str, typer.Option("--node-label", help="Node label that names a node's GPU kind.")
    ] = "swell.dev/gpu-kind",
    kind_value: Annotated[
        list[str] | None, typer.Option("--kind-value", help="KIND=VALUE: the label's value for a gpu_kind.")
    ] = None,
    gpus_per_node: Annotated[
        list[str] | None, typer.Option("--gpus-per-node", help="KIND=N: GPUs a node of that kind has.")
    ] = None,
    cache_volume: Annotated[
        str, typer.Option("--cache-volume", help="emptydir (restricted pods) or hostpath (outlives the pod).")
    ] = "emptydir",
    cache_size: Annotated[str, typer.Option("--cache-size", help="Node cache volume size.")] = "100Gi",
    drain_seconds: Annotated[
        float, typer.Option("--drain-seconds", min=1, help="A worker's grace period on SIGTERM.")
    ] = 25.0,
    storage_class: Annotated[
        str | None, typer.Option("--storage-class", help="Redis volume's class.")
    ] = None,
) -> None:
    """Write namespace, config, secrets, Redis, gateway and RayCluster manifests to OUT."""
    from swell.core.config import load_config

    try:
        options = k8s.DeployOptions(
            name=_dns_name(name, "--name"),
            namespace=_dns_name(namespace, "--namespace"),
            image=image or k8s.DeployOptions().image,
            redis_url=redis_url,
            node_label=node_label,
            kind_values=_pairs(kind_value, "--kind-value", str),
            gpus_per_node=_pairs(gpus_per_node, "--gpus-per-node", int),
            cache_volume=_cache_volume(cache_volume),
            cache_size=cache_size,
            drain_seconds=drain_seconds,
            storage_class=storage_class,
        )
        swell = load_config(config)
        files = k8s.render(swell, options, _secrets(out, options))
        written = write(out, files)
    except SwellError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    except OSError as exc:
        err.print(
            f"[bold red]error:[/] {escape(f'{exc.strerror or exc}: {exc.filename or out}')}", soft_wrap=True
        )
        raise typer.Exit(1) from None
    for warning in k8s.warnings(swell):
        err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True, highlight=False)
    for path in written:
        err.print(escape(str(path)), soft_wrap=True, highlight=False)
    err.print(f"apply with: kubectl apply -f {escape(str(out))}", soft_wrap=True, highlight=False)


def write(out: Path, files: dict[str, str]) -> list[Path]:
    """Write each file atomically; secrets.yaml is private (0600) from its first byte."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in sorted(files.items()):
        path = out / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        mode = 0o600 if name == SECRETS_FILE else 0o644
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)  # whatever the umask
        os.replace(tmp, path)
        written.append(path)
    return written


def _secrets(out: Path, options: k8s.DeployOptions) -> k8s.Secrets:
    """Environment first, then the previous run's secrets.yaml, then fresh random values."""
    previous = out / SECRETS_FILE
    kept = k8s.read_secrets(previous.read_text(), options) if previous.is_file() else {}
    given = {field: os.environ.get(env) or kept.get(field) for field, env in SECRET_ENV.items()}
    return k8s.Secrets.generate(**given, redis_password=kept.get("redis_password"))


def _pairs(items: list[str] | None, flag: str, kind: Callable[[str], T]) -> dict[str, T]:
    pairs: dict[str, T] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            pairs[key] = kind(value)
        except ValueError:
            raise ConfigError(f"{item!r} is not KEY=VALUE", key=flag) from None
    return pairs


def _cache_volume(value: str) -> Literal["emptydir", "hostpath"]:
    if value not in ("emptydir", "hostpath"):
        raise ConfigError(f"{value!r}: use emptydir or hostpath", key="--cache-volume")
    return cast(Literal["emptydir", "hostpath"], value)


def _dns_name(value: str, flag: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?", value):
        raise ConfigError(f"{value!r} is not a DNS label of at most 40 characters", key=flag)
    return value
