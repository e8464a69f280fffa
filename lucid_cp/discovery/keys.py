"""Store key layout of discovery. Everything lives under one prefix so the index needs one watch.

/lucid/discovery/instances/<serviceId>  ServiceInstance (binary protobuf), under its lease
/lucid/discovery/load/<serviceId>       active connection count (ASCII int), same lease
"""

from __future__ import annotations

PREFIX = b"/lucid/discovery/"
INSTANCES = PREFIX + b"instances/"
LOAD = PREFIX + b"load/"


def instance_key(service_id: str) -> bytes:
    return INSTANCES + service_id.encode()


def load_key(service_id: str) -> bytes:
    return LOAD + service_id.encode()


def parse(key: bytes) -> tuple[bytes, str] | None:
    """Returns (kind prefix, service id) for a discovery key, None for anything else."""
    for kind in (INSTANCES, LOAD):
        if key.startswith(kind):
            return kind, key[len(kind) :].decode()
    return None
