"""The in-memory store: the sqlite backend on a private ``:memory:`` database.

Sharing the sqlite code path means the memory backend cannot drift from the persistent one; it
is just as exact about revisions, leases, compaction and watches, and loses everything on close.
"""

from __future__ import annotations

from lucid_cp.clock import Clock
from lucid_cp.store.sqlite import SqliteStore


class MemoryStore(SqliteStore):
    def __init__(self, *, clock: Clock | None = None, reap_interval: float = 1.0) -> None:
        super().__init__(":memory:", clock=clock, reap_interval=reap_interval)
