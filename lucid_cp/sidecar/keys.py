"""Store key layout of the sidecar system. Everything lives under one prefix so the index needs
one watch.

/lucid/sidecar/configs/<serviceId>   SidecarConfigurationResponse: configuration, serviceName,
                                     createdAt; under the instance's store lease

Values are binary protobuf: the read response with only what is stored set (``version`` and
``revision`` are the record's mod_revision, filled on read; warnings belong to a write).
"""

from __future__ import annotations

PREFIX = b"/lucid/sidecar/"
CONFIGS = PREFIX + b"configs/"


def config_key(service_id: str) -> bytes:
    return CONFIGS + service_id.encode()


def parse(key: bytes) -> str | None:
    """The serviceId of a configuration key, None for anything else."""
    if not key.startswith(CONFIGS):
        return None
    return key[len(CONFIGS) :].decode() or None
