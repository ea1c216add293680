"""Swell's command line: `swell up` serves; the other commands talk to a running gateway over HTTP.

Jobs are printed as one JSON line each (embeddings are long arrays: pipe to `jq` to read them). Exit
status: 0 done, 1 an error (or, with `submit --wait`, a job that ended failed, dead or cancelled),
3 `submit --wait` gave up before the job finished (`swell job ID` follows it), 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from swell.client import SwellClient, read_api_key
from swell.core.errors import SwellError

EXIT_ERROR = 1  # an error, or a waited-for job that ended failed, dead or cancelled
EXIT_NOT_FINISHED = 3  # `submit --wait` returned before the job reached a final state
UNSUCCESSFUL = ("failed", "dead", "cancelled")

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

    _import_from_cwd()
    with _errors(), _os_errors():
        settings = Settings.from_env(data_dir=data_dir, host=host, port=port, auth=not no_auth)
        server = Server(load_config(config), settings, console=err)
        server.run()


@app.command()
def down(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = Path(".swell"),
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to drain before killing.")] = 60,
) -> None:
    """Drain and stop the replicas a Ray cluster keeps running after its gateway stopped."""
    from swell.core.config import Settings, load_config

    with _errors():
        loaded, settings = load_config(config), Settings.from_env(data_dir=data_dir)
        if loaded.cluster.kind != "ray":
            console.print(f"cluster.kind is {loaded.cluster.kind!r}: its replicas end with `swell up`")
            return
        from swell.cluster.ray import RayCluster

        RayCluster(loaded, settings.database_url, settings.data_dir).down(timeout)
        console.print(f"[bold]stopped[/]: the replicas in Ray namespace {loaded.cluster.namespace!r}")


@app.command()
def submit(
    service: Annotated[str, typer.Argument(help="The service to run the job.")],
    input: Annotated[str, typer.Option("--input", "-i", help="The job's input as JSON.")],
    wait: Annotated[float | None, typer.Option("--wait", help="Seconds to wait for the result.")] = None,
    priority: Annotated[
        str | None, typer.Option("--priority", help="high, normal, low, or batch (idle capacity only).")
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    callback_url: Annotated[str | None, typer.Option("--callback-url")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".swell"),
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
) -> None:
    """Submit a job and print it (with its result when it finishes within --wait).

    With --wait the exit status says how the job ended: 0 succeeded, 1 failed, dead or cancelled,
    3 not finished yet when the wait ran out."""
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
    _print_json(job)
    if wait is not None:
        _exit_for(job, wait)


@app.command()
def jobs(
    state: Annotated[str | None, typer.Option("--state", help="Only jobs in this state.")] = None,
    service: Annotated[str | None, typer.Option("--service")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="The next page: the cursor the previous page printed.")
    ] = None,
    results: Annotated[
        bool, typer.Option("--results", help="Print each job with its result, one JSON line each.")
    ] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".swell"),
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
) -> None:
    """List recent jobs, newest first, a page at a time (the next page's cursor goes to stderr)."""
    with _errors(), _client(url, api_key, data_dir, host, port) as client:
        page = client.jobs_page(
            service=service, state=state, limit=limit, cursor=cursor, include_result=results
        )
    if results:
        for job in page.jobs:
            _print_json(job)
    else:
        console.print(_jobs_table(page.jobs))
    if page.next_cursor:
        err.print(escape(f"next page: --cursor {page.next_cursor}"), highlight=False, soft_wrap=True)


def _jobs_table(rows: list[dict[str, Any]]) -> Table:
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
    return table


@app.command("job")
def job_(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".swell"),
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
) -> None:
    """Show one job with its result or error (one JSON line)."""
    with _errors(), _client(url, api_key, data_dir, host, port) as client:
        _print_json(client.job(job_id))


@app.command()
def retry(
    job_id: Annotated[str, typer.Argument(help="The id of a dead, failed or cancelled job.")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".swell"),
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
) -> None:
    """Queue a dead, failed or cancelled job again, its attempts reset, and print it."""
    with _errors(), _client(url, api_key, data_dir, host, port) as client:
        _print_json(client.retry(job_id))


@app.command()
def cancel(
    job_id: Annotated[str | None, typer.Argument(help="The job to cancel.", show_default=False)] = None,
    service: Annotated[
        str | None, typer.Option("--service", help="Cancel every queued job of this service instead.")
    ] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".swell"),
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
) -> None:
    """Cancel a queued job (and print it), or with --service every queued job of a service."""
    if (job_id is None) == (service is None):
        _fail("give a job id or --service NAME (one of them)")
    with _errors(), _client(url, api_key, data_dir, host, port) as client:
        if service is not None:
            _print_json({"cancelled": client.cancel_many(service=service), "service": service})
        else:
            _print_json(client.cancel(str(job_id)))


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
    if sizing := _sizing_table(services):
        console.print(sizing)
    for svc in services:
        if replicas := svc.get("replicas"):
            console.print(_replicas_table(svc["name"], replicas))
            _print_last_errors(replicas)
        if reason := _failing(svc):
            err.print(f"[bold red]refusing submits:[/] {escape(reason)}", soft_wrap=True, highlight=False)


