"""The store contract: etcd v3 semantics, implemented by sqlite, memory and etcd backends.

Rules every backend obeys (the contract test suite in tests/store/ proves them):

* One global, monotonically increasing ``revision``. Every successful write (put, delete that
  removed something, a txn whose executed branch wrote anything) advances it by exactly one; all
  keys written in one txn share that revision. A fresh store is at revision 1 (as etcd).
* Each key carries ``create_revision`` (revision of the put that created it since it last did not
  exist), ``mod_revision`` (revision of its last write) and ``version`` (writes since creation, 1
  on create). A deleted key has none of them; recreating it starts over.
* ``range(prefix, revision=R)`` reads the keyspace as it was at revision R. R below the compacted
  revision raises :class:`CompactedError`; R above the current revision raises :class:`FutureRevisionError`.
  Results are sorted by key; ``limit`` caps them and ``more`` says whether more existed; ``count``
  is the number of keys in range (ignoring limit). ``start`` narrows the range to keys >= start,
  which with a pinned revision pages through a large prefix consistently.
* Txn: all compares are evaluated against the current state atomically; if all hold, the success
  ops run, otherwise the failure ops run; either way as one atomic write at one revision.
* Leases: ``grant_lease(ttl)`` returns a lease whose keys are deleted (with normal delete events
  at a new revision) once its granted ``Lease.ttl`` (see MIN_LEASE_TTL below) passes without
  ``keepalive``. ``revoke`` deletes its keys at
  once. Putting a key with an unknown/expired lease raises :class:`LeaseNotFoundError`; so does
  keepalive of an unknown/expired lease.
* ``watch(prefix, start_revision)`` yields batches of events with revision >= start_revision, in
  revision order, every event exactly once, one batch per revision. If start_revision is at or below the
  compacted revision it raises :class:`CompactedError` (from the iterator, on first ``__anext__``)
  carrying ``compact_revision``: the consumer must re-list. A watch never skips silently.
* Any backend failure that is not one of the errors above is raised as :class:`StoreUnavailableError`.

Faults (what matters on etcd; sqlite and memory fail only when closed or broken). Every operation
has one request deadline (etcd backend: ``request_timeout``, 5 s; each attempt at most
``attempt_timeout``, 2 s, since a proposal lost in a leader change is never answered). Within
it, failed attempts are resent with backoff on the store's clock; StoreUnavailableError is
raised only when the deadline is spent or a write's outcome cannot be determined. The deadline
bounds everything an operation waits for: finding an endpoint that answers (each at most
``connect_timeout``), a write's first read of the current revision, and its read-back; a
write's attempt ends early enough (0.5 s, at most a quarter of the deadline) to leave time to
read back its outcome.

* Not applied (always resent): no connection to send on ("failed to connect", "no address
  available", "no connection available"), or etcd refused before proposing ("raft proposal
  dropped", "etcdserver: no leader", "etcdserver: too many requests", "etcdserver: not
  capable").
* Outcome unknown (the request may have reached the leader): DEADLINE_EXCEEDED, any other
  UNAVAILABLE (connection lost mid-call, "leader changed", "request timed out"), CANCELLED,
  UNKNOWN. Reads (get, range, current_revision, read-only txns) and idempotent requests
  (keepalive; grant_lease, as etcd's own client does: a duplicate grant leaves an unused lease
  that expires) are resent.
* A put, or a txn whose success branch is only puts and whose failure branch only reads (every
  create-only and compare-and-swap write here), resolves an unknown outcome itself: it reads its
  keys back (linearizably) and counts as applied iff every key holds exactly its value and lease,
  all at one mod_revision above a revision the store had seen before the first attempt; then
  that revision is the answer (a txn: succeeded, ``responses`` one None per put). Otherwise it is
  resent. A resent txn that then fails its compares is checked again the same way, because its
  own earlier attempt, applying late, may be what failed them: so a create-only write never
  reports "already exists" for itself. Limits: a write by someone else of the very same bytes and
  lease in that window counts as this write (the keys then hold what it asked for); a guarded
  txn (create-only, CAS on mod_revision) applies at most once, but a put or unguarded txn whose
  earlier attempt is still in the raft log after the read-back (same leader, a slow commit, not
  a leader change: a linearizable read after a new leader has committed sees every entry of the
  old term that will ever apply) may apply twice: same value, one extra revision.
* ``revoke_lease`` and ``delete`` of one key are resent after an unknown outcome too: the
  effect is the same however often they apply. A resent revoke that finds the lease gone after
  an earlier unknown outcome counts as applied and answers the current revision. A resent
  delete answers what the resend did: ``(0, revision)`` if the earlier attempt had already
  deleted the key. Limit: a key recreated by someone else between the lost attempt and the
  resend is deleted by the resend.
* Other writes (delete by prefix, compact, txns that delete or write in the failure branch) are
  resent only when not applied; an unknown outcome raises StoreUnavailableError: it may or may
  not have applied.

etcd's limits (its defaults; every backend enforces them, so sqlite and memory refuse what a
production etcd refuses, and the etcd backend checks them before sending too):

* :data:`MAX_TXN_OPS` (etcd ``--max-txn-ops``, 128): a txn may hold at most this many compares,
  at most this many success ops and at most this many failure ops; each list is counted on its
  own (etcd's ``checkTxnRequest``: the longest of the three is compared with the limit).
  More raises :class:`TooManyOpsError`.
* :data:`MAX_REQUEST_BYTES` (etcd ``--max-request-bytes``, 1.5 MiB): the size of one write
  request, counted as the bytes of every key and value in it (puts, deletes, gets and compares)
  plus :data:`OP_OVERHEAD_BYTES` per op and per compare, a bound on etcd's own encoding of the
  request. More raises :class:`RequestTooLargeError`; so a single put carries at most
  ``MAX_REQUEST_BYTES - OP_OVERHEAD_BYTES`` bytes of key plus value.
* :data:`MIN_LEASE_TTL` (2 s, etcd's minimum with its default heartbeat of 100 ms and election
  timeout of 1 s: ``ceil(1.5 * election timeout)``): a lease asked for with a shorter ttl (zero
  and negative included) is granted with this ttl instead, as etcd does; ``Lease.ttl`` and
  ``keepalive`` report the ttl granted. A ttl above :data:`MAX_LEASE_TTL` raises ValueError.

Keys and values are bytes. Backends are async and safe to use from one event loop.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

MAX_TXN_OPS = 128
MAX_REQUEST_BYTES = 1536 * 1024
OP_OVERHEAD_BYTES = 64
MIN_LEASE_TTL = 2
MAX_LEASE_TTL = 9_000_000_000


class StoreError(Exception):
    """Base class of every error a store raises."""


class TooManyOpsError(StoreError):
    """A txn holds more than :data:`MAX_TXN_OPS` compares, success ops or failure ops."""


class RequestTooLargeError(StoreError):
    """A write request is larger than :data:`MAX_REQUEST_BYTES` (see the module docstring)."""


class StoreUnavailableError(StoreError):
    """The backend could not be reached, or gave no usable answer within the request deadline
    (see "Faults" in the module docstring). A write may or may not have applied: one whose
    attempts all failed before reaching etcd did not, but the caller cannot tell which case
    it is, so callers re-read before retrying."""


class CompactedError(StoreError):
    """The requested revision has been compacted away."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted; oldest available is {compact_revision + 1}")
        self.compact_revision = compact_revision


