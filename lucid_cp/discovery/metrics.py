"""Discovery's Prometheus metrics: the index, the watches and the active health checks. Built
by the discovery module on the process's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb

_CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class DiscoveryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.store_revision = Gauge(
            "lucid_store_revision",
            "Store revision the discovery index has applied.",
            registry=registry,
        )
        self.index_instances = Gauge(
            "lucid_discovery_instances",
            "Service instances in the discovery index.",
            registry=registry,
        )
        self.watchers = Gauge(
            "lucid_discovery_watchers", "Open discovery Watch streams.", registry=registry
        )
        self.watch_connected = Gauge(
            "lucid_discovery_watch_connected",
            "1 while the discovery index's store watch is connected, 0 during a store outage.",
            registry=registry,
        )
        self.health_checks = Counter(
            "lucid_health_checks_total",
            "Active health-check rounds run by this replica, by check kind and outcome "
            "(pass, slow, fail).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.health_check_seconds = Histogram(
            "lucid_health_check_seconds",
            "Duration of the deciding probe attempt of each active health-check round.",
            ["kind"],
            buckets=_CHECK_BUCKETS,
            registry=registry,
        )
        self.health_check_lateness = Histogram(
            "lucid_health_check_lateness_seconds",
            "How long after it was due each health-check round got its first probe slot.",
            buckets=_CHECK_BUCKETS,
            registry=registry,
        )
        self.health_transitions = Counter(
            "lucid_health_transitions_total",
            "Instance health status changes decided by active checks, by old and new status.",
            ["from_status", "to_status"],
            registry=registry,
        )
        self.health_checked_instances = Gauge(
            "lucid_health_checked_instances",
            "Instances this replica actively checks.",
            registry=registry,
        )
        self.health_replicas = Gauge(
            "lucid_health_replicas",
            "Live control-plane replicas sharing the active health checks.",
            registry=registry,
        )
        self.health_pending_writes = Gauge(
            "lucid_health_pending_writes",
            "Status transitions waiting to be written to the store.",
            registry=registry,
        )


def _state(value: int) -> str:
    return (
        pb.HealthState.Name(pb.HealthState.ValueType(value)).removeprefix("HEALTH_STATE_").lower()
    )


class HealthCheckMetrics:
    """The health checker's observer, recording into the discovery metrics."""

    def __init__(self, metrics: DiscoveryMetrics) -> None:
        self._metrics = metrics

    def round_done(self, kind: str, outcome: str, seconds: float, lateness: float) -> None:
        self._metrics.health_checks.labels(kind, outcome).inc()
        self._metrics.health_check_seconds.labels(kind).observe(seconds)
        self._metrics.health_check_lateness.observe(lateness)

    def transition(self, before: int, after: int) -> None:
        self._metrics.health_transitions.labels(_state(before), _state(after)).inc()
