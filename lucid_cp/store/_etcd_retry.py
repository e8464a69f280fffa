"""How the etcd backend reads a failed call: was the request applied, not applied, or unknown?

The rule, with every error text that decides it, is in :mod:`lucid_cp.store.base`, "Faults";
this module implements it (``classify``) and judges a write's read-back (``own_write_revision``).
FINAL is anything else: etcd's answer (compaction, lease not found, limits), translated.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import grpc

from lucid_cp.store.base import KeyValue, Put


class Failure(enum.Enum):
    NOT_APPLIED = "not_applied"
    UNKNOWN = "unknown"
    FINAL = "final"


_NEVER_SENT = ("failed to connect", "no address available", "no connection available")
_REFUSED_BEFORE_PROPOSAL = (
    "raft proposal dropped",
    "etcdserver: no leader",
    "etcdserver: too many requests",
    "etcdserver: not capable",
)
_MAYBE_APPLIED = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
}


def never_sent(e: grpc.aio.AioRpcError) -> bool:
    """gRPC failed the call for want of a connection, so the server never saw it."""
    details = (e.details() or "").lower()
    return e.code() is grpc.StatusCode.UNAVAILABLE and any(m in details for m in _NEVER_SENT)


def classify(e: grpc.aio.AioRpcError) -> Failure:
    details = (e.details() or "").lower()
    if never_sent(e) or any(marker in details for marker in _REFUSED_BEFORE_PROPOSAL):
        return Failure.NOT_APPLIED
    if e.code() in _MAYBE_APPLIED:
        return Failure.UNKNOWN
    return Failure.FINAL


class OutcomeUnknown(Exception):
    """A write failed after it may have reached the leader (internal to the etcd backend)."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(f"{error.code().name}: {error.details()}")
        self.error = error


def own_write_revision(puts: Sequence[Put], kvs: Sequence[KeyValue | None], floor: int) -> int:
    """The revision at which ``puts`` (one put or one txn's puts) were applied, judged from the
    keys read back after an unknown outcome; 0 if they were not.

    Applied means: every key holds exactly the value and lease put, all at one mod_revision
    (a txn writes all its keys at one revision), and that revision is above ``floor``, a
    revision the store had seen before the first attempt was sent (so no older write counts).
    A write by someone else of the very same bytes and lease after ``floor`` is
    indistinguishable and counts too: the keys then hold exactly what this write asked for."""
    revisions = set()
    for put, kv in zip(puts, kvs, strict=True):
        if kv is None or kv.value != put.value or kv.lease != put.lease or kv.mod_revision <= floor:
            return 0
        revisions.add(kv.mod_revision)
    return revisions.pop() if len(revisions) == 1 else 0
