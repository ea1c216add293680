"""Workers get only the environment they need: never the gateway's secrets (checked in a real worker
process whose job returns the names of its variables), AWS_* only for an s3:// dataset, and only the
dataset their engine names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swell.cluster.local import LocalSupervisor, worker_environment
from swell.core.config import parse_config
from swell.core.jobs import JobSpec, JobState
from swell.data.config import DatasetConfig
from swell.engines.results import RESULTS_ENV
from swell.queue.base import open_queue
from tests.cluster.test_local import wait_for

SECRETS = {
    "SWELL_API_KEY": "gateway-key-0123",
    "SWELL_WEBHOOK_SECRET": "webhook-secret-0123",
    "SWELL_QUEUE_URL": "redis://:password@127.0.0.1:6399/0",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-0123",
    "GITHUB_TOKEN": "ghp-0123",
}
WANTED = {"OPENAI_API_KEY": "sk-0123", "MYAPP_REGION": "eu", "MYAPP_TOKEN": "t-0123", "OMP_NUM_THREADS": "1"}


def test_a_real_worker_sees_no_gateway_secret(tmp_path: Path) -> None:
    config = parse_config(
        {
            "services": [
                {
                    "name": "env",
                    "engine": "callable",
                    "options": {"function": "tests.engines.samples:environment"},
                    "pass_env": ["OPENAI_API_KEY", "MYAPP_*"],
                }
            ]
        }
    )
    queue_url = f"sqlite:///{tmp_path / 'q.db'}"
    environ = {**os.environ, **SECRETS, **WANTED}
    supervisor = LocalSupervisor(config, queue_url, tmp_path / "data", environ=environ)
    supervisor.start()
    try:
        queue = open_queue(queue_url)
        job, _ = queue.submit(JobSpec("env", {}))
        wait_for(lambda: queue.get(job.id).state.final, timeout=90)
        [replica] = supervisor.replicas()
        assert replica.pid is not None
        environ_file = Path(f"/proc/{replica.pid}/environ").read_bytes()
        argv = Path(f"/proc/{replica.pid}/cmdline").read_bytes()
    finally:
        supervisor.stop(timeout=20)
    done = queue.get(job.id)
    assert done.state == JobState.SUCCEEDED, done.error
    assert done.result is not None
    keys = set(done.result["keys"])
    assert not keys & set(SECRETS), "the gateway's secrets and unrelated credentials stay out"
    assert set(WANTED) <= keys, "what the service passes, by name and by prefix, and thread settings"
    assert {"PATH", "SWELL_DATASETS"} <= keys
    if "PYTHONPATH" in os.environ:
        assert "PYTHONPATH" in keys
    for value in SECRETS.values():
        assert value.encode() not in environ_file
    assert queue_url.encode() not in argv, "the queue URL (it may hold a password) stays out of `ps`"


def test_aws_credentials_go_only_to_a_worker_of_an_s3_dataset() -> None:
    environ = {"PATH": "/bin", "AWS_ACCESS_KEY_ID": "id", "AWS_REGION": "eu-west-1", "SWELL_API_KEY": "k"}
    s3 = {"models": DatasetConfig(source="s3://bucket/models")}
    http = {"models": DatasetConfig(source="https://models.example/minilm")}
    with_s3 = worker_environment(environ, [], s3)
    assert (with_s3["AWS_ACCESS_KEY_ID"], with_s3["AWS_REGION"]) == ("id", "eu-west-1")
    assert "SWELL_API_KEY" not in with_s3
    assert not {k for k in worker_environment(environ, [], http) if k.startswith("AWS_")}
    assert set(worker_environment(environ, [], {})) == {"PATH", "SWELL_DATASETS"}


def test_a_ray_worker_gets_the_nodes_aws_credentials_for_an_s3_result_store(tmp_path: Path) -> None:
    ray_cluster = pytest.importorskip("swell.cluster.ray", reason="ray is not installed")
    from swell.worker.contract import WorkerArgs

    environ = {"PATH": "/bin", "AWS_ACCESS_KEY_ID": "id", "SWELL_API_KEY": "k"}
    service = parse_config(
        {"services": [{"name": "s", "engine": "callable", "options": {"function": "builtins:dict"}}]}
    )
    args = WorkerArgs(
        service=service.services[0], replica_id="r", data_dir=tmp_path, queue_url="redis://:pw@q/0"
    )
    secret = {"queue_url": "redis://:pw@q/0", "datasets": {}, "env": {RESULTS_ENV: "s3://bucket/results"}}
    env = ray_cluster.host_environment(environ, [], secret, args, "node-1")
    assert env["AWS_ACCESS_KEY_ID"] == "id" and env[RESULTS_ENV] == "s3://bucket/results"
    assert env[ray_cluster.NODE_ENV] == "node-1" and "SWELL_API_KEY" not in env
    no_s3 = ray_cluster.host_environment(environ, [], {**secret, "env": {}}, args, "node-1")
    assert "AWS_ACCESS_KEY_ID" not in no_s3


def test_a_worker_gets_only_the_dataset_its_engine_names(tmp_path: Path) -> None:
    config = parse_config(
        {
            "datasets": {
                "minilm": {"source": "s3://models/minilm", "secret_access_key": "minilm-secret"},
                "other": {"source": "s3://models/other", "secret_access_key": "other-secret"},
            },
            "services": [
                {"name": "embed", "engine": "embeddings", "options": {"dataset": "minilm"}},
                {"name": "plain", "engine": "callable", "options": {"function": "builtins:dict"}},
            ],
        }
    )
    supervisor = LocalSupervisor(config, "memory://", tmp_path, environ={"PATH": "/bin", "AWS_PROFILE": "p"})
    embed = supervisor.worker_env(config.service("embed"))
    assert "minilm-secret" in embed["SWELL_DATASETS"] and "other-secret" not in embed["SWELL_DATASETS"]
    assert embed["AWS_PROFILE"] == "p"
    plain = supervisor.worker_env(config.service("plain"))
    assert plain == {"PATH": "/bin", "SWELL_DATASETS": "{}"}
