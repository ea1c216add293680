"""The durable job queue: one small protocol, backends for SQLite (embedded), memory and Redis."""

from swell.queue.base import QueueBackend, QueueStats, open_queue

__all__ = ["QueueBackend", "QueueStats", "open_queue"]
