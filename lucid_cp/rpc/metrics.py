"""Prometheus metrics of one control-plane process, on its own registry (no globals): the RPC
metrics every method shares, and the registry each system adds its own metrics to."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class _CallbackCounter(Collector):
    """A counter whose value is read from its owner on scrape (the owner counts; no hook needed)."""

    def __init__(self, name: str, documentation: str, read: Callable[[], int]) -> None:
        self._name, self._doc, self._read = name, documentation, read

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._doc, value=self._read())


def count_from(
    registry: CollectorRegistry, name: str, documentation: str, read: Callable[[], int]
) -> None:
    """Registers a counter that reports ``read()`` (a monotonic count kept elsewhere)."""
    registry.register(_CallbackCounter(name, documentation, read))


class RpcMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "lucid_grpc_requests_total",
            "gRPC requests handled, by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "lucid_grpc_request_seconds",
            "gRPC request latency (unary: whole call; streaming: until the first message).",
            ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
