"""`swell sim`: replay a trace under one or every policy, or sweep every policy across its knob.

swell sim --trace FILE --policy NAME|all [--slo-wait S] [--json] [--plot FILE.png]
swell sim run --trace FILE ...            (the same, spelled as a subcommand)
swell sim sweep --trace FILE [--jobs N] [--json] [--plot FILE.png]
swell sim validate --trace FILE [--origins 5,7,9,11] [--test-days 2] [--jobs N] [--json]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from swell.core.errors import SwellError, ValidationError
from swell.sim.cluster import PoolConfig
from swell.sim.report import Report
from swell.sim.trace import LlmRates, Trace, read_trace

TraceOpt = Annotated[Path | None, typer.Option("--trace", help="An sd_requests_* or azure_llm_* CSV.")]
PolicyOpt = Annotated[str, typer.Option("--policy", help="A policy name, a comma-separated list, or all.")]
SloOpt = Annotated[float, typer.Option("--slo-wait", help="Queue wait (s) a job may see and meet the SLO.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line instead of a table.")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Write a PNG plot here.")]
SpeedOpt = Annotated[float, typer.Option("--speed", help="Replay arrivals this many times faster.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Replay only the first N jobs.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the GPU start-time jitter.")]
StartOpt = Annotated[float, typer.Option("--gpu-start-seconds", help="Node request to serving.")]
JitterOpt = Annotated[float, typer.Option("--start-jitter", help="Start time varies by +- this share.")]
ModelGbOpt = Annotated[float, typer.Option("--model-gb", help="Checkpoint size.")]
InitOpt = Annotated[float, typer.Option("--init-seconds", help="Engine initialisation per load.")]
HostOpt = Annotated[float, typer.Option("--host-gbps", help="GB/s loading from host memory.")]
DiskOpt = Annotated[float, typer.Option("--disk-gbps", help="GB/s loading from local disk.")]
RemoteOpt = Annotated[float, typer.Option("--remote-gbps", help="GB/s loading from the remote store.")]
HostCacheOpt = Annotated[float, typer.Option("--host-cache-gb", help="Host memory per node for checkpoints.")]
DiskCacheOpt = Annotated[float, typer.Option("--disk-cache-gb", help="Local disk per node for checkpoints.")]
MaxGpusOpt = Annotated[int | None, typer.Option("--max-gpus", help="Cap on the pool (default: none).")]
TickOpt = Annotated[float, typer.Option("--tick-seconds", help="How often the policy decides.")]
BatchOpt = Annotated[int, typer.Option("--llm-batch", help="LLM requests a replica runs at once.")]
JobsOpt = Annotated[int, typer.Option("--jobs", help="Runs in parallel processes (results as serial).")]
ProgressOpt = Annotated[
    bool, typer.Option("--progress/--no-progress", help="One line per finished run on stderr.")
]
GuardOpt = Annotated[
    bool,
    typer.Option(
        "--guardrails/--no-guardrails",
        help="Run each policy in the guarded stack live runs (SLO fall-back, change limit, bounds).",
    ),
]
ReactiveOpt = Annotated[str, typer.Option("--reactive-policy", help="The SLO fall-back's policy.")]
TargetOpt = Annotated[float, typer.Option("--target", help="SLO attainment the summary compares at.")]

sim_app = typer.Typer(
    help="Replay real traces under autoscaling policies on a simulated GPU pool.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def mount(app: typer.Typer) -> None:
    """Add the `sim` command group to the main CLI."""
    app.add_typer(sim_app, name="sim")


@sim_app.callback(invoke_without_command=True)
def sim(
    ctx: typer.Context,
    trace: TraceOpt = None,
    policy: PolicyOpt = "all",
    slo_wait: SloOpt = 30.0,
    json_out: JsonOpt = False,
    plot: PlotOpt = None,
    speed: SpeedOpt = 1.0,
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    gpu_start_seconds: StartOpt = 100.0,
    start_jitter: JitterOpt = 0.1,
    model_gb: ModelGbOpt = 5.0,
    init_seconds: InitOpt = 5.0,
    host_gbps: HostOpt = 10.0,
    disk_gbps: DiskOpt = 2.0,
    remote_gbps: RemoteOpt = 0.5,
    host_cache_gb: HostCacheOpt = 64.0,
    disk_cache_gb: DiskCacheOpt = 200.0,
    max_gpus: MaxGpusOpt = None,
    tick_seconds: TickOpt = 10.0,
    llm_batch: BatchOpt = 16,
    guardrails: GuardOpt = True,
    reactive_policy: ReactiveOpt = "concurrency",
) -> None:
    """Replay --trace under --policy (default: all) and report SLO attainment and GPU-hours."""
    if ctx.invoked_subcommand is not None:
        return
    if trace is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)
    args = dict(locals())
    _run(**{k: v for k, v in args.items() if k != "ctx"})


@sim_app.command("run")
def run(
    trace: Annotated[Path, typer.Option("--trace", help="An sd_requests_* or azure_llm_* CSV.")],
    policy: PolicyOpt = "all",
    slo_wait: SloOpt = 30.0,
    json_out: JsonOpt = False,
    plot: PlotOpt = None,
    speed: SpeedOpt = 1.0,
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    gpu_start_seconds: StartOpt = 100.0,
    start_jitter: JitterOpt = 0.1,
    model_gb: ModelGbOpt = 5.0,
    init_seconds: InitOpt = 5.0,
    host_gbps: HostOpt = 10.0,
    disk_gbps: DiskOpt = 2.0,
    remote_gbps: RemoteOpt = 0.5,
    host_cache_gb: HostCacheOpt = 64.0,
    disk_cache_gb: DiskCacheOpt = 200.0,
    max_gpus: MaxGpusOpt = None,
    tick_seconds: TickOpt = 10.0,
    llm_batch: BatchOpt = 16,
    guardrails: GuardOpt = True,
    reactive_policy: ReactiveOpt = "concurrency",
) -> None:
    """The same as `swell sim --trace ...`."""
    _run(**dict(locals()))


@sim_app.command("sweep")
def sweep_cmd(
    trace: Annotated[Path, typer.Option("--trace", help="An sd_requests_* or azure_llm_* CSV.")],
    policy: PolicyOpt = "all",
    slo_wait: SloOpt = 30.0,
    target: TargetOpt = 0.99,
    json_out: JsonOpt = False,
    plot: PlotOpt = None,
    jobs: JobsOpt = 1,
    progress: ProgressOpt = True,
    speed: SpeedOpt = 1.0,
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    gpu_start_seconds: StartOpt = 100.0,
    start_jitter: JitterOpt = 0.1,
    model_gb: ModelGbOpt = 5.0,
    init_seconds: InitOpt = 5.0,
    host_gbps: HostOpt = 10.0,
    disk_gbps: DiskOpt = 2.0,
    remote_gbps: RemoteOpt = 0.5,
    host_cache_gb: HostCacheOpt = 64.0,
    disk_cache_gb: DiskCacheOpt = 200.0,
    max_gpus: MaxGpusOpt = None,
    tick_seconds: TickOpt = 10.0,
    llm_batch: BatchOpt = 16,
    guardrails: GuardOpt = True,
    reactive_policy: ReactiveOpt = "concurrency",
) -> None:
    """Every policy across its knob grid; the frontier of SLO attainment against GPU-hours."""
    from swell.sim.sweep import Progress, policy_names, sweep

    out = Console()
    with _errors():
        data = _trace(trace, llm_batch, speed, limit)
        pool = _pool(locals())
        names = policy_names(policy)
        on_done = Progress("sweep") if progress else None
        if json_out:
            reports = sweep(
                data,
                names,
                pool,
                on_point=lambda r: print(json.dumps(r.to_json()), flush=True),
                jobs=jobs,
                on_done=on_done,
            )
        else:
            reports = sweep(data, names, pool, jobs=jobs, on_done=on_done)
            out.print(_table(reports, knob=True))
            out.print(_summary(reports, target))
        if plot:
            from swell.sim.plot import plot_frontiers

            plot_frontiers(reports, plot, target=target)


@sim_app.command("validate")
def validate_cmd(
    trace: Annotated[Path, typer.Option("--trace", help="An sd_requests_* or azure_llm_* CSV.")],
    policy: PolicyOpt = "all",
    slo_wait: SloOpt = 30.0,
    target: TargetOpt = 0.99,
    origins: Annotated[str, typer.Option("--origins", help="Tune on days 1..k for each k.")] = "5,7,9,11",
    test_days: Annotated[int, typer.Option("--test-days", help="Days tested after each k.")] = 2,
    cut_hour: Annotated[float, typer.Option("--cut-hour", help="Days start at this hour.")] = 12.0,
    json_out: JsonOpt = False,
    jobs: JobsOpt = 1,
    progress: ProgressOpt = True,
    seed: SeedOpt = 0,
    gpu_start_seconds: StartOpt = 100.0,
    start_jitter: JitterOpt = 0.1,
    model_gb: ModelGbOpt = 5.0,
    init_seconds: InitOpt = 5.0,
    host_gbps: HostOpt = 10.0,
    disk_gbps: DiskOpt = 2.0,
    remote_gbps: RemoteOpt = 0.5,
    host_cache_gb: HostCacheOpt = 64.0,
    disk_cache_gb: DiskCacheOpt = 200.0,
    max_gpus: MaxGpusOpt = None,
    tick_seconds: TickOpt = 10.0,
    llm_batch: BatchOpt = 16,
    guardrails: GuardOpt = True,
    reactive_policy: ReactiveOpt = "concurrency",
) -> None:
    """Rolling-origin validation: tune every policy on days 1..k, report it on the days after."""
    from swell.sim.sweep import Progress, policy_names
    from swell.sim.validate import day_starts, folds, origin_clock, rows, validate

    with _errors():
        data = _trace(trace, llm_batch, 1.0, None)
        pool = _pool(locals())
        starts = day_starts(data.span, origin_clock(trace), cut_hour)
        fold_list = folds(len(starts), _ints(origins), test_days)
        on_done = Progress("validate") if progress else None
        result = validate(
            data, policy_names(policy), pool, starts=starts, fold_list=fold_list, target=target,
            jobs=jobs, on_done=on_done,
        )  # fmt: skip
        if json_out:
            for row in rows(result):
                print(json.dumps(row), flush=True)
        else:
            Console().print(_validation_table(rows(result), target))


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValidationError(f"--origins must be whole numbers, got {text!r}", field="origins") from None


def _validation_table(data: list[dict[str, object]], target: float) -> Table:
    table = Table(
        "fold", "policy", "tuned knob", "tune GPU-h / att.", "test GPU-h / att.", "hindsight on test",
        title=f"rolling-origin validation at {target:.0%}",
    )  # fmt: skip
    for r in data:
        hindsight = (
            f"{r['hindsight_knob']}: {r['hindsight_gpu_hours']:.1f} / {r['hindsight_attainment']:.2%}"
            if r["hindsight_knob"] is not None
            else "not reached"
        )
        if r["kind"] == "fold":
            tune = f"{r['tune_gpu_hours']:.1f} / {r['tune_attainment']:.2%}"
            test = f"{r['test_gpu_hours']:.1f} / {r['test_attainment']:.2%}"
            table.add_row(str(r["fold"]), str(r["policy"]), str(r["knob"]), tune, test, hindsight)
        else:
            test = f"{r['tuned_gpu_hours']:.1f} / {r['tuned_attainment']:.2%}"
            table.add_row("pooled", str(r["policy"]), "per fold", "", test, hindsight)
    return table


def _run(
    *,
    trace: Path,
    policy: str,
    json_out: bool,
    plot: Path | None,
    speed: float,
    limit: int | None,
    llm_batch: int,
    **pool_options: object,
) -> None:
    from swell.sim.sweep import policy_names, run_policies

    with _errors():
        data = _trace(trace, llm_batch, speed, limit)
        pool = _pool(pool_options)
        reports = []
        for report in run_policies(data, policy_names(policy), pool):
            reports.append(report)
            if json_out:
                print(json.dumps(report.to_json()), flush=True)
        if not json_out:
            Console().print(_table(reports, knob=False))
        if plot:
            from swell.sim.plot import plot_runs

            plot_runs(reports, plot)


def _trace(path: Path, llm_batch: int, speed: float, limit: int | None) -> Trace:
    data = read_trace(path, llm=LlmRates(batch=llm_batch))
    if limit is not None:
        data = data.head(limit)
    return data.scaled(speed) if speed != 1.0 else data


def _pool(options: Mapping[str, object]) -> PoolConfig:
    fields = set(PoolConfig.__dataclass_fields__)
    values = {k: v for k, v in options.items() if k in fields}
    values["slo_wait"] = options["slo_wait"]
    return PoolConfig(**values)  # type: ignore[arg-type]


def _table(reports: list[Report], *, knob: bool) -> Table:
    title = f"{reports[0].trace}: {reports[0].jobs} jobs, {reports[0].work_gpu_hours:.1f} GPU-hours of work"
    columns = ["policy", *(["knob"] if knob else []), "SLO att.", "p50 wait", "p99 wait", "GPU-h"]
    columns += ["start/load/idle GPU-h", "loads host/disk/remote", "scale actions", "peak", "over-capacity s"]
    table = Table(*columns, title=title)
    for r in reports:
        loads = r.model_loads
        table.add_row(
            r.policy,
            *([r.knob] if knob else []),
            f"{r.slo_attainment:.2%}",
            f"{r.p50_wait_s:.1f}",
            f"{r.p99_wait_s:.1f}",
            f"{r.gpu_hours:.1f}",
            f"{r.starting_gpu_hours:.1f}/{r.loading_gpu_hours:.1f}/{r.idle_gpu_hours:.1f}",
            f"{loads['host']}/{loads['disk']}/{loads['remote']}",
            str(r.scale_actions),
            str(r.peak_gpus),
            f"{r.demand_over_ready_s:.0f}",
        )
    return table


def _summary(reports: list[Report], target: float) -> Table:
    from swell.sim.sweep import cheapest_at

    table = Table(
        "policy", f"cheapest run at >= {target:.0%}", "knob", "GPU-hours", "vs swell", title="at target"
    )
    best = {
        name: cheapest_at([r for r in reports if r.policy == name], target)
        for name in dict.fromkeys(r.policy for r in reports)
    }
    ours = best.get("swell")
    for name, r in best.items():
        ratio = f"{r.gpu_hours / ours.gpu_hours:.2f}x" if r and ours else "-"
        table.add_row(
            name,
            f"{r.slo_attainment:.2%}" if r else "not reached",
            r.knob if r else "-",
            f"{r.gpu_hours:.1f}" if r else "-",
            ratio,
        )
    return table


class _errors:
    """A SwellError becomes one readable line on stderr and exit status 1."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, SwellError):
            Console(stderr=True).print(f"[red]error[/]: {exc.message}")
            raise typer.Exit(1)


