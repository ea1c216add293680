"""A service whose engine names a dataset, served by a real worker that LocalSupervisor starts: the
datasets config reaches the worker in its environment (not argv), the worker fetches the real
all-MiniLM-L6-v2 from an HTTP origin on loopback into the node cache, and a job gets its embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from swell.cluster.local import LocalSupervisor
from swell.core.config import parse_config
from swell.core.jobs import JobSpec, JobState
from swell.core.replicas import ReplicaState
from swell.queue.base import open_queue
from tests.cluster.test_local import wait_for
from tests.data.servers import range_server
from tests.engines.minilm import TEXTS, copy_minilm, files_of, reference_embeddings

SECRET = "not-in-argv-5f1c"


def test_a_dataset_service_serves_a_job_through_a_real_worker(tmp_path: Path) -> None:
    minilm = copy_minilm(tmp_path / "origin")
    queue_url = f"sqlite:///{tmp_path / 'q.db'}"
    with range_server(minilm) as (url, counter):
        config = parse_config(
            {
                "datasets": {
                    "minilm": {"source": url, "include": files_of(minilm), "secret_access_key": SECRET}
                },
                "services": [
                    {
                        "name": "embed",
                        "engine": "embeddings",
                        "max_batch_size": 8,
                        "options": {"dataset": "minilm", "device": "cpu"},
                    }
                ],
            }
        )
        supervisor = LocalSupervisor(config, queue_url, tmp_path / "data", hang_seconds=60)
        supervisor.start()
        try:
            queue = open_queue(queue_url)
            job, _ = queue.submit(JobSpec("embed", {"texts": TEXTS}))
            wait_for(lambda: queue.get(job.id).state == JobState.SUCCEEDED, timeout=180)
            [replica] = supervisor.replicas()
            assert replica.state in (ReplicaState.READY, ReplicaState.BUSY) and replica.pid
            argv = Path(f"/proc/{replica.pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{replica.pid}/environ").read_bytes()
            assert SECRET.encode() not in argv and SECRET.encode() in environ
        finally:
            supervisor.stop(timeout=20)
    result = queue.get(job.id).result
    assert result is not None and result["model"] == "minilm" and result["dimensions"] == 384
    assert np.allclose(result["embeddings"], reference_embeddings(minilm), atol=1e-6)
    assert counter.bytes >= (minilm / "model.safetensors").stat().st_size
    assert replica.model == "minilm" and replica.phases["fetch"] > 0
    assert set(replica.phases) == {"fetch", "load", "warmup"}
