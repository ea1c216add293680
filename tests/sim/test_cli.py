"""`swell sim` through typer's CliRunner on a small synthetic trace in the image format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from swell.brain.policies import POLICIES
from swell.sim.cli import mount

KEYS = {
    "policy",
    "slo_attainment",
    "p99_wait_s",
    "gpu_hours",
    "work_gpu_hours",
    "model_loads",
    "scale_actions",
}


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def version() -> None:
        """A second command, so `sim` mounts as a group as in the real CLI."""

    mount(app)
    return app


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    header = (
        "gmt_create,predict_type,predict_status,exec_time_seconds,groupId,prompt_length,"
        "negative_prompt_length,num_images_per_prompt,num_inference_steps,checkpoint_model_version_id,num_lora\n"
    )
    rows = [
        f"2024-11-15 10:{m:02d}:{s:02d},TXT_2_IMG,SUCCEED,{20 + m},G1,10,,1,30,M000{m % 3},0\n"
        for m in range(0, 40, 3)
        for s in (0, 5)
    ]
    path = tmp_path / "sd_small.csv"
    path.write_text(header + "".join(rows))
    return path


def lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_sim_all_policies_json(app: typer.Typer, trace: Path, tmp_path: Path) -> None:
    plot = tmp_path / "run.png"
    result = CliRunner().invoke(
        app, ["sim", "--trace", str(trace), "--policy", "all", "--json", "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    rows = lines(result.output)
    assert [r["policy"] for r in rows] == list(POLICIES)
    assert all(r.keys() >= KEYS for r in rows)
    assert plot.stat().st_size > 10_000


def test_sim_run_table_and_slo(app: typer.Typer, trace: Path) -> None:
    result = CliRunner().invoke(
        app, ["sim", "run", "--trace", str(trace), "--policy", "swell", "--slo-wait", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "swell" in result.output and "sd_small" in result.output


def test_sweep_json_has_knobs_and_plots(app: typer.Typer, trace: Path, tmp_path: Path) -> None:
    plot = tmp_path / "frontier.png"
    args = ["sim", "sweep", "--trace", str(trace), "--policy", "static,swell", "--json", "--plot", str(plot)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = lines(result.output)
    assert len(rows) == len(POLICIES["static"].grid) + len(POLICIES["swell"].grid)
    assert all((KEYS | {"knob"}) <= r.keys() for r in rows)
    assert {r["knob"] for r in rows if r["policy"] == "static"} == {
        f"replicas={n}" for n in (1, 2, 4, 6, 8, 10)
    }
    assert plot.exists()


def test_bad_input_is_one_line_and_exit_1(app: typer.Typer, trace: Path) -> None:
    result = CliRunner().invoke(app, ["sim", "--trace", str(trace), "--policy", "nope"])
    assert result.exit_code == 1 and "unknown policy" in result.output


@pytest.fixture
def days_trace(tmp_path: Path) -> Path:
    """Four days: a burst of image jobs every evening."""
    header = (
        "gmt_create,predict_type,predict_status,exec_time_seconds,groupId,prompt_length,"
        "negative_prompt_length,num_images_per_prompt,num_inference_steps,checkpoint_model_version_id,num_lora\n"
    )
    rows = [
        f"2024-11-{15 + d} 18:{m:02d}:{s:02d},TXT_2_IMG,SUCCEED,30,G1,10,,1,30,M0001,0\n"
        for d in range(4)
        for m in range(0, 30, 5)
        for s in (0, 7)
    ]
    path = tmp_path / "sd_days.csv"
    path.write_text(header + "".join(rows))
    return path


def test_validate_json_rows_per_fold_and_pooled(app: typer.Typer, days_trace: Path) -> None:
    args = ["sim", "validate", "--trace", str(days_trace), "--policy", "static,clairvoyant"]
    args += ["--origins", "1,2", "--test-days", "1", "--tick-seconds", "60", "--json", "--jobs", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = lines(result.output)
    folds = [r for r in rows if r["kind"] == "fold"]
    assert {r["fold"] for r in folds} == {"tune 1, test 2", "tune 1-2, test 3"}
    assert [r["policy"] for r in rows if r["kind"] == "pooled"] == ["static", "clairvoyant"]
    assert all(r["test_jobs"] == 12 for r in folds)
    assert "validate [" in result.output  # progress (stderr) beside the rows


def test_validate_table_and_bad_origins(app: typer.Typer, days_trace: Path) -> None:
    args = ["sim", "validate", "--trace", str(days_trace), "--policy", "clairvoyant", "--origins", "2"]
    result = CliRunner().invoke(app, [*args, "--tick-seconds", "60", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "pooled" in result.output and "validate [" not in result.output
    result = CliRunner().invoke(app, [*args[:-1], "9", "--no-progress"])
    assert result.exit_code == 1 and "origin 9" in result.output


def test_sweep_progress_on_stderr_and_jobs(app: typer.Typer, trace: Path) -> None:
    args = ["sim", "sweep", "--trace", str(trace), "--policy", "static", "--json", "--jobs", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(lines(result.output)) == len(POLICIES["static"].grid)
    assert f"sweep [6/{len(POLICIES['static'].grid)}] static replicas=10" in result.output
