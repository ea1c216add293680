"""The command line against a real `swell up`: submit, job, jobs, status, and the generated API key."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from swell.cli import app
from swell.client import SwellClient
from tests.support import ROOT, free_port, wait_for

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


SERVICES = """
services:
  - name: double
    engine: callable
    options: {function: "e2e_jobs:double"}
    replicas: {min: 1, max: 1}
    max_attempts: 1
  - name: idle
    engine: callable
    options: {function: "e2e_jobs:double"}
    replicas: {min: 0, max: 1}
  - name: broken
    engine: "tests.engines.samples:Broken"
    replicas: {min: 1, max: 1}
brain: {mode: "off"}
"""


def _lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.fixture
def served(start_swell) -> tuple[list[str], object]:
    swell = start_swell(SERVICES, pythonpath=[HERE, ROOT])
    swell.wait_ready(1)
    return ["--url", swell.base_url, "--api-key", swell.api_key], swell


@pytest.mark.slow
def test_submit_wait_exit_status_says_how_the_job_ended(served) -> None:
    common, _ = served
    runner = CliRunner()
    ok = runner.invoke(app, ["submit", "double", "-i", '{"n": 21}', "--wait", "30", *common])
    assert ok.exit_code == 0, ok.output
    assert len(ok.stdout.splitlines()) == 1, "one JSON line"
    assert json.loads(ok.stdout)["result"] == {"n": 42}

    slow = runner.invoke(app, ["submit", "double", "-i", '{"n": 1, "sleep": 5}', "--wait", "0.2", *common])
    assert slow.exit_code == 3, slow.output
    assert json.loads(slow.stdout)["state"] in ("queued", "leased")
    assert "has not finished" in slow.stderr

    bad = runner.invoke(app, ["submit", "double", "-i", '{"n": "x"}', "--wait", "30", *common])
    assert bad.exit_code == 1, bad.output
    job = json.loads(bad.stdout)
    assert job["state"] in ("failed", "dead") and "ValueError" in job["error"]
    assert f"job {job['id']} ended" in bad.stderr

    no_wait = runner.invoke(app, ["submit", "double", "-i", '{"n": 2}', *common])
    assert no_wait.exit_code == 0 and json.loads(no_wait.stdout)["state"] in ("queued", "leased", "succeeded")


@pytest.mark.slow
def test_status_shows_why_a_replica_keeps_crashing(served) -> None:
    common, swell = served

    def crashing() -> bool:
        broken = next(s for s in swell.services() if s["name"] == "broken")
        return any(r["crash_streak"] >= 3 and r["last_error"] for r in broken["replicas"])

    wait_for(crashing, 120, "the broken replica to crash 3 times in a row")
    status = CliRunner().invoke(app, ["status", *common], terminal_width=250)
    assert status.exit_code == 0, status.output
    assert "crash streak" in status.stdout
    assert "last error: RuntimeError: the weights are missing" in status.stdout
    assert "refusing submits: service 'broken' is failing" in status.stderr


@pytest.mark.slow
def test_retry_cancel_and_paged_jobs(served) -> None:
    common, swell = served
    runner = CliRunner()
    ok = runner.invoke(app, ["submit", "double", "-i", '{"n": 1}', "--wait", "30", *common])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["submit", "double", "-i", '{"n": "x"}', "--wait", "30", *common])
    failed = json.loads(bad.stdout)
    retried = runner.invoke(app, ["retry", failed["id"], *common])
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.stdout)["id"] == failed["id"]
    again = runner.invoke(app, ["retry", failed["id"], *common])
    assert again.exit_code in (0, 1)  # 409 while queued again; 0 once it has failed a second time
    missing = runner.invoke(app, ["retry", "no-such-job", *common])
    assert missing.exit_code == 1 and "404" in missing.output

    ids = [
        json.loads(runner.invoke(app, ["submit", "idle", "-i", f'{{"n": {i}}}', *common]).stdout)["id"]
        for i in range(4)
    ]
    one = runner.invoke(app, ["cancel", ids[0], *common])
    assert one.exit_code == 0 and json.loads(one.stdout)["state"] == "cancelled"
    many = runner.invoke(app, ["cancel", "--service", "idle", *common])
    assert many.exit_code == 0, many.output
    assert json.loads(many.stdout) == {"cancelled": 3, "service": "idle"}

    first = runner.invoke(app, ["jobs", "--service", "idle", "--limit", "3", *common], terminal_width=200)
    assert first.exit_code == 0, first.output
    assert [i in first.stdout for i in ids] == [False, True, True, True], "the newest three"
    cursor = first.stderr.split("--cursor", 1)[1].split()[0]
    rest = runner.invoke(
        app, ["jobs", "--service", "idle", "--limit", "3", "--cursor", cursor, "--results", *common]
    )
    assert rest.exit_code == 0, rest.output
    assert [job["id"] for job in _lines(rest.stdout)] == [ids[0]]
    assert "--cursor" not in rest.stderr, "the last page has no next cursor"

    with_results = runner.invoke(
        app, ["jobs", "--service", "double", "--state", "succeeded", "--results", *common]
    )
    assert any(job.get("result") for job in _lines(with_results.stdout))
    with SwellClient(swell.base_url, swell.api_key) as client:
        assert not any("result" in job for job in client.jobs(service="double", state="succeeded"))
        assert any("result" in job for job in client.jobs(service="double", include_result=True))


def test_cancel_needs_exactly_one_target() -> None:
    runner = CliRunner()
    neither = runner.invoke(app, ["cancel", "--url", "http://127.0.0.1:9"])
    both = runner.invoke(app, ["cancel", "some-id", "--service", "idle", "--url", "http://127.0.0.1:9"])
    assert neither.exit_code == both.exit_code == 1
    assert "one of them" in neither.output and "one of them" in both.output


def test_swell_up_refuses_a_bad_service_before_it_serves(tmp_path: Path) -> None:
    config = tmp_path / "swell.yaml"
    config.write_text("services:\n  - name: embed\n    engine: embeddings\n    options: {modle: x}\n")
    done = subprocess.run(
        [sys.executable, "-m", "swell", "up", "--config", str(config), "--data-dir", str(tmp_path / "d"),
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "services[embed].options.modle" in lines[0], done.stderr
    assert "serving on" not in done.stdout + done.stderr
