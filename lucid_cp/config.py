"""One frozen settings object. Only the CLI reads the environment and files to build it.

Settings common to the whole process live here; each system keeps its own section (a frozen
dataclass defined in its package, e.g. ``lucid_cp.discovery.settings.DiscoverySettings``),
carried in ``sections`` and read with ``settings.section(DiscoverySettings)``, so adding a
system does not touch this file.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``capacity`` requests, refilled at capacity per ``period`` seconds."""

    capacity: int
    period: float = 60.0

    def __post_init__(self) -> None:
        if self.capacity < 1 or not self.period > 0:
            raise ValueError(f"rate limit {self.capacity}/{self.period}s: both must be positive")


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
    # Overrides of the systems' default rate-limit buckets (by bucket name). Naming a bucket no
    # system declares stops start-up.
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)
    rate_limits_enabled: bool = True
    # Largest gRPC message accepted (bytes).
    max_message_bytes: int = 4 * 1024 * 1024
    # Seconds in-flight RPCs get to finish on shutdown.
    shutdown_grace: float = 5.0
    # Seconds this process's replica lease (lucid_cp.replica_lease) lives without a keepalive:
    # after this long a dead replica's health-check share and push subscriptions move to the
    # others and its sidecars read as disconnected.
    replica_ttl: int = 10
    log_level: str = "INFO"
    # Per-system sections, at most one instance of each type; absent ones take their defaults.
    sections: tuple[object, ...] = ()

    def section(self, kind: type[T]) -> T:
        """This process's settings section of type ``kind`` (its defaults when not given)."""
        for item in self.sections:
            if type(item) is kind:
                return item
        return kind()


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (every system's count and seconds flags)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
