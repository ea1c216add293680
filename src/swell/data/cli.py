"""`swell data ...`: preload, list and evict the datasets of the node cache."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from swell.core.errors import NotFound, SwellError

if TYPE_CHECKING:
    from swell.data.cache import NodeCache
    from swell.data.config import DatasetConfig

app = typer.Typer(name="data", help="Datasets of model files in the node cache.", no_args_is_help=True)
console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="swell.yaml (datasets: section).")]
DataDirOpt = Annotated[Path, typer.Option("--data-dir", envvar="SWELL_DATA_DIR", help="Holds the cache.")]
QuotaOpt = Annotated[
    str | None,
    typer.Option("--quota", envvar="SWELL_CACHE_QUOTA", help="Byte quota of the cache, e.g. 50G or 512MiB."),
]


def _cache(data_dir: Path, quota: str | None = None) -> NodeCache:
    from swell.core.errors import ConfigError
    from swell.data.cache import open_node_cache, parse_bytes

    try:
        quota_bytes = parse_bytes(quota) if quota else None
    except ValueError as exc:
        raise ConfigError(str(exc), key="--quota") from None
    return open_node_cache(data_dir, quota_bytes=quota_bytes)


def _setup(
    config: Path | None, data_dir: Path, quota: str | None
) -> tuple[dict[str, DatasetConfig], NodeCache]:
    from swell.core.config import load_config

    return load_config(config).datasets, _cache(data_dir, quota)


def _fail(exc: SwellError) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {exc}", soft_wrap=True)
    return typer.Exit(1)


@app.command()
def preload(
    name: str, config: ConfigOpt = None, data_dir: DataDirOpt = Path(".swell"), quota: QuotaOpt = None
) -> None:
    """Fetch a dataset into the node cache."""
    from swell.data.datasets import preload as do_preload
    from swell.data.datasets import resolve

    try:
        datasets, cache = _setup(config, data_dir, quota)
        if name not in datasets:
            raise NotFound(f"no dataset named {name!r} (known: {', '.join(sorted(datasets)) or 'none'})")
        manifest = resolve(name, datasets[name], cache)
        columns = ("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task(name, total=manifest.size)
            done = do_preload(name, datasets[name], cache, lambda n: bar.advance(task, n))
    except SwellError as exc:
        raise _fail(exc) from None
    stats = cache.process_statistics()
    console.print(
        f"{name}: {len(done.files)} files, {done.size} bytes, revision {done.revision}; "
        f"{stats.bytes_from_origin} bytes from the origin",
        soft_wrap=True,
    )


@app.command("ls")
def ls(data_dir: DataDirOpt = Path(".swell")) -> None:
    """List the datasets in the node cache with their cached bytes."""
    from swell.data.datasets import cached_bytes, stored_manifests

    try:
        cache = _cache(data_dir)
    except SwellError as exc:
        raise _fail(exc) from None
    table = Table("dataset", "revision", "files", "bytes", "cached bytes", "source")
    for m in stored_manifests(cache):
        held = cached_bytes(m, cache)
        table.add_row(m.name, m.revision, str(len(m.files)), str(m.size), str(held), m.source)
    console.print(table)
    stats = cache.statistics()
    quota = f"{cache.quota_bytes} bytes" if cache.quota_bytes is not None else "none"
    console.print(
        f"cache {cache.root}: {cache.usage()} bytes in chunks, quota {quota}; "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in asdict(stats).items()),
        soft_wrap=True,
    )


@app.command()
def evict(name: str, data_dir: DataDirOpt = Path(".swell")) -> None:
    """Drop a dataset's chunks (those not in use) from the node cache."""
    from swell.data.datasets import evict as do_evict

    try:
        freed = do_evict(name, _cache(data_dir))
    except SwellError as exc:
        raise _fail(exc) from None
    console.print(f"{name}: {freed} bytes freed", soft_wrap=True)
