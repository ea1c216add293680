"""`swell data ...`: preload, list and evict the datasets of the node cache."""

from __future__ import annotations

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


def _setup(config: Path | None, data_dir: Path) -> tuple[dict[str, DatasetConfig], NodeCache]:
    from swell.core.config import load_config
    from swell.data.cache import NodeCache

    return load_config(config).datasets, NodeCache(data_dir / "cache")


def _fail(exc: SwellError) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {exc}", soft_wrap=True)
    return typer.Exit(1)


@app.command()
def preload(name: str, config: ConfigOpt = None, data_dir: DataDirOpt = Path(".swell")) -> None:
    """Fetch a dataset into the node cache."""
    from swell.data.datasets import preload as do_preload
    from swell.data.datasets import resolve

    try:
        datasets, cache = _setup(config, data_dir)
        if name not in datasets:
            raise NotFound(f"no dataset named {name!r} (known: {', '.join(sorted(datasets)) or 'none'})")
        manifest = resolve(name, datasets[name], cache)
        columns = ("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task(name, total=manifest.size)
            done = do_preload(name, datasets[name], cache, lambda n: bar.advance(task, n))
    except SwellError as exc:
        raise _fail(exc) from None
    stats = cache.statistics()
    console.print(
        f"{name}: {len(done.files)} files, {done.size} bytes, revision {done.revision}; "
        f"{stats.bytes_from_origin} bytes from the origin",
        soft_wrap=True,
    )


@app.command("ls")
def ls(data_dir: DataDirOpt = Path(".swell")) -> None:
    """List the datasets in the node cache with their cached bytes."""
    from swell.data.cache import NodeCache
    from swell.data.datasets import cached_bytes, stored_manifests

    cache = NodeCache(data_dir / "cache")
    table = Table("dataset", "revision", "files", "bytes", "cached bytes", "source")
    for m in stored_manifests(cache):
        held = cached_bytes(m, cache)
        table.add_row(m.name, m.revision, str(len(m.files)), str(m.size), str(held), m.source)
    console.print(table)


@app.command()
def evict(name: str, data_dir: DataDirOpt = Path(".swell")) -> None:
    """Drop a dataset's chunks (those not in use) from the node cache."""
    from swell.data.cache import NodeCache
    from swell.data.datasets import evict as do_evict

    try:
        freed = do_evict(name, NodeCache(data_dir / "cache"))
    except SwellError as exc:
        raise _fail(exc) from None
    console.print(f"{name}: {freed} bytes freed", soft_wrap=True)