class FutureRevisionError(StoreError):
    """The requested revision is newer than the store's current revision."""


class LeaseNotFoundError(StoreError):
    """The lease does not exist (never granted, revoked, or expired)."""

    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id} not found")
        self.lease_id = lease_id


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int  # the revision the range was read at
    more: bool = False
    count: int = 0


class CompareTarget(enum.Enum):
    VERSION = "version"
    CREATE = "create_revision"
    MOD = "mod_revision"
    VALUE = "value"
    LEASE = "lease"


class CompareOp(enum.Enum):
    EQUAL = "=="
    NOT_EQUAL = "!="
    GREATER = ">"
    LESS = "<"


@dataclass(frozen=True, slots=True)
class Compare:
    """A txn guard on one key. A missing key has version/create/mod revision 0 and lease 0; a VALUE
    compare on a missing key never holds, whatever the op (as in etcd)."""

    key: bytes
    target: CompareTarget
    op: CompareOp
    value: int | bytes


def key_missing(key: bytes) -> Compare:
    """Holds when ``key`` does not exist (create-only writes)."""
    return Compare(key, CompareTarget.CREATE, CompareOp.EQUAL, 0)


def mod_revision_is(key: bytes, revision: int) -> Compare:
    """Holds when ``key`` was last written at ``revision`` (compare-and-swap)."""
    return Compare(key, CompareTarget.MOD, CompareOp.EQUAL, revision)


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    prefix: bool = False  # delete every key starting with ``key``


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes


