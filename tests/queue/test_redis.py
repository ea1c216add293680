"""What only the Redis backend promises: a server that cannot serve is answered as `Unavailable`.

The failures are real: a port nothing listens on, and a `redis-server` of the test's own (skipped
where the binary is missing) that runs out of memory, is stopped, and comes back.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from swell.core.errors import Unavailable
from swell.core.jobs import JobSpec, JobState
from tests.support import free_port, wait_for

pytest.importorskip("redis")

from swell.queue.redis import RedisQueue


def test_an_unreachable_server_is_unavailable_and_the_password_stays_out_of_the_message() -> None:
    with pytest.raises(Unavailable) as error:
        RedisQueue(f"redis://:hunter2@127.0.0.1:{free_port()}/3")
    assert error.value.status_code == 503 and error.value.retry_after > 0
    assert "127.0.0.1" in error.value.message and "hunter2" not in error.value.message


class OwnRedis:
    """A `redis-server` on a free loopback port, without persistence, started and stopped by the test."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, "redis-server to answer")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.ConnectionError:
            return False


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_server_out_of_memory_is_unavailable_until_it_has_room(own_redis: OwnRedis) -> None:
    import redis

    queue = RedisQueue(own_redis.url)
    job, _ = queue.submit(JobSpec(service="svc", input={"n": 1}))
    admin = redis.Redis(port=own_redis.port)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    try:
        with pytest.raises(Unavailable, match=r"refuses to serve now.*memory"):
            queue.submit(JobSpec(service="svc", input={"n": 2}))
        with pytest.raises(Unavailable):
            queue.probe()
        assert queue.get(job.id) == job, "reads still work"
    finally:
        admin.config_set("maxmemory", "0")
    queue.probe()
    assert queue.submit(JobSpec(service="svc", input={"n": 3}))[1]
    assert queue.depth() == {"svc": {"queued": 2}}
    queue.close()


def test_a_stopped_server_is_unavailable_and_a_restarted_one_is_used_again(own_redis: OwnRedis) -> None:
    queue = RedisQueue(own_redis.url)
    queue.submit(JobSpec(service="svc", input={}))
    own_redis.stop()
    for call in (
        queue.probe,
        lambda: queue.submit(JobSpec(service="svc", input={})),
        lambda: queue.lease("svc", "w1"),
        queue.statistics,
        lambda: queue.jobs(limit=5),
    ):
        with pytest.raises(Unavailable, match="cannot be reached"):
            call()
    own_redis.start()  # the same port, empty: nothing was persisted
    queue.probe()
    job, created = queue.submit(JobSpec(service="svc", input={}))
    assert created and queue.get(job.id).state is JobState.QUEUED
    queue.close()