def _sizing_table(services: list[dict[str, Any]]) -> Table | None:
    """Right-sizing advice beside what is configured (swell.brain.rightsize; a dry run: never applied)."""
    rows = [(svc["name"], svc["rightsizing"]) for svc in services if svc.get("rightsizing")]
    if not rows:
        return None
    table = Table("service", "cpus", "memory", "gpus", "samples", title="right-sizing (dry run: not applied)")
    for name, advice in rows:
        now, new = advice["configured"], advice.get("recommended")
        if new is None:
            configured = (str(now[k]) for k in ("cpus", "memory", "gpus"))
            table.add_row(name, *configured, advice.get("reason") or "")
            continue
        req, lim = new["requests"], new["limits"]
        cells = [f"{now[k]} → {req[k]} (limit {lim[k]})" for k in ("cpus", "memory")]
        table.add_row(name, *cells, f"{now['gpus']} → {req['gpus']}", str(advice["samples"]))
    return table


def _failing(svc: dict[str, Any]) -> str | None:
    """Why a service refuses submits (its replicas keep crashing), as the gateway decides it."""
    from swell.core.replicas import ReplicaInfo, ReplicaState, unavailable_reason

    replicas = [
        ReplicaInfo(
            id=str(r.get("id")),
            service=svc["name"],
            state=ReplicaState(r["state"]) if r.get("state") in set(ReplicaState) else ReplicaState.DEAD,
            last_error=r.get("last_error"),
            crash_streak=int(r.get("crash_streak") or 0),
        )
        for r in svc.get("replicas", [])
    ]
    return unavailable_reason(replicas, svc["name"])


def _replicas_table(service: str, replicas: list[dict[str, Any]]) -> Table:
    """Each replica, with its restarts and how many starts in a row failed."""
    table = Table(
        Column("replica", no_wrap=True), "pid", "state", "model", "jobs done", "restarts", "crash streak",
        title=f"{service} replicas",
    )  # fmt: skip
    for r in replicas:
        table.add_row(
            r["id"],
            str(r.get("pid")),
            _state(r["state"]),
            str(r.get("model")),
            str(r.get("jobs_done", 0)),
            str(r.get("restarts", 0)),
            str(r.get("crash_streak", 0)),
        )
    return table


def _print_last_errors(replicas: list[dict[str, Any]]) -> None:
    """Why each replica's latest process ended, one unwrapped line each (errors are long)."""
    for r in replicas:
        if r.get("last_error"):
            line = f"  {r['id']} last error: {r['last_error']}"
            console.print(escape(line), soft_wrap=True, highlight=False)


def _mount_subapps() -> None:
    """`swell data|models|deploy|sim ...`: their modules import heavy dependencies lazily."""
    from swell.data.cli import app as data_app
    from swell.deploy.cli import app as deploy_app
    from swell.gateway.discord.cli import app as discord_app
    from swell.models.cli import app as models_app
    from swell.sim.cli import mount as mount_sim

    app.add_typer(data_app, name="data", help="Datasets of model files and the node cache.")
    app.add_typer(models_app, name="models", help="Tiny random models for tests and CPU demos.")
    app.add_typer(deploy_app, name="deploy", help="Deploy past one machine: Kubernetes with KubeRay.")
    app.add_typer(discord_app, name="discord", help="The Discord door: register its slash commands.")
    mount_sim(app)


def _client(url: str | None, api_key: str | None, data_dir: Path, host: str, port: int) -> SwellClient:
    return SwellClient(url or f"http://{host}:{port}", read_api_key(data_dir, api_key))


def _print_json(data: Any) -> None:
    """One compact JSON line on stdout: no colours, no wrapping, long arrays on that line."""
    sys.stdout.write(json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _exit_for(job: dict[str, Any], waited: float) -> None:
    """After `submit --wait`: exit 1 when the job ended without success, 3 when it has not ended."""
    state = job.get("state")
    if state in UNSUCCESSFUL:
        reason = f": {job['error']}" if job.get("error") else ""
        _fail(f"job {job['id']} ended {state}{reason}")
    if state != "succeeded":
        err.print(
            escape(
                f"job {job['id']} has not finished after {waited:g} s (state {state}); "
                f"follow it with `swell job {job['id']}`"
            ),
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(EXIT_NOT_FINISHED)


def _import_from_cwd() -> None:
    """Put the working directory first on sys.path, as `python -m swell.worker` has it, so that a
    `module:function` in swell.yaml imports when checked here exactly as it will in the workers."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


class _os_errors:
    """An operating-system error while starting (a data dir that cannot be written, a port taken)
    as one line naming the path, instead of a traceback."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, OSError):
            where = f": {exc.filename}" if exc.filename else ""
            _fail(f"{exc.strerror or exc}{where}")


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
    """One line on stderr (never wrapped; brackets in it are text, not markup), then exit 1."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(EXIT_ERROR)


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
