"""A server the engine starts itself: readiness, restart after a death (the job in flight fails
retryably, the next succeeds), stop on unload; a command that cannot start says why."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from swell.core.errors import EngineError, Unavailable
from swell.engines.base import MemorySignals
from swell.engines.http.process import backoff_delay
from tests.engines.http.conftest import make_engine, run
from tests.support import ROOT, free_port, wait_for


def test_backoff_doubles_to_its_cap() -> None:
    assert [backoff_delay(n, 0.5, 3.0) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_started_server_is_restarted_when_it_dies_and_stopped_on_unload(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "tests.engines.http.servers", "openai", str(port), "0.02"]
    engine = make_engine(tmp_path, mode="openai", url=f"http://127.0.0.1:{port}", command=command,
                         cwd=str(ROOT), ready_timeout=60.0, restart_backoff=0.2)  # fmt: skip
    server = engine.server
    assert server is not None and server.ready
    first_pid = server.statistics().pid
    assert first_pid is not None
    signals = MemorySignals()
    killer = threading.Thread(
        target=lambda: (
            wait_for(lambda: bool(signals.text("j0")), 30, "text"),
            os.kill(first_pid, signal.SIGKILL),
        )
    )
    killer.start()
    results, _ = run(engine, [{"prompt": "a", "max_tokens": 2000}], tmp_path, signals)
    killer.join()
    assert isinstance(results[0], Unavailable)  # retryable: the worker delivers it again
    # Until the supervisor thread has reaped the killed process the server still reads ready, and a
    # job then is answered Unavailable too (retryable, as above); on a busy machine that window is
    # long, so the next job is sent once the death is seen, and must wait for the restart.
    wait_for(lambda: server.statistics().deaths == 1, 30, "the death to be seen")
    results, _ = run(engine, [{"prompt": "b", "max_tokens": 3}], tmp_path)  # waits for the restart
    assert results[0]["choices"][0]["text"] == "tok0 tok1 tok2 "
    stats = server.statistics()
    assert stats.starts == 2 and stats.deaths == 1 and stats.pid != first_pid
    engine.unload()
    assert server.statistics().state == "stopped"
    with pytest.raises(ProcessLookupError):
        os.kill(stats.pid or 0, 0)


def test_a_server_that_exits_at_start_fails_the_load_quoting_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('no GPU found'); sys.exit(3)"]
    with pytest.raises(EngineError) as caught:
        make_engine(tmp_path, mode="a1111", url=f"http://127.0.0.1:{free_port()}", command=command)
    assert "status 3" in str(caught.value) and "no GPU found" in str(caught.value)
