"""`swell up` start-up: an unusable data dir stops it with one line before it claims to serve; the
data dir is private; the API key is shown only by the start that generated it."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import free_port

HERE = Path(__file__).parent

CONFIG = """
services:
  - name: double
    engine: callable
    options: {function: "e2e_jobs:double"}
    replicas: {min: 1, max: 1}
brain: {mode: "off"}
"""


def swell_up(
    tmp_path: Path, data_dir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "swell.yaml"
    config.write_text(CONFIG)
    cmd = [sys.executable, "-m", "swell", "up", "--config", str(config), "--data-dir", str(data_dir)]
    full_env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    full_env.pop("SWELL_API_KEY", None)
    return subprocess.run(
        [*cmd, "--port", str(free_port())],
        env={**full_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("kind", ["a file in its place", "a read-only file system", "no such parent"])
def test_an_unusable_data_dir_stops_swell_up_with_one_line(tmp_path: Path, kind: str) -> None:
    if kind == "a file in its place":
        data_dir = tmp_path / "data"
        data_dir.write_text("not a folder")
    elif kind == "a read-only file system":
        data_dir = Path("/sys/kernel")  # sysfs: no file can be created there, not even by root
    else:
        data_dir = Path("/proc/no-such/data")
    done = swell_up(tmp_path, data_dir)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode != 0
    assert "serving on" not in output and "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    assert f"the data dir {data_dir} is not usable" in output


def start(
    tmp_path: Path, data_dir: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start `swell up`, read its output until it says it serves and what it says of the key, stop it."""
    config = tmp_path / "swell.yaml"
    config.write_text(CONFIG.replace("min: 1, max: 1", "min: 0, max: 1"))
    cmd = [sys.executable, "-m", "swell", "up", "--config", str(config), "--data-dir", str(data_dir)]
    full_env = {k: v for k, v in os.environ.items() if k != "SWELL_API_KEY"}
    full_env.update({"PYTHONPATH": str(HERE), "PYTHONUNBUFFERED": "1", "COLUMNS": "500", **(env or {})})
    proc = subprocess.Popen(
        [*cmd, "--port", str(free_port())],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Bearer" in line or "supplied" in line:  # the end of what it says about the key
            break
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    return proc, "".join(lines)


def test_the_key_is_shown_once_and_never_when_supplied_and_the_data_dir_is_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _, first = start(tmp_path, data_dir)
    key = (data_dir / "api_key").read_text().strip()
    assert key in first and "new" in first
    _, second = start(tmp_path, data_dir)
    assert key not in second and str(data_dir / "api_key") in second
    _, supplied = start(tmp_path, data_dir, env={"SWELL_API_KEY": "supplied-secret-key"})
    assert "supplied-secret-key" not in supplied and "supplied" in supplied

    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for path in data_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
