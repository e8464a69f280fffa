"""The etcd backend under faults: writes in flight during a leader change, lost replies.

Real etcd only: a 3-member cluster on loopback whose leader is killed or moved mid-batch, and a single
etcd whose replies are lost on the way back (a client interceptor lets etcd apply the request,
then fails the call as a dropped connection would), so the store cannot know the outcome.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aetcd import rpc
from etcd_server import EtcdCluster, EtcdProcess, free_port

from lucid_cp.store import Get, Put, StoreUnavailableError, key_missing, mod_revision_is
from lucid_cp.store import etcd as etcd_module
from lucid_cp.store.etcd import EtcdStore

pytestmark = pytest.mark.etcd

REQUEST_TIMEOUT = 5.0
_DIRECT = [("grpc.enable_http_proxy", 0)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path / "cluster") as running:
        yield running


@dataclass
class Done:
    kind: str  # "put", "create" or "cas"
    key: bytes
    value: bytes
    revision: int
    seconds: float


@pytest.mark.parametrize("fault", ["kill-leader", "move-leader"])
async def test_writes_in_flight_during_a_leader_change_apply_exactly_once(
    cluster: EtcdCluster, fault: str
) -> None:
    """kill-leader: the store's endpoint dies mid-call (unknown outcomes, a new election);
    move-leader: a raft leader transfer (proposals dropped, forwarded ones never answered)."""
    leader = await cluster.leader()
    endpoints = cluster.endpoints
    first = cluster.members.index(leader)  # the store talks to the leader: in flight when it dies
    store = EtcdStore(
        endpoints[first:] + endpoints[:first],
        connect_timeout=0.5,
        request_timeout=REQUEST_TIMEOUT,
    )
    writers = 6
    done: list[Done] = []
    failures: list[BaseException] = []
    killed, flowing = asyncio.Event(), asyncio.Event()
    wanted = [3 * writers]  # flowing is set once this many writes are done
    after_kill = [0] * writers
    try:
        lease = await store.grant_lease(30)
        cas_revision = {w: await store.put(f"/lc/cas/{w}".encode(), b"0") for w in range(writers)}
        start = await store.current_revision()

        async def timed(kind: str, key: bytes, value: bytes, write: Awaitable[int]) -> None:
            began = time.monotonic()
            revision = await write
            done.append(Done(kind, key, value, revision, time.monotonic() - began))
            if len(done) >= wanted[0]:
                flowing.set()

        async def create(key: bytes, value: bytes) -> int:
            result = await store.txn([key_missing(key)], [Put(key, value, lease.id)], [Get(key)])
            assert result.succeeded, f"create-only {key!r} reported ALREADY_EXISTS"
            return result.revision

        async def cas(w: int, value: bytes) -> int:
            key = f"/lc/cas/{w}".encode()
            result = await store.txn([mod_revision_is(key, cas_revision[w])], [Put(key, value)])
            assert result.succeeded, f"CAS on {key!r} lost to its own earlier attempt"
            cas_revision[w] = result.revision
            return result.revision

        async def writer(w: int) -> None:
            try:
                k = 0
                while after_kill[w] < 3:
                    k += 1
                    v = f"{w}-{k}".encode()
                    await timed(
                        "put", f"/lc/p/{w}/{k}".encode(), v, store.put(b"/lc/p/%d/%d" % (w, k), v)
                    )
                    await timed(
                        "create", f"/lc/c/{w}/{k}".encode(), v, create(f"/lc/c/{w}/{k}".encode(), v)
                    )
                    await timed("cas", f"/lc/cas/{w}".encode(), v, cas(w, v))
                    if killed.is_set():
                        after_kill[w] += 1
            except BaseException as e:  # reported below, with the rest
                failures.append(e)
                flowing.set()

        async with asyncio.timeout(20):
            tasks = [asyncio.create_task(writer(w)) for w in range(writers)]
            await flowing.wait()  # writes are flowing before the fault
            if fault == "kill-leader":
                leader.kill()
            else:  # transfers until one has caught writes in flight (most do)
                for _ in range(10):
                    await cluster.move_leader()
                    if store.faults or failures:
                        break
                    flowing.clear()
                    wanted[0] = len(done) + 3 * writers
                    await flowing.wait()
            killed.set()
            await asyncio.gather(*tasks)
        assert not failures, failures
        assert store.faults, "no write was in flight at the leader change"

        # Every write answered well within the deadline...
        assert max(d.seconds for d in done) < REQUEST_TIMEOUT
        # ...and each applied exactly once: one revision per write, nothing else written.
        end = await store.current_revision()
        assert end - start == len(done)
        assert sorted(d.revision for d in done) == list(range(start + 1, end + 1))
        for d in done:
            kv = await store.get(d.key)
            assert kv is not None
            if d.kind == "cas":
                continue
            assert (kv.value, kv.mod_revision, kv.version) == (d.value, d.revision, 1), d
        for w in range(writers):
            kv = await store.get(f"/lc/cas/{w}".encode())
            mine = [d for d in done if d.kind == "cas" and d.key == f"/lc/cas/{w}".encode()]
            assert kv is not None and kv.version == 1 + len(mine)
            assert (kv.value, kv.mod_revision) == (mine[-1].value, mine[-1].revision)
    finally:
        await store.close()


# -- lost replies on a single etcd ------------------------------------------------------------


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class LoseReplies(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """For the next ``count`` writes (Put/Txn calls that put, DeleteRange, LeaseRevoke): fail
    the call with UNAVAILABLE as a connection lost mid-call would, so the store cannot know the
    outcome. The request reaches etcd all the same: at once, or, with ``late``, only just before
    the store's next write (an orphan that applies after the store has read the key back and
    decided to resend). With ``slow``, the reply is lost by never coming: the call fails with
    DEADLINE_EXCEEDED when its own timeout expires."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._open = grpc.aio.insecure_channel  # the real one, whatever the test patches later
        self.count = 0
        self.late = False
        self.slow = False
        self.held: list[Callable[[], Awaitable[Any]]] = []

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        writes = method.endswith(("/Put", "/DeleteRange", "/LeaseRevoke")) or (
            method.endswith("/Txn") and any(op.HasField("request_put") for op in request.success)
        )
        if not writes:
            return await continuation(details, request)
        while self.held:
            await self.held.pop(0)()

        async def send() -> Any:
            # On a channel of its own: the store drops the channel a failed call came on.
            target = self.endpoint
            async with self._open(target, options=_DIRECT) as channel:
                stub = rpc.LeaseStub(channel) if "Lease" in method else rpc.KVStub(channel)
                return await getattr(stub, method.rsplit("/", 1)[1])(request, timeout=5)

        if self.count == 0:
            return await continuation(details, request)
        self.count -= 1
        if self.late:
            self.held.append(send)
        else:
            await send()
        if self.slow:
            await asyncio.sleep(details.timeout)
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        raise rpc_error(grpc.StatusCode.UNAVAILABLE, "Stream removed (test: reply lost)")


