"""Active health checking of registered instances (HTTP, gRPC, TCP), shared across replicas.

plan        what to check and how often, from an instance's HealthCheckConfig
state       the status machine with hysteresis (pure)
probes      HTTP and TCP probes, rounds with retries (http_client: the HTTP/1.1 client)
grpc_probe  the gRPC health probe (the one module here that imports grpc; injected)
scheduler   jittered per-instance scheduling, bounded concurrency
membership  replica leases and rendezvous assignment of instances to replicas
writer      one compare-and-swap store write per status transition
checker     follows the index and ties the above together
"""

from lucid_cp.discovery.health.checker import HealthChecker, HealthObserver
from lucid_cp.discovery.health.membership import (
    LeaseMembership,
    Membership,
    StaticMembership,
    rendezvous_owner,
)
from lucid_cp.discovery.health.plan import CheckKind, CheckPlan
from lucid_cp.discovery.health.probes import HttpProber, ProtocolProber, TcpProber
from lucid_cp.discovery.health.state import HealthMachine, Outcome, Thresholds

__all__ = [
    "CheckKind",
    "CheckPlan",
    "HealthChecker",
    "HealthMachine",
    "HealthObserver",
    "HttpProber",
    "LeaseMembership",
    "Membership",
    "Outcome",
    "ProtocolProber",
    "StaticMembership",
    "TcpProber",
    "Thresholds",
    "rendezvous_owner",
]
