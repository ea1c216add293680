"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import SwellProcess, free_port, loopback_only, wait_for

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REQUIRED_SERVICES = {"SWELL_TEST_REDIS_URL": "a Redis server (redis://host:port/db)"}


def pytest_sessionstart(session: pytest.Session) -> None:
    """With SWELL_REQUIRE_SERVICES=1 (CI), a missing or unreachable service stops the run instead of
    letting the tests that need it skip."""
    if os.environ.get("SWELL_REQUIRE_SERVICES") != "1":
        return
    for name, what in REQUIRED_SERVICES.items():
        if not os.environ.get(name):
            pytest.exit(f"SWELL_REQUIRE_SERVICES=1 but {name} is not set: it must name {what}", returncode=3)
    if not loopback_only():
        pytest.exit(
            "SWELL_REQUIRE_SERVICES=1 but this is not a loopback-only network namespace", returncode=3
        )
    import redis

    try:
        redis.Redis.from_url(os.environ["SWELL_TEST_REDIS_URL"], socket_timeout=5).ping()
    except redis.RedisError as exc:
        pytest.exit(f"the Redis at SWELL_TEST_REDIS_URL does not answer: {exc}", returncode=3)


@pytest.fixture
def start_swell(tmp_path: Path) -> Iterator[Callable[..., SwellProcess]]:
    """Start `swell up` with a YAML config (text) in a real process; stopped at teardown."""
    started: list[SwellProcess] = []

    def start(
        config: str,
        *,
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
        pythonpath: list[Path] | None = None,
        port: int | None = None,
        no_auth: bool = False,
    ) -> SwellProcess:
        config_file = tmp_path / f"swell-{len(started)}.yaml"
        config_file.write_text(textwrap.dedent(config))
        data = data_dir or tmp_path / "data"
        port = port or free_port()
        paths = [str(p) for p in pythonpath or []] + [os.environ.get("PYTHONPATH", "")]
        full_env = {
            **os.environ,
            "SWELL_API_KEY": "test-key",
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        log = tmp_path / f"swell-{len(started)}.log"
        cmd = [
            sys.executable,
            "-m",
            "swell",
            "up",
            "--config",
            str(config_file),
            "--data-dir",
            str(data),
            "--port",
            str(port),
            *(["--no-auth"] if no_auth else []),
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path
            )
        swell = SwellProcess(proc, f"http://127.0.0.1:{port}", full_env["SWELL_API_KEY"], data, log)
        started.append(swell)
        wait_for(
            lambda: httpx.get(f"{swell.base_url}/healthz", timeout=1).status_code == 200,
            60,
            "the gateway to answer",
        )
        return swell

    yield start
    for swell in started:
        swell.stop(signal.SIGKILL, timeout=10)
