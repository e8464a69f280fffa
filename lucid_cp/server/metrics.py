"""Prometheus metrics of one control-plane process, on its own registry (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lucid_grpc_requests_total",
            "gRPC requests handled, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lucid_grpc_request_seconds",
            "gRPC request latency (unary: whole call; streaming: until the first message).",
            ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.store_revision = Gauge(
            "lucid_store_revision", "Store revision the discovery index has applied.",
            registry=self.registry,
        )
        self.index_instances = Gauge(
            "lucid_discovery_instances", "Service instances in the discovery index.",
            registry=self.registry,
        )
        self.watchers = Gauge(
            "lucid_discovery_watchers", "Open discovery Watch streams.", registry=self.registry
        )
        self.index_resyncs = Counter(
            "lucid_discovery_index_resyncs_total",
            "Full re-lists of the discovery index (start, compaction, store reconnect).",
            registry=self.registry,
        )
