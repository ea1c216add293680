"""worker"""

DATASETS_ENV = "SWELL_DATASETS"  # swell.yaml's `datasets:` as JSON: set by the supervisor, read by a worker
