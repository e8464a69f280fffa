"""The store contract on a real etcd v3 cluster.

Talks gRPC directly through aetcd's generated stubs (``aetcd.rpc``): aetcd's high-level client
cannot express range limits, pinned revisions, txn Get responses or per-revision watch batches,
all of which the contract needs.

Endpoints and failover: the store keeps one channel to one endpoint. Before each call it makes
sure that channel is READY; if it does not become ready within ``connect_timeout`` the store
tries the next endpoints in turn, and raises :class:`StoreUnavailableError` when none answers
(an operation's search also ends with its request deadline).

Faults and retries (the rule is in :mod:`lucid_cp.store.base`, "Faults"; the error
classification in ``_etcd_retry``): every operation has ``request_timeout`` in all, each attempt
at most ``attempt_timeout`` (a proposal lost in a leader change is never answered, so waiting
the whole deadline for it would leave no time to resend). Failed attempts are resent with
backoff on the store's clock while the deadline lasts; UNAVAILABLE and an expired attempt also
move to the next endpoint. A write whose outcome is unknown reads its keys back before it
answers or resends (see ``_write``).

Watches: each watch has its own gRPC stream. After a transient disconnect it reconnects (to any
endpoint) and resumes from the last delivered revision + 1, so nothing is lost or repeated; if
no endpoint comes back within ``watch_retry_timeout`` it raises StoreUnavailableError.

Compaction: etcd refuses a watch starting *below* its compaction point, the contract also refuses
one starting *at* it (etcd may already have dropped that revision's delete tombstones). So a watch
from ``S`` asks etcd for ``S - 1`` and drops that revision's events: etcd then reports compaction
exactly when the contract requires it, with the compact revision the error must carry. (For
``S == 1`` there is no ``S - 1``; only a compaction at exactly revision 1 goes unreported.)
etcd's range error does not carry the compact revision; the store learns it by opening a watch
from revision 1, which etcd answers with the compact revision at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from lucid_cp.clock import Clock, SystemClock
from lucid_cp.store._contract import check_put, check_txn, granted_ttl, prefix_end
from lucid_cp.store._etcd_retry import Failure, OutcomeUnknown, classify, own_write_revision
from lucid_cp.store.base import (
    CompactedError,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    EventType,
    FutureRevisionError,
    Get,
    KeyValue,
    Lease,
    LeaseNotFoundError,
    Put,
    RangeResult,
    RequestTooLargeError,
    StoreUnavailableError,
    TooManyOpsError,
    TxnOp,
    TxnResult,
    WatchBatch,
    WatchEvent,
)

R = TypeVar("R")

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.enable_http_proxy", 0),  # talk to the endpoint itself, never through a proxy
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # Ping only while calls (watches) are open: etcd's server rejects idle pings by default.
    ("grpc.keepalive_permit_without_calls", 0),
]

# Stream failures after which a watch reconnects and resumes.
_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}

_COMPARE_OPS = {
    CompareOp.EQUAL: rpc.Compare.EQUAL,
    CompareOp.NOT_EQUAL: rpc.Compare.NOT_EQUAL,
    CompareOp.GREATER: rpc.Compare.GREATER,
    CompareOp.LESS: rpc.Compare.LESS,
}
_COMPARE_TARGETS = {
    CompareTarget.VERSION: (rpc.Compare.VERSION, "version"),
    CompareTarget.CREATE: (rpc.Compare.CREATE, "create_revision"),
    CompareTarget.MOD: (rpc.Compare.MOD, "mod_revision"),
    CompareTarget.VALUE: (rpc.Compare.VALUE, "value"),
    CompareTarget.LEASE: (rpc.Compare.LEASE, "lease"),
}
_PROBE_KEY = b"\x00lucid/probe"
_BACKOFF_FIRST = 0.025
_BACKOFF_MAX = 0.5
_READBACK_RESERVE = 0.5  # seconds (at most a quarter of request_timeout)
# Failures after which the next attempt goes to the next endpoint.
_MOVE_ON = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def _key_range(prefix: bytes) -> tuple[bytes, bytes]:
    """etcd's [key, range_end) for a prefix; b"\\0" as range_end means "to the end"."""
    end = prefix_end(prefix)
    return (prefix or b"\x00"), (end if end is not None else b"\x00")


