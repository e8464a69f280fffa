"""Discovery's store record of an instance: a ``StoredInstance`` (storage.proto) holding the
public ``ServiceInstance`` and, beside it, the internal lease id. The registry, the index and the
health writer read and write records only through these two functions.
"""

from __future__ import annotations

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import storage_pb2


def encode_record(instance: pb.ServiceInstance, lease_id: int) -> bytes:
    """The record's bytes. What is filled on read (revision, active connections) and the TLS
    client key (never kept) are left out."""
    record = storage_pb2.StoredInstance(lease_id=lease_id)
    stored = record.instance
    stored.CopyFrom(instance)
    stored.revision = 0
    stored.active_connections = 0
    if stored.endpoint.tls.client_key:
        stored.endpoint.tls.client_key = ""
    return record.SerializeToString()


def decode_record(value: bytes, mod_revision: int) -> tuple[pb.ServiceInstance, int]:
    """(the instance with ``revision`` = the record's mod_revision, the lease id)."""
    record = storage_pb2.StoredInstance.FromString(value)
    instance = record.instance
    instance.revision = mod_revision
    return instance, record.lease_id
