"""Discovery's settings section (see lucid_cp.config.Settings.section)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    # How many past watch events the discovery index keeps for Watch resumption.
    watch_history: int = 10_000
    # Active health checks of registered instances (lucid_cp.discovery.health).
    health_checks_enabled: bool = True
    # Probe attempts in flight at once, across all instances this replica checks.
    health_max_concurrent_checks: int = 1000
    # Concurrent store writes of status transitions.
    health_write_concurrency: int = 16
    # This replica's id among those sharing the store ("" = a random one per process).
    health_replica_id: str = ""