def _kv(kv: Any) -> KeyValue:
    return KeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def _event(ev: Any) -> WatchEvent:
    prev = _kv(ev.prev_kv) if ev.HasField("prev_kv") else None
    if ev.type == rpc.Event.DELETE:
        return WatchEvent(
            EventType.DELETE, KeyValue(ev.kv.key, b"", 0, ev.kv.mod_revision, 0, 0), prev
        )
    return WatchEvent(EventType.PUT, _kv(ev.kv), prev)


def _batches(events: Iterable[Any], from_revision: int) -> list[WatchBatch]:
    batches: list[WatchBatch] = []
    for ev in events:
        revision = ev.kv.mod_revision
        if revision < from_revision:
            continue
        if batches and batches[-1].revision == revision:
            batches[-1].events.append(_event(ev))
        else:
            batches.append(WatchBatch(revision, [_event(ev)]))
    return batches


def _request_op(op: TxnOp) -> Any:
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(key=op.key, value=op.value, lease=op.lease))
    if isinstance(op, Delete):
        if op.prefix:
            key, end = _key_range(op.key)
            request = rpc.DeleteRangeRequest(key=key, range_end=end)
        else:
            request = rpc.DeleteRangeRequest(key=op.key)
        return rpc.RequestOp(request_delete_range=request)
    assert isinstance(op, Get)
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key))


def _txn_request(
    compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp]
) -> Any:
    """The etcd TxnRequest, built in place (a third of the cost of nested constructors: a
    joined txn carries hundreds of ops)."""
    request = rpc.TxnRequest()
    add_compare = request.compare.add
    for c in compares:
        target, field_name = _COMPARE_TARGETS[c.target]
        compare = add_compare(key=c.key, result=_COMPARE_OPS[c.op], target=target)
        setattr(compare, field_name, c.value)
    for ops, branch in ((success, request.success), (failure, request.failure)):
        for op in ops:
            if type(op) is Put:
                put = branch.add().request_put
                put.key = op.key
                put.value = op.value
                if op.lease:
                    put.lease = op.lease
            elif type(op) is Get:
                branch.add().request_range.key = op.key
            else:
                branch.append(_request_op(op))
    return request


def _response(resp: Any) -> KeyValue | int | None:
    kind = resp.WhichOneof("response")
    if kind == "response_range":
        kvs = resp.response_range.kvs
        return _kv(kvs[0]) if kvs else None
    if kind == "response_delete_range":
        return int(resp.response_delete_range.deleted)
    return None


@dataclass(frozen=True, slots=True)
class _Applied:
    """A write's earlier attempt turned out to have applied, at ``revision``."""

    revision: int


@dataclass(eq=False)
class _Connection:
    index: int
    target: str
    channel: grpc.aio.Channel
    kv: Any
    lease: Any
    watch: Any

    @classmethod
    def open(cls, index: int, target: str) -> _Connection:
        channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        return cls(
            index,
            target,
            channel,
            rpc.KVStub(channel),
            rpc.LeaseStub(channel),
            rpc.WatchStub(channel),
        )

    async def wait_ready(self, timeout: float, clock: Clock) -> bool:
        try:
            async with clock.timeout(timeout):
                await self.channel.channel_ready()
        except (TimeoutError, grpc.aio.UsageError):
            return False
        return True


