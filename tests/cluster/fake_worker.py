"""A stand-in for `python -m swell.worker` that speaks its status-file contract: it fails its first
`--fail-times` starts (state "failed" and an `error`, exit 1), then stays ready with a heartbeat.
Each start appends its wall-clock time to `--starts`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from swell.worker.status import status_path, write_status


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replica-id", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--fail-times", type=int, default=0)
    parser.add_argument("--starts", required=True, type=Path)
    args, _ = parser.parse_known_args()
    with args.starts.open("a") as starts:
        starts.write(f"{time.time()}\n")
    start = len(args.starts.read_text().split())
    path = status_path(args.data_dir, args.replica_id)
    if start <= args.fail_times:
        write_status(
            path, {"state": "failed", "error": f"ConfigError: start {start} failed", "heartbeat": time.time()}
        )
        return 1
    while True:
        write_status(path, {"state": "ready", "heartbeat": time.time(), "phases": {"load": 0.0}})
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
