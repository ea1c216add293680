"""A gateway-side supervisor in its own process (a Ray driver): starts a service's replicas on the
Ray cluster, prints them as JSON once they serve, `release()`s them and exits, as a gateway pod that
is replaced does. argv: config JSON, queue URL, data dir, Ray address."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from swell.cluster.ray import RayCluster
from swell.core.config import parse_config


def main() -> int:
    config, queue_url, data_dir, address = (
        json.loads(sys.argv[1]),
        sys.argv[2],
        Path(sys.argv[3]),
        sys.argv[4],
    )
    cluster = RayCluster(parse_config(config), queue_url, data_dir, address=address, poll_seconds=0.2)
    cluster.start()
    want = sum(service.replicas.min for service in cluster.config.services)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        serving = [r for r in cluster.replicas() if r.state.value in ("ready", "busy")]
        if len(serving) == want:
            print(json.dumps([{"id": r.id, "pid": r.pid, "node": r.node} for r in serving]), flush=True)
            cluster.release()
            return 0
        time.sleep(0.1)
    print(json.dumps({"timeout": [str(r) for r in cluster.replicas()]}), flush=True)
    cluster.stop(timeout=10)
    return 1


if __name__ == "__main__":
    sys.exit(main())