class EtcdStore:
    """The store contract on etcd (see the module docstring).

    etcd keeps lease time itself; ``clock`` times this client's own waits: the connect timeout,
    each operation's ``request_timeout`` deadline and the backoff between its attempts, the
    watch's reconnect backoff and its give-up deadline. Each attempt's gRPC deadline
    (``attempt_timeout``, at most what is left of ``request_timeout``) travels to etcd and
    stays in real time. ``faults`` counts failed attempts and how unknown outcomes resolved.
    Channels are created lazily, on the event loop of first use.
    """

    shared = True  # see Store.shared

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        *,
        clock: Clock | None = None,
        connect_timeout: float = 2.0,
        request_timeout: float = 5.0,
        attempt_timeout: float = 2.0,
        watch_retry_timeout: float = 30.0,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self._targets = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in endpoints]
        self._clock: Clock = clock or SystemClock()
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._attempt_timeout = min(attempt_timeout, request_timeout)
        # Kept back from a write's last attempt to read its outcome back (see _call).
        self._readback_reserve = min(_READBACK_RESERVE, request_timeout / 4)
        self._seen_revision = 0  # the highest revision any answer carried (a floor for _write)
        # Counts of failed attempts: resent, unknown outcomes, and how those were resolved.
        self.faults: collections.Counter[str] = collections.Counter()
        self._watch_retry_timeout = watch_retry_timeout
        self._current = 0
        self._conn: _Connection | None = None
        self._connect_lock = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()
        self._watch_calls: set[Any] = set()
        self._closed = False

    @property
    def active_watches(self) -> int:
        """How many watch streams are currently open."""
        return len(self._watch_calls)

    @property
    def endpoint(self) -> str:
        """The ``host:port`` currently used (or tried first)."""
        return self._targets[self._current]

    # -- connections -----------------------------------------------------------------------

    async def _connection(self, deadline: float | None = None) -> _Connection:
        """A READY connection, trying each endpoint in turn for at most ``connect_timeout``;
        with ``deadline`` (an operation's), the whole search, waiting for another caller's
        search included, also ends by then."""
        if self._closed:
            raise StoreUnavailableError("store is closed")
        conn = self._conn
        if conn is not None:
            state = conn.channel.get_state(try_to_connect=True)
            if state is grpc.ChannelConnectivity.READY:
                return conn
        if deadline is None:
            await self._connect_lock.acquire()
        else:
            try:
                async with self._clock.timeout(deadline - self._clock.monotonic()):
                    await self._connect_lock.acquire()
            except TimeoutError:
                raise StoreUnavailableError(
                    f"no etcd endpoint answered within {self._request_timeout}s: "
                    + ", ".join(self._targets)
                ) from None
        try:
            return await self._find_endpoint(deadline)
        finally:
            self._connect_lock.release()

    async def _find_endpoint(self, deadline: float | None) -> _Connection:
        n = len(self._targets)
        for i in range(n):
            if self._closed:
                raise StoreUnavailableError("store is closed")
            wait = self._connect_timeout
            if deadline is not None:
                wait = min(wait, deadline - self._clock.monotonic())
                if wait <= 0:
                    break
            index = (self._current + i) % n
            current = self._conn
            if current is not None and current.index == index:
                candidate = current
            else:
                candidate = _Connection.open(index, self._targets[index])
            try:
                ready = await candidate.wait_ready(wait, self._clock)
            except BaseException:
                if candidate is not current:
                    self._retire(candidate)
                raise
            if ready:
                if candidate is not current:
                    self._conn, self._current = candidate, index
                    if current is not None:
                        self._retire(current)
                return candidate
            if candidate is not current:
                await candidate.channel.close()
        within = self._connect_timeout if deadline is None else self._request_timeout
        raise StoreUnavailableError(
            f"no etcd endpoint answered within {within}s: " + ", ".join(self._targets)
        )

    def _retire(self, conn: _Connection) -> None:
        """Close a channel we moved away from, letting its in-flight unary calls finish."""
        task = asyncio.get_running_loop().create_task(
            conn.channel.close(grace=self._request_timeout)
        )
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    def _skip_endpoint(self, conn: _Connection) -> None:
        """After UNAVAILABLE from ``conn``, make the next attempt start at the next endpoint."""
        if self._conn is conn:
            self._conn = None
            self._current = (conn.index + 1) % len(self._targets)
            self._retire(conn)

    def _deadline(self) -> float:
        return self._clock.monotonic() + self._request_timeout

    async def _call(
        self,
        invoke: Callable[[_Connection, float], Awaitable[R]],
        *,
        idempotent: bool,
        deadline: float | None = None,
        lease_ids: Sequence[int] = (),
    ) -> R:
        """Run one RPC (``invoke(connection, attempt timeout)``) until it answers or the deadline
        is spent. A failure that says the request was not applied is always resent; one whose
        outcome is unknown is resent only if ``idempotent``, else it raises OutcomeUnknown for
        the caller to resolve. Anything else is etcd's answer, translated."""
        if deadline is None:
            deadline = self._deadline()
        # A write whose outcome may be unknown keeps back time to find it out (a read-back).
        reserve = 0.0 if idempotent else self._readback_reserve
        backoff = _BACKOFF_FIRST
        while True:
            conn = await self._connection(deadline)
            remaining = deadline - self._clock.monotonic() - reserve
            if remaining <= 0:
                raise StoreUnavailableError(
                    f"etcd {conn.target}: no answer within {self._request_timeout}s"
                )
            try:
                result = await invoke(conn, min(self._attempt_timeout, remaining))
            except grpc.aio.AioRpcError as e:
                failure = classify(e)
                if failure is Failure.FINAL:
                    raise await self._translate(e, conn, lease_ids) from e
                if e.code() in _MOVE_ON:
                    self._skip_endpoint(conn)
                if failure is Failure.UNKNOWN and not idempotent:
                    self.faults["unknown"] += 1
                    raise OutcomeUnknown(e) from e
                self.faults["resent"] += 1
                left = deadline - self._clock.monotonic() - reserve
                if left <= 0 or self._closed:
                    raise StoreUnavailableError(
                        f"etcd {conn.target}: no answer within {self._request_timeout}s, "
                        f"last {e.code().name}: {e.details()}"
                    ) from e
                await self._clock.sleep(min(backoff, left))
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            revision = getattr(getattr(result, "header", None), "revision", 0)
            self._seen_revision = max(self._seen_revision, int(revision or 0))
            return result

    async def _write(
        self,
        invoke: Callable[[_Connection, float], Awaitable[R]],
        puts: Sequence[Put],
        *,
        succeeded: Callable[[R], bool] = lambda _: True,
        lease_ids: Sequence[int] = (),
    ) -> R | _Applied:
        """A write of ``puts`` (a put, or a txn whose success branch is only puts and whose
        failure branch only reads) that resolves unknown outcomes instead of guessing.

        Before the first attempt the store knows a revision ``floor`` it has already seen. When
        an attempt's outcome is unknown, the keys are read back (one linearizable read): if
        they hold exactly this write's values and leases at one mod_revision above ``floor``,
        an earlier attempt applied and ``_Applied(that revision)`` is the answer; otherwise the
        write is resent. A resent guarded txn that then fails its compares is checked the same
        way, because a late-applying earlier attempt is what may have failed it."""
        deadline = self._deadline()
        if not self._seen_revision:
            await self._revision(deadline)
        floor = self._seen_revision
        maybe_applied = False
        backoff = _BACKOFF_FIRST
        while True:
            try:
                result = await self._call(
                    invoke, idempotent=False, deadline=deadline, lease_ids=lease_ids
                )
            except OutcomeUnknown as unknown:
                maybe_applied = True
                revision = await self._own_write(puts, floor, deadline, unknown)
                if revision:
                    return _Applied(revision)
                await self._clock.sleep(min(backoff, max(deadline - self._clock.monotonic(), 0)))
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            if maybe_applied and not succeeded(result):
                revision = await self._own_write(puts, floor, deadline, None)
                if revision:
                    return _Applied(revision)
            return result

    async def _own_write(
        self, puts: Sequence[Put], floor: int, deadline: float, unknown: OutcomeUnknown | None
    ) -> int:
        """The revision at which ``puts`` applied (see own_write_revision), or 0 if they have
        not; StoreUnavailableError if that cannot be found out before the deadline."""
        request = rpc.TxnRequest(success=[_request_op(Get(p.key)) for p in puts])
        try:
            resp = await self._call(
                lambda c, t: c.kv.Txn(request, timeout=t), idempotent=True, deadline=deadline
            )
        except StoreUnavailableError as e:
            cause = f" after {unknown}" if unknown is not None else ""
            raise StoreUnavailableError(
                f"write outcome unknown{cause}: could not read it back ({e})"
            ) from (unknown.error if unknown is not None else e)
        kvs = [_response(r) for r in resp.responses]
        revision = own_write_revision(
            puts, [kv if isinstance(kv, KeyValue) else None for kv in kvs], floor
        )
        self.faults["resolved_applied" if revision else "resolved_not_applied"] += 1
        left = deadline - self._clock.monotonic()
        if not revision and left <= self._readback_reserve and unknown is not None:
            raise StoreUnavailableError(
                f"write not applied within {self._request_timeout}s (last: {unknown})"
            ) from unknown.error
        return revision

    async def _translate(
        self, e: grpc.aio.AioRpcError, conn: _Connection, lease_ids: Sequence[int]
    ) -> Exception:
        code, details = e.code(), e.details() or ""
        if code is grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
            return CompactedError(await self._compact_revision())
        if code is grpc.StatusCode.OUT_OF_RANGE and "future revision" in details:
            return FutureRevisionError(details)
        if code is grpc.StatusCode.NOT_FOUND and "lease not found" in details:
            return LeaseNotFoundError(await self._missing_lease(lease_ids))
        if code is grpc.StatusCode.INVALID_ARGUMENT and "too many operations" in details:
            return TooManyOpsError(details)
        if code is grpc.StatusCode.INVALID_ARGUMENT and "request is too large" in details:
            return RequestTooLargeError(details)
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
            return RequestTooLargeError(details)  # beyond etcd's gRPC message limit
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            return ValueError(details)
        if code is grpc.StatusCode.OUT_OF_RANGE and "too large lease TTL" in details:
            return ValueError(details)
        return StoreUnavailableError(f"etcd {conn.target}: {code.name}: {details}")

    async def _compact_revision(self) -> int:
        """etcd's current compact revision, learnt from a watch that starts at revision 1."""
        conn = await self._connection()
        call = conn.watch.Watch(timeout=self._request_timeout)
        try:
            await call.write(
                rpc.WatchRequest(
                    create_request=rpc.WatchCreateRequest(key=_PROBE_KEY, start_revision=1)
                )
            )
            while (resp := await call.read()) is not grpc.aio.EOF:
                if resp.compact_revision:
                    return int(resp.compact_revision)
                if resp.canceled:
                    break
        except grpc.aio.AioRpcError as e:
            raise StoreUnavailableError(
                f"etcd {conn.target}: {e.code().name}: {e.details()}"
            ) from e
        finally:
            call.cancel()
        raise StoreUnavailableError("etcd reported a compaction but not its revision")

    async def _missing_lease(self, lease_ids: Sequence[int]) -> int:
        """Which of ``lease_ids`` etcd does not know (the error does not say)."""
        for lease_id in dict.fromkeys(lease_ids):
            resp = await self._call(functools.partial(self._lease_ttl, lease_id), idempotent=True)
            if resp.TTL == -1:
                return lease_id
        return lease_ids[0] if lease_ids else 0

    async def _lease_ttl(self, lease_id: int, conn: _Connection, timeout: float) -> Any:
        request = rpc.LeaseTimeToLiveRequest(ID=lease_id)
        return await conn.lease.LeaseTimeToLive(request, timeout=timeout)

    # -- the contract ----------------------------------------------------------------------

    async def current_revision(self) -> int:
        return await self._revision(None)

    async def _revision(self, deadline: float | None) -> int:
        request = rpc.RangeRequest(key=_PROBE_KEY, count_only=True)
        resp = await self._call(
            lambda c, t: c.kv.Range(request, timeout=t), idempotent=True, deadline=deadline
        )
        return int(resp.header.revision)

    async def get(self, key: bytes) -> KeyValue | None:
        request = rpc.RangeRequest(key=key)
        resp = await self._call(lambda c, t: c.kv.Range(request, timeout=t), idempotent=True)
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def range(
        self, prefix: bytes, *, limit: int = 0, revision: int = 0, start: bytes = b""
    ) -> RangeResult:
        if limit < 0 or revision < 0:
            raise ValueError("limit and revision must not be negative")
        key, end = _key_range(prefix)
        key = max(key, start)
        request = rpc.RangeRequest(key=key, range_end=end, limit=limit, revision=revision)
        resp = await self._call(lambda c, t: c.kv.Range(request, timeout=t), idempotent=True)
        return RangeResult(
            [_kv(kv) for kv in resp.kvs],
            revision or int(resp.header.revision),
            more=bool(resp.more),
            count=int(resp.count),
        )

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        check_put(key, value)
        request = rpc.PutRequest(key=key, value=value, lease=lease)
        resp = await self._write(
            lambda c, t: c.kv.Put(request, timeout=t), [Put(key, value, lease)], lease_ids=(lease,)
        )
        if isinstance(resp, _Applied):
            return resp.revision
        return int(resp.header.revision)

    async def delete(self, key: bytes, *, prefix: bool = False) -> tuple[int, int]:
        if prefix:
            start, end = _key_range(key)
            request = rpc.DeleteRangeRequest(key=start, range_end=end)
            resp = await self._unresolved(lambda c, t: c.kv.DeleteRange(request, timeout=t))
        else:
            # Resent after an unknown outcome (deleting an absent key is a no-op); the answer
            # is then the resend's: (0, revision) if the earlier attempt had deleted the key.
            request = rpc.DeleteRangeRequest(key=key)
            resp = await self._resent(lambda c, t: c.kv.DeleteRange(request, timeout=t))
        return int(resp.deleted), int(resp.header.revision)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        check_txn(compares, success, failure)
        request = _txn_request(compares, success, failure)
        leases = [op.lease for op in (*success, *failure) if isinstance(op, Put) and op.lease]

        def send(c: _Connection, t: float) -> Awaitable[Any]:
            return c.kv.Txn(request, timeout=t)

        ops = (*success, *failure)
        puts = [op for op in success if isinstance(op, Put)]
        if all(isinstance(op, Get) for op in ops):
            resp = await self._call(send, idempotent=True)
        elif puts and len(puts) == len(success) and all(isinstance(op, Get) for op in failure):
            written = await self._write(
                send, puts, succeeded=lambda r: bool(r.succeeded), lease_ids=leases
            )
            if isinstance(written, _Applied):
                return TxnResult(True, written.revision, [None] * len(puts))
            resp = written
        else:
            resp = await self._unresolved(send, lease_ids=leases)
        return TxnResult(
            bool(resp.succeeded),
            int(resp.header.revision),
            [_response(r) for r in resp.responses],
        )

    async def grant_lease(self, ttl: int) -> Lease:
        granted_ttl(ttl)  # refuses what etcd refuses; etcd itself raises a short ttl
        # Resent like etcd's clientv3 does: a grant applied twice leaves one unused lease
        # behind, which has no keys and expires after its ttl.
        request = rpc.LeaseGrantRequest(TTL=ttl)
        resp = await self._call(
            lambda c, t: c.lease.LeaseGrant(request, timeout=t), idempotent=True
        )
        if resp.error:
            raise StoreUnavailableError(f"etcd refused the lease: {resp.error}")
        return Lease(int(resp.ID), int(resp.TTL))

    async def keepalive(self, lease_id: int) -> int:
        async def refresh(conn: _Connection, timeout: float) -> Any:
            call = conn.lease.LeaseKeepAlive(timeout=timeout)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                return await call.read()
            finally:
                call.cancel()

        resp = await self._call(refresh, idempotent=True, lease_ids=(lease_id,))
        if resp is grpc.aio.EOF:
            raise StoreUnavailableError("etcd closed the keepalive stream without answering")
        if resp.TTL <= 0:
            raise LeaseNotFoundError(lease_id)
        return int(resp.TTL)

    async def revoke_lease(self, lease_id: int) -> int:
        request = rpc.LeaseRevokeRequest(ID=lease_id)
        deadline = self._deadline()
        unknown: list[OutcomeUnknown] = []
        try:
            resp = await self._resent(
                lambda c, t: c.lease.LeaseRevoke(request, timeout=t),
                lease_ids=(lease_id,),
                deadline=deadline,
                unknown=unknown,
            )
        except LeaseNotFoundError:
            if not unknown:
                raise
            # An earlier attempt whose outcome was unknown revoked it.
            self.faults["resolved_applied"] += 1
            return await self._revision(deadline)
        return int(resp.header.revision)

    async def _resent(
        self,
        invoke: Callable[[_Connection, float], Awaitable[R]],
        *,
        lease_ids: Sequence[int] = (),
        deadline: float | None = None,
        unknown: list[OutcomeUnknown] | None = None,
    ) -> R:
        """A write that is safe to send again whatever became of an earlier attempt (a delete,
        a revoke): resent after an unknown outcome too, within the deadline. Each unknown
        outcome met is appended to ``unknown``, so the caller can tell that an earlier attempt
        may have applied."""
        if deadline is None:
            deadline = self._deadline()
        met = unknown if unknown is not None else []
        backoff = _BACKOFF_FIRST
        while True:
            try:
                result = await self._call(
                    invoke, idempotent=False, deadline=deadline, lease_ids=lease_ids
                )
            except OutcomeUnknown as e:
                met.append(e)
                self.faults["resent"] += 1
                left = deadline - self._clock.monotonic() - self._readback_reserve
                if left <= 0 or self._closed:
                    raise StoreUnavailableError(
                        f"etcd {self.endpoint}: outcome unknown: {e}"
                    ) from e.error
                await self._clock.sleep(min(backoff, left))
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            return result

    async def compact(self, revision: int) -> None:
        request = rpc.CompactionRequest(revision=revision)
        await self._unresolved(lambda c, t: c.kv.Compact(request, timeout=t))

    async def _unresolved(
        self, invoke: Callable[[_Connection, float], Awaitable[R]], *, lease_ids: Sequence[int] = ()
    ) -> R:
        """A write the store neither checks afterwards nor resends blindly (compaction, txns
        that delete or write in their failure branch): resent only when it was not applied; an
        unknown outcome is StoreUnavailableError (it may or may not have applied)."""
        try:
            return await self._call(invoke, idempotent=False, lease_ids=lease_ids)
        except OutcomeUnknown as unknown:
            raise StoreUnavailableError(
                f"etcd {self.endpoint}: outcome unknown: {unknown}"
            ) from unknown.error

    def watch(
        self, prefix: bytes, start_revision: int, *, prev_kv: bool = False
    ) -> AsyncIterator[WatchBatch]:
        return self._watch(prefix, start_revision, prev_kv)

    async def _watch(
        self, prefix: bytes, start_revision: int, prev_kv: bool
    ) -> AsyncIterator[WatchBatch]:
        if start_revision < 1:
            raise ValueError("start_revision must be >= 1")
        key, end = _key_range(prefix)
        next_revision = start_revision
        give_up_at: float | None = None
        backoff = 0.05
        while True:
            failure: Exception
            try:
                conn = await self._connection()
            except StoreUnavailableError as e:
                if self._closed:
                    raise
                failure = e
            else:
                call = conn.watch.Watch()
                self._watch_calls.add(call)
                try:
                    # One revision early, see the module docstring; _batches drops it again.
                    create = rpc.WatchCreateRequest(
                        key=key,
                        range_end=end,
                        start_revision=max(next_revision - 1, 1),
                        prev_kv=prev_kv,
                    )
                    await call.write(rpc.WatchRequest(create_request=create))
                    while (resp := await call.read()) is not grpc.aio.EOF:
                        if resp.compact_revision:
                            raise CompactedError(int(resp.compact_revision))
                        if resp.canceled:
                            raise StoreUnavailableError(
                                f"etcd cancelled the watch: {resp.cancel_reason}"
                            )
                        give_up_at, backoff = None, 0.05
                        for batch in _batches(resp.events, next_revision):
                            yield batch
                            next_revision = batch.revision + 1
                    failure = StoreUnavailableError(f"etcd {conn.target} ended the watch stream")
                except asyncio.CancelledError:
                    # Either our consumer is being cancelled (propagate), or the call itself was
                    # cancelled under us: by close(), or by retiring its channel (reconnect).
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
                    if self._closed:
                        raise StoreUnavailableError("store closed while watching") from None
                    failure = StoreUnavailableError(f"etcd {conn.target}: watch stream cancelled")
                except grpc.aio.AioRpcError as e:
                    if self._closed:
                        raise StoreUnavailableError("store closed while watching") from e
                    if e.code() not in _TRANSIENT:
                        raise StoreUnavailableError(
                            f"etcd {conn.target}: {e.code().name}: {e.details()}"
                        ) from e
                    failure = StoreUnavailableError(
                        f"etcd {conn.target}: {e.code().name}: {e.details()}"
                    )
                finally:
                    self._watch_calls.discard(call)
                    call.cancel()
            # Disconnected: resume from next_revision once an endpoint answers again.
            if self._closed:
                raise StoreUnavailableError("store closed while watching")
            now = self._clock.monotonic()
            if give_up_at is None:
                give_up_at = now + self._watch_retry_timeout
            elif now >= give_up_at:
                raise StoreUnavailableError(
                    f"watch could not reconnect within {self._watch_retry_timeout}s"
                ) from failure
            await self._clock.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for call in list(self._watch_calls):
            call.cancel()
        async with self._connect_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            await conn.channel.close()
        for task in list(self._retired):
            with contextlib.suppress(Exception):
                await task
