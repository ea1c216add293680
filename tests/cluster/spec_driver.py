"""A Ray head whose GCS keeps its tables in Redis (GCS fault tolerance, as KubeRay recommends), in
its own process: starts one replica through `RayCluster` with a queue URL holding a password, and a
canary actor given the password as a plain argument, then reports which of Redis' GCS records hold
the password. argv: Redis host:port, data dir, storage namespace; the queue URL in $SPEC_QUEUE_URL
(not argv: the driver's command line is in the GCS's job record). Prints JSON."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ray
import redis

from swell.cluster.ray import RayCluster
from swell.core.config import parse_config


class Canary:
    def __init__(self, value: str) -> None:
        self.value = value

    def ping(self) -> bool:
        return True


def records_holding(client: redis.Redis, namespace: str, secret: bytes) -> list[str]:
    found = []
    for key in client.scan_iter(match=f"*{namespace}*"):
        kind = client.type(key)
        values = client.hgetall(key).values() if kind == b"hash" else [client.get(key) or b""]
        found += [key.decode()] if any(secret in value for value in values) else []
    return found


def main() -> int:
    redis_at, data_dir, namespace = sys.argv[1:4]
    queue_url = os.environ.pop("SPEC_QUEUE_URL")
    os.environ |= {"RAY_REDIS_ADDRESS": redis_at, "RAY_external_storage_namespace": namespace}
    os.environ.pop("RAY_ADDRESS", None)  # a head of its own, not the session cluster
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="spec", log_to_driver=False)
    password = urlsplit(queue_url).password or ""
    service = {"name": "spec", "engine": "callable", "options": {"function": "tests.worker.funcs:echo"}}
    config = parse_config({"cluster": {"kind": "ray", "namespace": "spec"}, "services": [service]})
    cluster = RayCluster(config, queue_url, Path(data_dir), poll_seconds=0.2)
    cluster.start()
    deadline = time.monotonic() + 60
    while not any(r.node for r in cluster.replicas()) and time.monotonic() < deadline:
        time.sleep(0.1)
    host, port = redis_at.split(":")
    client = redis.Redis(host=host, port=int(port))
    replica = records_holding(client, namespace, password.encode())
    canary: Any = ray.remote(num_cpus=0)(Canary)
    canary = canary.remote(password)
    ray.get(canary.ping.remote())
    seen = records_holding(client, namespace, password.encode())
    placed = any(r.node for r in cluster.replicas())
    cluster.stop(timeout=10)
    ray.shutdown()
    for key in client.scan_iter(match=f"*{namespace}*"):
        client.delete(key)
    print(json.dumps({"placed": placed, "replica": replica, "canary": seen}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
