"""Generated secrets: private, stable across restarts, the same for processes that race to create them."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path
from typing import Any

import pytest

from swell.core.errors import ConfigError
from swell.gateway.secrets import Origin, obtain_secret, resolve_secret


def test_a_given_value_wins_and_nothing_is_written(tmp_path: Path) -> None:
    assert resolve_secret("from-env", tmp_path, "api_key") == "from-env"
    assert not (tmp_path / "api_key").exists()


def test_generated_once_private_and_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = resolve_secret(None, data, "api_key")
    assert len(first) >= 32
    mode = stat.S_IMODE((data / "api_key").stat().st_mode)
    assert mode == 0o600
    assert resolve_secret("", data, "api_key") == first
    assert resolve_secret(None, data, "webhook_secret") != first
    assert sorted(p.name for p in data.iterdir()) == ["api_key", "webhook_secret"], "no temporary files left"


def test_an_empty_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "api_key").write_text("\n")
    with pytest.raises(ConfigError, match="api_key"):
        resolve_secret(None, tmp_path, "api_key")


def _race(data_dir: str, barrier: Any, out: Any) -> None:
    barrier.wait()
    out.put(resolve_secret(None, Path(data_dir), "api_key"))


def test_racing_processes_agree(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for round_ in range(3):
        data = tmp_path / f"round-{round_}"
        barrier, out = context.Barrier(6), context.Queue()
        processes = [context.Process(target=_race, args=(str(data), barrier, out)) for _ in range(6)]
        for process in processes:
            process.start()
        seen = {out.get(timeout=30) for _ in processes}
        for process in processes:
            process.join(timeout=30)
        assert seen == {(data / "api_key").read_text().strip()}


def test_the_origin_says_whether_this_call_generated_the_secret(tmp_path: Path) -> None:
    supplied = obtain_secret("from-env", tmp_path, "api_key")
    assert (supplied.origin, supplied.path) == (Origin.SUPPLIED, None)
    assert "from-env" not in repr(supplied), "the value stays out of reprs (and so of logs)"
    generated = obtain_secret(None, tmp_path, "api_key")
    assert (generated.origin, generated.path) == (Origin.GENERATED, tmp_path / "api_key")
    stored = obtain_secret(None, tmp_path, "api_key")
    assert (stored.origin, stored.value) == (Origin.STORED, generated.value)
