"""Store key layout of the mesh. Everything lives under one prefix so the index needs one watch.

/lucid/mesh/traffic/<namespace>/<name>    TrafficPolicyResponse: policy, createdAt, updatedAt
/lucid/mesh/security/<namespace>/<name>   SecurityPolicyResponse: policy, createdAt, updatedAt
/lucid/mesh/circuit-breakers/<service>    CircuitBreakerResponse: serviceName, config, updatedAt
/lucid/mesh/mtls                          MTLSConfigResponse: config, updatedAt

Values are binary protobuf: the read response of the resource with only what is stored set
(revisions are the record's mod_revision, filled on read; warnings belong to a write). Names and
namespaces match ^[a-z0-9-]+$, so "/" never occurs inside a segment.
"""

from __future__ import annotations

import enum

PREFIX = b"/lucid/mesh/"


class Kind(enum.Enum):
    TRAFFIC = "traffic"
    SECURITY = "security"
    CIRCUIT_BREAKER = "circuit-breakers"
    MTLS = "mtls"


def policy_key(kind: Kind, namespace: str, name: str) -> bytes:
    return PREFIX + f"{kind.value}/{namespace}/{name}".encode()


def circuit_breaker_key(service_name: str) -> bytes:
    return PREFIX + f"{Kind.CIRCUIT_BREAKER.value}/{service_name}".encode()


MTLS_KEY = PREFIX + Kind.MTLS.value.encode()


def parse(key: bytes) -> tuple[Kind, str] | None:
    """(kind, the rest of the key: "namespace/name", a service name or "") for a mesh key, None
    for anything else."""
    if not key.startswith(PREFIX):
        return None
    rest = key[len(PREFIX) :].decode()
    if rest == Kind.MTLS.value:
        return Kind.MTLS, ""
    kind, _, ident = rest.partition("/")
    for k in (Kind.TRAFFIC, Kind.SECURITY, Kind.CIRCUIT_BREAKER):
        if kind == k.value and ident:
            return k, ident
    return None