def intercepted(monkeypatch: pytest.MonkeyPatch, interceptor: Any) -> None:
    """Every channel the etcd store opens from now on goes through ``interceptor``."""
    real_open = grpc.aio.insecure_channel

    def channel(target: str, options: Any = None) -> grpc.aio.Channel:
        return real_open(target, options=options, interceptors=[interceptor])

    monkeypatch.setattr(etcd_module.grpc.aio, "insecure_channel", channel)


@pytest.fixture
async def lossy(
    etcd_server: EtcdProcess, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[EtcdStore, LoseReplies]]:
    await etcd_server.reset()
    losing = LoseReplies(etcd_server.endpoint)
    intercepted(monkeypatch, losing)
    store = EtcdStore([("127.0.0.1", etcd_server.client_port)], connect_timeout=0.5)
    try:
        yield store, losing
    finally:
        await store.close()


async def test_a_write_whose_reply_was_lost_is_reported_as_applied_once(
    lossy: tuple[EtcdStore, LoseReplies],
) -> None:
    store, losing = lossy
    lease = await store.grant_lease(30)
    start = await store.current_revision()
    losing.count = 3
    put = await store.put(b"/lost/p", b"v", lease=lease.id)
    created = await store.txn([key_missing(b"/lost/c")], [Put(b"/lost/c", b"c")], [Get(b"/lost/c")])
    swapped = await store.txn([mod_revision_is(b"/lost/p", put)], [Put(b"/lost/p", b"w")])
    assert losing.count == 0 and store.faults["resolved_applied"] == 3, store.faults
    assert (created.succeeded, swapped.succeeded) == (True, True)
    assert [put, created.revision, swapped.revision] == [start + 1, start + 2, start + 3]
    assert await store.current_revision() == start + 3  # nothing was sent twice
    kv = await store.get(b"/lost/p")
    assert kv is not None and (kv.value, kv.version, kv.lease) == (b"w", 2, 0)


