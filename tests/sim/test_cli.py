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
