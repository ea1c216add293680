"""The worker runtime: one process per replica that leases jobs of one service and runs them through
its engine (`runner`), bisecting batches that fail as a whole (`batch`), living through storage
outages (`storage`) and publishing its state for the supervisor (`status`)."""

DATASETS_ENV = "SWELL_DATASETS"  # swell.yaml's `datasets:` as JSON: set by the supervisor, read by a worker
QUEUE_ENV = "SWELL_WORKER_QUEUE"  # the queue URL (it may hold a Redis password): environment, not argv