async def test_a_create_only_write_that_applies_late_is_not_reported_as_already_existing(
    lossy: tuple[EtcdStore, LoseReplies],
) -> None:
    """The first attempt reaches etcd only after the store has read the key back (absent) and
    resent: the resend then fails its compare because of the store's OWN first attempt, which
    the store must find out and report as the applied write."""
    store, losing = lossy
    start = await store.current_revision()
    losing.count, losing.late = 1, True
    result = await store.txn([key_missing(b"/late/c")], [Put(b"/late/c", b"c")], [Get(b"/late/c")])
    assert not losing.held and store.faults["resolved_not_applied"] == 1
    assert result.succeeded and result.revision == start + 1
    assert await store.current_revision() == start + 1
    assert store.faults["resolved_applied"] == 1


async def test_a_revoke_whose_reply_was_lost_is_resent_and_reported_as_applied(
    lossy: tuple[EtcdStore, LoseReplies],
) -> None:
    """The resend finds the lease gone: its own earlier attempt revoked it."""
    store, losing = lossy
    lease = await store.grant_lease(30)
    await store.put(b"/lost/leased", b"v", lease=lease.id)
    start = await store.current_revision()
    losing.count = 1
    assert await store.revoke_lease(lease.id) == start + 1  # the revision its keys went at
    assert losing.count == 0 and store.faults["resolved_applied"] == 1, store.faults
    assert await store.get(b"/lost/leased") is None
    assert await store.current_revision() == start + 1


async def test_a_delete_whose_reply_was_lost_is_resent_and_answers_what_the_resend_did(
    lossy: tuple[EtcdStore, LoseReplies],
) -> None:
    store, losing = lossy
    await store.put(b"/lost/d", b"v")
    start = await store.current_revision()
    losing.count = 1
    # The first attempt deleted the key; the resend deleted nothing, at that same revision.
    assert await store.delete(b"/lost/d") == (0, start + 1)
    assert losing.count == 0 and store.faults["resent"] == 1, store.faults
    assert await store.get(b"/lost/d") is None
    assert await store.current_revision() == start + 1


async def test_a_write_whose_last_attempt_times_out_still_reads_its_outcome_back(
    lossy: tuple[EtcdStore, LoseReplies], etcd_server: EtcdProcess
) -> None:
    """The reply never comes, so the attempt uses up its whole timeout, here the whole request
    deadline: the store must end it early enough to read the write back before the deadline."""
    _, losing = lossy
    store = EtcdStore(
        [("127.0.0.1", etcd_server.client_port)], request_timeout=2.0, attempt_timeout=2.0
    )
    try:
        start = await store.current_revision()
        losing.count, losing.slow = 1, True
        began = time.monotonic()
        assert await store.put(b"/slow/p", b"v") == start + 1
        assert time.monotonic() - began < 2.0 + 1.0  # the deadline, plus slack for a loaded CI
        assert losing.count == 0 and store.faults["resolved_applied"] == 1, store.faults
    finally:
        await store.close()


# -- deadlines -------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["get", "put"])
async def test_an_operation_on_unreachable_endpoints_fails_within_its_deadline(
    operation: str,
) -> None:
    """Three closed loopback ports and the default connect timeout (2 s each): the endpoint
    search must end with the request deadline, for a read and for a write's floor read."""
    store = EtcdStore([("127.0.0.1", free_port()) for _ in range(3)], request_timeout=1.0)
    try:
        began = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            if operation == "get":
                await store.get(b"k")
            else:
                await store.put(b"k", b"v")
        assert time.monotonic() - began < 1.0 + 1.0  # unfixed: 6 s
    finally:
        await store.close()
