"""Store key layout of the sidecar system.

/lucid/sidecar/configs/<serviceId>            SidecarConfigurationResponse: configuration,
                                              serviceName, createdAt; under the instance's lease
/lucid/sidecar/status/sessions/<serviceId>    SidecarSession (storage.proto): the sidecar as
                                              the control plane knows it; the instance's lease
/lucid/sidecar/status/replicas/<replica>      ReplicaProgress: a replica's evaluated revision;
                                              under the replica's own lease
/lucid/sidecar/usage/<serviceName>/<serviceId>/<minute>/<stream>
                                              UsageMinute: one sidecar's reports of one minute
                                              on one stream; the instance's lease, deleted
                                              after 24 h

Each index watches only its own part (configs, status); usage is read by range on demand.
Values are binary protobuf: for configurations, the read response with only what is stored set
(``version`` and ``revision`` are the record's mod_revision, filled on read).
"""

from __future__ import annotations

PREFIX = b"/lucid/sidecar/"
CONFIGS = PREFIX + b"configs/"
STATUS = PREFIX + b"status/"
SESSIONS = STATUS + b"sessions/"
REPLICAS = STATUS + b"replicas/"
USAGE = PREFIX + b"usage/"


def config_key(service_id: str) -> bytes:
    return CONFIGS + service_id.encode()


def parse(key: bytes) -> str | None:
    """The serviceId of a configuration key, None for anything else."""
    if not key.startswith(CONFIGS):
        return None
    return key[len(CONFIGS) :].decode() or None


def session_key(service_id: str) -> bytes:
    return SESSIONS + service_id.encode()


def replica_key(replica: str) -> bytes:
    return REPLICAS + replica.encode()


def usage_prefix(service_name: str, service_id: str = "") -> bytes:
    """Every usage record of the service, or of one of its sidecars."""
    if service_id:
        return USAGE + f"{service_name}/{service_id}/".encode()
    return USAGE + f"{service_name}/".encode()


def usage_minute_prefix(service_name: str, service_id: str, minute: int) -> bytes:
    """Every stream's record of one sidecar's minute. Zero-padded: keys sort by minute."""
    return usage_prefix(service_name, service_id) + f"{minute:012d}/".encode()


def usage_key(service_name: str, service_id: str, minute: int, stream: str) -> bytes:
    return usage_minute_prefix(service_name, service_id, minute) + stream.encode()


def usage_minute(key: bytes) -> int | None:
    """The minute of a usage key, None when it is not one."""
    parsed = parse_usage(key)
    return parsed[2] if parsed is not None else None


def parse_usage(key: bytes) -> tuple[str, str, int, str] | None:
    """(serviceName, serviceId, minute, stream) of a usage key, None when it is not one."""
    if not key.startswith(USAGE):
        return None
    parts = key[len(USAGE) :].decode().split("/")
    if len(parts) != 4 or not parts[2].isdigit() or not all(parts):
        return None
    return parts[0], parts[1], int(parts[2]), parts[3]
