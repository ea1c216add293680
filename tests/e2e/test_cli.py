"""The command line against a real `swell up`: submit, job, jobs, status, and the generated API key."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from swell.cli import app

HERE = Path(__file__).parent

CONFIG = """
services:
  - name: double
    engine: callable
    options: {function: "e2e_jobs:double"}
    replicas: {min: 1, max: 1}
brain: {mode: "off"}
"""


@pytest.mark.slow
def test_cli_round_trip_with_a_generated_key(start_swell) -> None:
    swell = start_swell(CONFIG, env={"SWELL_API_KEY": ""}, pythonpath=[HERE])
    key_file = swell.data_dir / "api_key"
    key = key_file.read_text().strip()
    assert len(key) >= 32 and key_file.stat().st_mode & 0o077 == 0, "a private, generated key"
    assert key in swell.log.read_text(), "swell up prints the key it generated"
    assert httpx.get(f"{swell.base_url}/v1/jobs", timeout=5).status_code == 401

    runner = CliRunner()
    common = ["--url", swell.base_url, "--data-dir", str(swell.data_dir)]

    submitted = runner.invoke(app, ["submit", "double", "--input", '{"n": 21}', "--wait", "30", *common])
    assert submitted.exit_code == 0, submitted.output
    job = json.loads(submitted.output)
    assert (job["state"], job["result"]) == ("succeeded", {"n": 42})

    shown = runner.invoke(app, ["job", job["id"], *common])
    assert shown.exit_code == 0 and json.loads(shown.output)["id"] == job["id"]

    listed = runner.invoke(app, ["jobs", "--state", "succeeded", *common], terminal_width=200)
    assert listed.exit_code == 0 and job["id"] in listed.output

    metrics = httpx.get(f"{swell.base_url}/metrics", timeout=5).text
    assert "swell_cache_hits_total" in metrics, "the node cache's counters are exported"
    assert 'swell_replica_phase_seconds{phase="load"' in metrics, "and each replica's load phases"

    status = runner.invoke(app, ["status", *common], terminal_width=200)
    assert status.exit_code == 0 and "double" in status.output

    bad = runner.invoke(app, ["submit", "nope", "--input", "{}", *common])
    assert bad.exit_code == 1 and "nope" in bad.output
    not_json = runner.invoke(app, ["submit", "double", "--input", "{n:", *common])
    assert not_json.exit_code == 1 and "--input" in not_json.output
    assert swell.stop(signal.SIGTERM) == 0


@pytest.mark.slow
def test_no_auth_says_so_loudly(start_swell, tmp_path: Path) -> None:
    swell = start_swell(CONFIG.replace("min: 1, max: 1", "min: 0, max: 1"), no_auth=True, pythonpath=[HERE])
    assert "AUTHENTICATION IS OFF" in swell.log.read_text()
    assert httpx.get(f"{swell.base_url}/v1/services", timeout=5).status_code == 200
