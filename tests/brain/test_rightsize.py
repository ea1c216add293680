"""Right-sizing advice: the pure rule (swell.brain.rightsize), then once through a real worker
process (its measured usage in its status file), the local supervisor and the gateway's
`GET /v1/services`."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import pytest

from swell.brain.rightsize import MIB, Policy, Sample, UsageWindow, percentile, quantity, recommend
from swell.core.config import Resources, Settings, parse_config
from swell.core.replicas import ReplicaState

GIB = 2**30
POLICY = Policy(window_seconds=600, min_samples=10, sample_seconds=1.0)


def samples(cpu: list[float], rss: list[int], *, start: float = 0.0, gpu: int | None = None) -> list[Sample]:
    total = 80 * GIB if gpu else None
    return [
        Sample(start + i, f"r{i % 2}", c, m, gpu, total)
        for i, (c, m) in enumerate(zip(cpu, rss, strict=True))
    ]


def test_requests_at_p90_with_margin_and_limits_at_peak_times_factor() -> None:
    cpu = [0.5] * 18 + [1.0, 3.0]  # p90 is 0.5; one spike to 3 cores
    rss = [1 * GIB] * 18 + [2 * GIB, 4 * GIB]
    advice = recommend("svc", Resources(cpus=4, memory="16Gi"), samples(cpu, rss), now=30, policy=POLICY)
    assert advice.requests is not None and advice.limits is not None
    assert advice.requests.cpus == 0.6, "0.5 x 1.15 rounded up to 0.05"
    assert advice.requests.memory_bytes == pytest.approx(1.15 * GIB, abs=MIB)
    assert advice.limits.cpus == 4.5 and advice.limits.memory_bytes == 6 * GIB, "peak x 1.5"
    assert (advice.configured.cpus, advice.configured.memory_bytes) == (4, 16 * GIB)
    assert (advice.samples, advice.replicas, advice.applied) == (20, 2, False)


def test_never_below_the_floor() -> None:
    advice = recommend("svc", Resources(), samples([0.0] * 20, [10 * MIB] * 20), now=30, policy=POLICY)
    assert advice.requests is not None and advice.limits is not None
    assert advice.requests.cpus == POLICY.cpu_floor and advice.requests.memory_bytes == POLICY.memory_floor
    assert advice.limits.cpus == POLICY.cpu_floor, "a limit is never under its request"


def test_too_few_samples_give_no_advice_and_say_why() -> None:
    advice = recommend("svc", Resources(), samples([1.0] * 9, [GIB] * 9), now=30, policy=POLICY)
    assert advice.requests is None and advice.reason and "needs 10" in advice.reason
    public = advice.to_public()
    assert public["recommended"] is None and public["mode"] == "dry-run" and public["applied"] is False


def test_the_window_moves_old_samples_out() -> None:
    old = samples([8.0] * 20, [8 * GIB] * 20, start=0)
    new = samples([1.0] * 20, [GIB] * 20, start=1000)
    advice = recommend("svc", Resources(), old + new, now=1030, policy=POLICY)
    assert advice.requests is not None and advice.requests.cpus == 1.15 and advice.samples == 20


def test_gpu_share_from_the_measured_footprint_with_headroom() -> None:
    measured = samples([1.0] * 20, [GIB] * 20, gpu=10 * GIB)  # 10 of 80 GiB, x 1.25 = 0.15625
    advice = recommend("svc", Resources(gpus=0.5), measured, now=30, policy=POLICY)
    assert advice.requests is not None and advice.requests.gpus == 0.2 and advice.configured.gpus == 0.5
    cpu_only = recommend("svc", Resources(), samples([1.0] * 20, [GIB] * 20), now=30, policy=POLICY)
    assert cpu_only.requests is not None and cpu_only.requests.gpus is None


def test_the_usage_window_takes_one_sample_per_replica_per_interval() -> None:
    window = UsageWindow(Policy(window_seconds=10, sample_seconds=1.0))
    assert window.add("svc", Sample(0.0, "a", 1, 1)) and window.add("svc", Sample(0.2, "b", 1, 1))
    assert not window.add("svc", Sample(0.5, "a", 1, 1)), "a again before its interval"
    assert window.add("svc", Sample(20.0, "a", 1, 1))
    assert [s.at for s in window.samples("svc")] == [20.0], "older than the window: pruned"


def test_percentile_and_quantity() -> None:
    assert percentile([5, 1, 2, 3, 4, 6, 7, 8, 9, 10], 0.9) == 9
    assert percentile([3.0], 0.9) == 3.0
    assert quantity(2 * GIB) == "2Gi" and quantity(GIB + 1) == "1025Mi" and quantity(None) is None
    with pytest.raises(ValueError, match="percentile"):
        Policy(percentile=0)


# -- through a real worker process and the gateway ----------------------------------------------


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads a process's RSS from /proc")
def test_a_real_workers_usage_becomes_advice_in_v1_services(tmp_path: Path) -> None:
    from swell.cluster.local import LocalSupervisor
    from swell.gateway.app import create_app
    from swell.queue.base import open_queue

    service = {"name": "svc", "engine": "callable", "options": {"function": "tests.worker.funcs:echo"}}
    config = parse_config({"services": [{**service, "resources": {"cpus": 2, "memory": "4Gi"}}]})
    policy = Policy(window_seconds=60, min_samples=4, sample_seconds=0.3, memory_floor=MIB, cpu_floor=0.05)
    url = f"sqlite:///{tmp_path / 'q.db'}"
    supervisor = LocalSupervisor(config, url, tmp_path, sizing=policy)
    queue = open_queue(url)
    supervisor.start()
    try:
        deadline = time.monotonic() + 60
        while supervisor.sizing()["svc"]["recommended"] is None:
            assert time.monotonic() < deadline, f"no advice: {supervisor.sizing()}"
            time.sleep(0.1)
        [replica] = [r for r in supervisor.replicas() if r.state is ReplicaState.READY]
        measured = rss_of(replica.pid or 0)

        app = create_app(config, Settings(data_dir=tmp_path, api_key="k"), queue, replicas=supervisor)

        async def services() -> dict:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                answer = await client.get("/v1/services", headers={"Authorization": "Bearer k"})
                assert answer.status_code == 200, answer.text
                return answer.json()

        [svc] = asyncio.run(services())["services"]
    finally:
        supervisor.stop(timeout=10)
        queue.close()
    advice = svc["rightsizing"]
    assert advice["mode"] == "dry-run" and advice["applied"] is False and "never applied" in advice["note"]
    assert advice["configured"] == {"cpus": 2.0, "memory": "4Gi", "memory_bytes": 4 * GIB, "gpus": None}
    requests, limits = advice["recommended"]["requests"], advice["recommended"]["limits"]
    assert 0.5 * measured <= requests["memory_bytes"] <= 3 * measured, (requests, measured)
    assert limits["memory_bytes"] >= requests["memory_bytes"] and limits["cpus"] >= requests["cpus"] >= 0.05
    assert requests["cpus"] < 2, "an idle worker does not need its 2 configured cores"
    assert requests["gpus"] is None and advice["samples"] >= 4
