"""Swell's command line: `swell up` serves; the other commands talk to a running gateway over HTTP."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from swell.client import SwellClient, read_api_key
from swell.core.errors import SwellError

app = typer.Typer(
    name="swell",
    help="Serve generative-AI models to bursty crowds: gateway, durable queue, workers, brain.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="swell.yaml; without it, the demo.")]
DataDirOpt = Annotated[
    Path, typer.Option("--data-dir", envvar="SWELL_DATA_DIR", help="Database, results, cache and keys.")
]
HostOpt = Annotated[str, typer.Option("--host", envvar="SWELL_HOST")]
PortOpt = Annotated[int, typer.Option("--port", envvar="SWELL_PORT")]
UrlOpt = Annotated[
    str | None, typer.Option("--url", envvar="SWELL_URL", help="Gateway URL; default http://HOST:PORT.")
]
KeyOpt = Annotated[str | None, typer.Option("--api-key", envvar="SWELL_API_KEY", show_default=False)]


@app.command()
def up(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = Path(".swell"),
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Turn authentication off (local only!).")
    ] = False,
) -> None:
    """Start the gateway, the workers and the brain on this machine."""
    from swell.core.config import Settings, load_config
    from swell.server import Server

    with _errors():
        settings = Settings.from_env(data_dir=data_dir, host=host, port=port, auth=not no_auth)
        server = Server(load_config(config), settings, console=err)
        server.run()


@app.command()
def submit(
    service: Annotated[str, typer.Argument(help="The service to run the job.")],
    input: Annotated[str, typer.Option("--input", "-i", help="The job's input as JSON.")],
    wait: Annotated[float | None, typer.Option("--wait", help="Seconds to wait for the result.")] = None,
    priority: Annotated[str | None, typer.Option("--priority", help="high, normal or low.")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    callback_url: Annotated[str | None, typer.Option("--callback-url")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".swell"),
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
) -> None:
    """Submit a job and print it (with its result when it finishes within --wait)."""
    try:
        payload = json.loads(input)
    except json.JSONDecodeError as exc:
        _fail(f"--input is not valid JSON: {exc}")
    with _errors(), _client(url, api_key, data_dir, host, port) as client:
        job = client.submit(
            service,
            payload,
            wait=wait,
            priority=priority,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
        )
    console.print_json(data=job)


@app.command()
def jobs(
    state: Annotated[str | None, typer.Option("--state", help="Only jobs in this state.")] = None,
    service: Annotated[str | None, typer.Option("--service")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".swell"),
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
) -> None:
    """List recent jobs, newest first."""
    with _errors(), _client(url, api_key, data_dir, host, port) as client:
        rows = client.jobs(service=service, state=state, limit=limit)
    # The id is what the user copies into `swell job ID`: never wrapped or cut, however narrow the terminal.
    job_id = Column("id", no_wrap=True, min_width=32)
    table = Table(job_id, "service", "state", "priority", "attempts", "created", "took")
    for job in rows:
        table.add_row(
            job["id"],
            job["service"],
            _state(job["state"]),
            job["priority"],
            str(job["attempts"]),
            _when(job["created_at"]),
            _took(job),
        )
    console.print(table)


@app.command("job")
def job_(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".swell"),
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
) -> None:
    """Show one job with its result or error."""
    with _errors(), _client(url, api_key, data_dir, host, port) as client:
        console.print_json(data=client.job(job_id))


@app.command()
def status(
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".swell"),
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
) -> None:
    """Services with their queue depth and replicas."""
    with _errors(), _client(url, api_key, data_dir, host, port) as client:
        services = client.services()
    table = Table(
        "service", "engine", "queued", "leased", "succeeded", "failed", "dead", "replicas", "planned"
    )
    for svc in services:
        depth = svc.get("queue", {})
        replicas = svc.get("replicas", [])
        ready = sum(1 for r in replicas if r.get("state") in ("ready", "busy"))
        planned = svc.get("plan", {}).get("replicas") if isinstance(svc.get("plan"), dict) else None
        table.add_row(
            svc["name"],
            str(svc.get("engine", "")),
            *(str(depth.get(s, 0)) for s in ("queued", "leased", "succeeded", "failed", "dead")),
            f"{ready}/{len(replicas)}",
            "" if planned is None else str(planned),
        )
    console.print(table)
    for svc in services:
        if replicas := svc.get("replicas"):
            rt = Table("replica", "pid", "state", "model", "jobs done", title=f"{svc['name']} replicas")
            for r in replicas:
                rt.add_row(
                    r["id"], str(r.get("pid")), _state(r["state"]), str(r.get("model")), str(r["jobs_done"])
                )
            console.print(rt)


def _mount_subapps() -> None:
    """`swell data ...` and `swell sim ...`: their modules import heavy dependencies lazily."""
    from swell.data.cli import app as data_app
    from swell.sim.cli import mount as mount_sim

    app.add_typer(data_app, name="data", help="Datasets of model files and the node cache.")
    mount_sim(app)


def _client(url: str | None, api_key: str | None, data_dir: Path, host: str, port: int) -> SwellClient:
    return SwellClient(url or f"http://{host}:{port}", read_api_key(data_dir, api_key))


class _errors:
    """Print a SwellError as one readable line and exit 1, instead of a traceback."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, SwellError):
            _fail(str(exc))
        if isinstance(exc, KeyboardInterrupt):
            raise typer.Exit(130)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _state(state: str) -> str:
    colour = {
        "succeeded": "green",
        "failed": "red",
        "dead": "red",
        "leased": "cyan",
        "busy": "cyan",
        "ready": "green",
        "queued": "yellow",
        "loading": "yellow",
        "starting": "yellow",
    }.get(state, "white")
    return f"[{colour}]{state}[/]"


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _took(job: dict[str, Any]) -> str:
    if job.get("finished_at") and job.get("created_at"):
        return f"{job['finished_at'] - job['created_at']:.2f}s"
    return ""


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    app()


_mount_subapps()