TxnOp = Put | Delete | Get


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int  # store revision after the txn (unchanged if the executed branch wrote nothing)
    # one entry per executed op: Put -> None, Delete -> number deleted, Get -> KeyValue | None
    responses: list[KeyValue | int | None] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: int  # seconds granted


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    # For DELETE: key set, value b"", mod_revision = the deletion revision, other fields 0.
    kv: KeyValue
    prev_kv: KeyValue | None = None  # the value before this event, if the watch asked for it


@dataclass(frozen=True, slots=True)
class WatchBatch:
    revision: int
    events: list[WatchEvent]


@runtime_checkable
class KeyReader(Protocol):
    """Reads of the keyspace."""

    async def current_revision(self) -> int: ...

    async def get(self, key: bytes) -> KeyValue | None: ...

    async def range(
        self, prefix: bytes, *, limit: int = 0, revision: int = 0, start: bytes = b""
    ) -> RangeResult:
        """Keys starting with ``prefix``; with ``start`` (a key at or after ``prefix``), only those
        >= start: a page after key K is ``start=K + b"\\0"`` at the first page's revision."""
        ...


@runtime_checkable
class KeyWriter(Protocol):
    """Writes of the keyspace (txn also reads, with Get ops)."""

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Returns the new store revision."""
        ...

    async def delete(self, key: bytes, *, prefix: bool = False) -> tuple[int, int]:
        """Returns (number of keys deleted, store revision after)."""
        ...

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult: ...


@runtime_checkable
class Leases(Protocol):
    async def grant_lease(self, ttl: int) -> Lease:
        """A new lease with ``max(ttl, MIN_LEASE_TTL)`` seconds (``Lease.ttl`` says which)."""
        ...

    async def keepalive(self, lease_id: int) -> int:
        """Refreshes the lease; returns its granted ttl. Raises LeaseNotFoundError."""
        ...

    async def revoke_lease(self, lease_id: int) -> int:
        """Revokes the lease and deletes its keys; returns the store revision after (the
        deletion's revision when it had keys). Unknown lease: LeaseNotFoundError."""
        ...


@runtime_checkable
class Watcher(Protocol):
    def watch(
        self, prefix: bytes, start_revision: int, *, prev_kv: bool = False
    ) -> AsyncIterator[WatchBatch]:
        """``prev_kv=True`` asks for each event's previous value (costs etcd a read per event);
        without it, backends may leave ``WatchEvent.prev_kv`` None."""
        ...


@runtime_checkable
class WatchedPrefix(KeyReader, Watcher, Protocol):
    """What a watch-fed cache needs: list a prefix at a revision, then watch it."""


class Store(KeyReader, KeyWriter, Leases, Watcher, Protocol):
    """The whole contract. Code that needs only part of it takes the narrow protocol instead."""

    # True when several control-plane processes can share this store (etcd); False for the
    # single-process sqlite and memory stores, where one replica does everything.
    shared: bool

    async def compact(self, revision: int) -> None: ...

    async def close(self) -> None: ...
