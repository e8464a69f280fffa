"""One frozen settings object. Only the CLI reads the environment and files to build it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``capacity`` requests, refilled at capacity per ``period`` seconds."""

    capacity: int
    period: float = 60.0


def default_rate_limits() -> dict[str, RateLimit]:
    """The seed's table (api-spec.md, "Rate Limiting"), per principal."""
    return {
        "registration": RateLimit(100),
        "health": RateLimit(1000),
        "discovery": RateLimit(1000),
    }


@dataclass(frozen=True, slots=True)
class Settings:
    store_url: str = "memory://"
    grpc_addr: str = "127.0.0.1:50051"
    http_addr: str = "127.0.0.1:8080"
    # Prometheus /metrics listener ("" = off).
    metrics_addr: str = ""
    data_dir: Path = Path(".lucid")
    jwt_secret: bytes = b""
    jwt_issuer: str = "lucid-cp"
    jwt_audience: str = "lucid-cp"
    rate_limits: dict[str, RateLimit] = field(default_factory=default_rate_limits)
    rate_limits_enabled: bool = True
    # Largest gRPC message accepted (bytes).
    max_message_bytes: int = 4 * 1024 * 1024
    # Seconds in-flight RPCs get to finish on shutdown.
    shutdown_grace: float = 5.0
    # How many past watch events the discovery index keeps for Watch resumption.
    watch_history: int = 10_000
    log_level: str = "INFO"
    # Active health checks of registered instances (lucid_cp.discovery.health).
    health_checks_enabled: bool = True
    # Probe attempts in flight at once, across all instances this replica checks.
    health_max_concurrent_checks: int = 1000
    # Concurrent store writes of status transitions.
    health_write_concurrency: int = 16
    # Seconds the replica-membership lease lives without keepalive (etcd stores; with sqlite
    # and memory there is a single replica). A dead replica's share moves after this long.
    health_replica_ttl: int = 3
    # This replica's id among those sharing the store ("" = a random one per process).
    health_replica_id: str = ""