@sim_app.command("llm")
def llm_cmd(
    trace: Annotated[Path, typer.Option("--trace", help="An Azure LLM trace CSV (TIMESTAMP, tokens).")],
    policy: PolicyOpt = "all",
    slo_wait: Annotated[float, typer.Option("--slo-wait", help="TTFT SLO (s).")] = 2.0,
    initial: Annotated[int, typer.Option("--initial-replicas", help="Replicas serving at the start.")] = 0,
    json_out: JsonOpt = False,
    speed: SpeedOpt = 1.0,
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    max_gpus: MaxGpusOpt = None,
    guardrails: GuardOpt = True,
) -> None:
    """LLM replicas that batch continuously (`swell.sim.llm`, defaults: a 13B model on an A100)."""
    from swell.sim.llm import LlmEngine, llm_pool, run_policies, table
    from swell.sim.llm_trace import read_llm_trace
    from swell.sim.sweep import policy_names

    with _errors():
        data = read_llm_trace(trace)
        data = data.head(limit) if limit is not None else data
        data = data.scaled(speed) if speed != 1.0 else data
        pool = llm_pool(slo_wait=slo_wait, seed=seed, max_gpus=max_gpus, guardrails=guardrails)
        reports = run_policies(data, policy_names(policy), LlmEngine(), pool, initial_replicas=initial)
        if json_out:
            for r in reports:
                print(json.dumps(r.to_json()), flush=True)
        else:
            Console().print(table(reports))
