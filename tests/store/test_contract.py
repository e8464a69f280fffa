"""The store contract (lucid_cp/store/base.py), proven on every backend: memory, sqlite, etcd.

etcd runs as a real server shared by the session, so its revision is global: every test here
reads ``base = await store.current_revision()`` first and reasons relative to it. Tests that
need absolute revisions, a fake clock or a reopen run on the local backends only; tests that kill
etcd use a private server. Waits are bounded (``asyncio.wait_for`` / polling with a deadline),
never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcd_server import EtcdProcess, free_port

from lucid_cp.clock import Clock, FakeClock, ScaledClock, SystemClock
from lucid_cp.store import (
    MAX_LEASE_TTL,
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    MIN_LEASE_TTL,
    OP_OVERHEAD_BYTES,
    CompactedError,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    EventType,
    FutureRevisionError,
    Get,
    KeyValue,
    LeaseNotFoundError,
    MemoryStore,
    Put,
    RequestTooLargeError,
    SqliteStore,
    Store,
    StoreUnavailableError,
    TooManyOpsError,
    WatchBatch,
    key_missing,
    mod_revision_is,
    open_store,
    parse_etcd_endpoints,
)
from lucid_cp.store.etcd import EtcdStore

TIMEOUT = 5.0

ALL_BACKENDS = ["memory", "sqlite", pytest.param("etcd", marks=pytest.mark.etcd)]
LOCAL_BACKENDS = ["memory", "sqlite"]


@dataclass
class Backend:
    name: str
    url: str
    reset: Callable[[], Awaitable[None]] | None = None


@pytest.fixture(params=ALL_BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "memory":
        return Backend("memory", "memory://")
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp_path / 'store.db'}")
    etcd = request.getfixturevalue("etcd_server")
    return Backend("etcd", etcd.url, etcd.reset)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    if backend.reset is not None:
        await backend.reset()
    s = open_store(backend.url)
    try:
        yield s
    finally:
        await s.close()


@dataclass
class Timed:
    """A store and the clock its lease time follows (etcd keeps real time itself; the local
    backends run ten times faster, so lease tests take fractions of a second there)."""

    store: Store
    clock: Clock


@pytest.fixture
async def timed(backend: Backend) -> AsyncIterator[Timed]:
    if backend.reset is not None:
        await backend.reset()
    clock: Clock = SystemClock() if backend.name == "etcd" else ScaledClock(10)
    s = open_store(backend.url, clock=clock)
    try:
        yield Timed(s, clock)
    finally:
        await s.close()


@pytest.fixture(params=LOCAL_BACKENDS)
async def local_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "store.db")
    try:
        yield s
    finally:
        await s.close()


# -- helpers ---------------------------------------------------------------------------------


async def next_batch(watch: AsyncIterator[WatchBatch], timeout: float = TIMEOUT) -> WatchBatch:
    return await asyncio.wait_for(anext(watch), timeout)


async def take(
    watch: AsyncIterator[WatchBatch], n: int, timeout: float = TIMEOUT
) -> list[WatchBatch]:
    return [await next_batch(watch, timeout) for _ in range(n)]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def keys_of(batch: WatchBatch) -> list[bytes]:
    return [e.kv.key for e in batch.events]


async def watches_open(store: Store, n: int) -> None:
    """Waits until ``n`` watches are open on ``store`` (registered with the backend)."""
    assert isinstance(store, (SqliteStore, EtcdStore))

    async def opened() -> bool:
        return store.active_watches == n

    await eventually(opened, TIMEOUT, f"{n} open watches")


# -- revisions and key metadata --------------------------------------------------------------


async def test_fresh_local_store_starts_at_revision_1(local_store: SqliteStore) -> None:
    assert await local_store.current_revision() == 1
    assert await local_store.put(b"/a", b"1") == 2
    assert (await local_store.range(b"/")).revision == 2


async def test_each_write_advances_revision_by_exactly_one(store: Store) -> None:
    assert isinstance(store, Store)
    base = await store.current_revision()
    assert await store.put(b"/r/a", b"1") == base + 1
    assert await store.put(b"/r/b", b"1") == base + 2
    assert await store.put(b"/r/a", b"2") == base + 3
    assert await store.delete(b"/r/a") == (1, base + 4)
    assert await store.delete(b"/r/a") == (0, base + 4)  # nothing deleted: no new revision
    await store.put(b"/r/c", b"1")
    assert await store.delete(b"/r/", prefix=True) == (2, base + 6)  # one write, one revision
    assert await store.delete(b"/r/", prefix=True) == (0, base + 6)
    read_only = await store.txn([], [Get(b"/r/a")])
    assert read_only.revision == base + 6
    failed = await store.txn(
        [Compare(b"/r/nope", CompareTarget.VERSION, CompareOp.GREATER, 0)],
        [Put(b"/r/nope", b"1")],
        [Delete(b"/r/missing")],
    )
    assert (failed.succeeded, failed.revision, failed.responses) == (False, base + 6, [0])
    assert await store.current_revision() == base + 6


async def test_create_and_mod_revision_and_version(store: Store) -> None:
    assert await store.get(b"/m/k") is None
    r1 = await store.put(b"/m/k", b"v1")
    assert await store.get(b"/m/k") == KeyValue(b"/m/k", b"v1", r1, r1, 1, 0)
    r2 = await store.put(b"/m/k", b"v2")
    assert await store.get(b"/m/k") == KeyValue(b"/m/k", b"v2", r1, r2, 2, 0)
    r3 = await store.put(b"/m/k", b"v3")
    assert await store.get(b"/m/k") == KeyValue(b"/m/k", b"v3", r1, r3, 3, 0)
    await store.delete(b"/m/k")
    assert await store.get(b"/m/k") is None
    r5 = await store.put(b"/m/k", b"again")  # recreated: starts over
    assert await store.get(b"/m/k") == KeyValue(b"/m/k", b"again", r5, r5, 1, 0)


async def test_empty_key_is_rejected(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.put(b"", b"v")
    with pytest.raises(ValueError):
        await store.txn([], [Put(b"", b"v")])


# -- range -----------------------------------------------------------------------------------


async def test_range_by_prefix_with_limit_more_and_count(store: Store) -> None:
    for key in (b"/p/c", b"/p/a", b"/q/x", b"/p/b", b"/p", b"/pz"):
        await store.put(key, b"v")
    current = await store.current_revision()

    everything = await store.range(b"/p/")
    assert [kv.key for kv in everything.kvs] == [b"/p/a", b"/p/b", b"/p/c"]
    assert (everything.count, everything.more, everything.revision) == (3, False, current)

    first_two = await store.range(b"/p/", limit=2)
    assert [kv.key for kv in first_two.kvs] == [b"/p/a", b"/p/b"]
    assert (first_two.count, first_two.more) == (3, True)

    exact = await store.range(b"/p/", limit=3)
    assert (len(exact.kvs), exact.count, exact.more) == (3, 3, False)
    assert (await store.range(b"/p/", limit=10)).more is False

    wider = await store.range(b"/p")
    assert [kv.key for kv in wider.kvs] == [b"/p", b"/p/a", b"/p/b", b"/p/c", b"/pz"]

    nothing = await store.range(b"/none/")
    assert (nothing.kvs, nothing.count, nothing.more) == ([], 0, False)


async def test_range_pages_from_a_start_key_at_a_pinned_revision(store: Store) -> None:
    for n in range(7):
        await store.put(f"/pg/{n}".encode(), b"old")
    await store.put(b"/pgz", b"outside the prefix")
    first = await store.range(b"/pg/", limit=3)
    await store.put(b"/pg/0b", b"written after the first page")
    await store.delete(b"/pg/5")
    seen = [kv.key for kv in first.kvs]
    page = first
    while page.more:
        page = await store.range(
            b"/pg/", limit=3, revision=first.revision, start=page.kvs[-1].key + b"\0"
        )
        assert page.revision == first.revision
        seen.extend(kv.key for kv in page.kvs)
    assert seen == [f"/pg/{n}".encode() for n in range(7)]  # one consistent snapshot
    tail = await store.range(b"/pg/", start=b"/pg/4")
    assert [kv.key for kv in tail.kvs] == [b"/pg/4", b"/pg/6"] and tail.count == 2


async def test_range_prefix_ending_in_0xff(store: Store) -> None:
    await store.put(b"/f\xff", b"1")
    await store.put(b"/f\xff\x00", b"2")
    await store.put(b"/g", b"3")
    result = await store.range(b"/f\xff")
    assert [kv.key for kv in result.kvs] == [b"/f\xff", b"/f\xff\x00"]


async def test_range_at_pinned_revision(store: Store) -> None:
    r_a1 = await store.put(b"/h/a", b"a1")
    r_b1 = await store.put(b"/h/b", b"b1")
    r_a2 = await store.put(b"/h/a", b"a2")
    r_del = (await store.delete(b"/h/b"))[1]
    r_c = await store.put(b"/h/c", b"c1")

    def view(result: object) -> list[tuple[bytes, bytes, int]]:
        return [(kv.key, kv.value, kv.mod_revision) for kv in result.kvs]  # type: ignore[attr-defined]

    at_b1 = await store.range(b"/h/", revision=r_b1)
    assert view(at_b1) == [(b"/h/a", b"a1", r_a1), (b"/h/b", b"b1", r_b1)]
    assert at_b1.revision == r_b1
    assert view(await store.range(b"/h/", revision=r_a2)) == [
        (b"/h/a", b"a2", r_a2),
        (b"/h/b", b"b1", r_b1),
    ]
    assert view(await store.range(b"/h/", revision=r_del)) == [(b"/h/a", b"a2", r_a2)]
    assert view(await store.range(b"/h/", revision=r_c)) == [
        (b"/h/a", b"a2", r_a2),
        (b"/h/c", b"c1", r_c),
    ]
    old = await store.range(b"/h/", revision=r_a1)
    assert old.kvs == [KeyValue(b"/h/a", b"a1", r_a1, r_a1, 1, 0)]
    limited = await store.range(b"/h/", revision=r_a2, limit=1)
    assert (view(limited), limited.count, limited.more) == ([(b"/h/a", b"a2", r_a2)], 2, True)


async def test_range_at_future_revision_fails(store: Store) -> None:
    current = await store.current_revision()
    with pytest.raises(FutureRevisionError):
        await store.range(b"/", revision=current + 1)


# -- txn -------------------------------------------------------------------------------------


async def test_txn_create_only(store: Store) -> None:
    base = await store.current_revision()
    created = await store.txn([key_missing(b"/t/k")], [Put(b"/t/k", b"first")])
    assert (created.succeeded, created.revision, created.responses) == (True, base + 1, [None])
    again = await store.txn([key_missing(b"/t/k")], [Put(b"/t/k", b"second")])
    assert (again.succeeded, again.revision, again.responses) == (False, base + 1, [])
    kv = await store.get(b"/t/k")
    assert kv is not None and kv.value == b"first"


async def test_txn_compare_and_swap_on_mod_revision(store: Store) -> None:
    r1 = await store.put(b"/t/cas", b"v1")
    swapped = await store.txn([mod_revision_is(b"/t/cas", r1)], [Put(b"/t/cas", b"v2")])
    assert swapped.succeeded and swapped.revision == r1 + 1
    stale = await store.txn(
        [mod_revision_is(b"/t/cas", r1)], [Put(b"/t/cas", b"v3")], [Get(b"/t/cas")]
    )
    assert not stale.succeeded and stale.revision == r1 + 1
    assert stale.responses == [KeyValue(b"/t/cas", b"v2", r1, r1 + 1, 2, 0)]


async def test_multi_key_txn_is_one_atomic_write(store: Store) -> None:
    await store.put(b"/t/m/old", b"x")
    base = await store.current_revision()
    watch = store.watch(b"/t/m/", base + 1)
    result = await store.txn(
        [key_missing(b"/t/m/a")],
        [Put(b"/t/m/a", b"1"), Put(b"/t/m/b", b"2"), Delete(b"/t/m/old")],
    )
    assert (result.succeeded, result.revision, result.responses) == (
        True,
        base + 1,
        [None, None, 1],
    )
    listing = await store.range(b"/t/m/")
    assert [(kv.key, kv.mod_revision) for kv in listing.kvs] == [
        (b"/t/m/a", base + 1),
        (b"/t/m/b", base + 1),
    ]
    batch = await next_batch(watch)
    assert batch.revision == base + 1
    assert sorted((e.kv.key, e.type.value) for e in batch.events) == [
        (b"/t/m/a", "put"),
        (b"/t/m/b", "put"),
        (b"/t/m/old", "delete"),
    ]
    await watch.aclose()


async def test_txn_get_responses(store: Store) -> None:
    r1 = await store.put(b"/t/g/x", b"x1")
    result = await store.txn(
        [],
        [
            Get(b"/t/g/x"),
            Get(b"/t/g/missing"),
            Put(b"/t/g/y", b"y1"),
            Get(b"/t/g/y"),
            Delete(b"/t/g/", prefix=False),
            Delete(b"/t/g/x"),
        ],
    )
    r2 = r1 + 1
    assert result.succeeded and result.revision == r2
    assert result.responses == [
        KeyValue(b"/t/g/x", b"x1", r1, r1, 1, 0),
        None,
        None,
        KeyValue(b"/t/g/y", b"y1", r2, r2, 1, 0),  # a Get sees the txn's own earlier writes
        0,
        1,
    ]


async def test_txn_compare_targets_and_operators(store: Store) -> None:
    r1 = await store.put(b"/t/c", b"bbb")
    r2 = await store.put(b"/t/c", b"bbb")  # version 2

    async def holds(*compares: Compare) -> bool:
        return bool((await store.txn(list(compares), [])).succeeded)

    def cmp(
        target: CompareTarget, op: CompareOp, value: int | bytes, key: bytes = b"/t/c"
    ) -> Compare:
        return Compare(key, target, op, value)

    assert await holds(cmp(CompareTarget.VERSION, CompareOp.EQUAL, 2))
    assert await holds(cmp(CompareTarget.VERSION, CompareOp.GREATER, 1))
    assert not await holds(cmp(CompareTarget.VERSION, CompareOp.LESS, 2))
    assert await holds(cmp(CompareTarget.CREATE, CompareOp.EQUAL, r1))
    assert await holds(cmp(CompareTarget.MOD, CompareOp.NOT_EQUAL, r1))
    assert await holds(cmp(CompareTarget.MOD, CompareOp.EQUAL, r2))
    assert await holds(cmp(CompareTarget.VALUE, CompareOp.EQUAL, b"bbb"))
    assert await holds(cmp(CompareTarget.VALUE, CompareOp.GREATER, b"aaa"))
    assert await holds(cmp(CompareTarget.VALUE, CompareOp.LESS, b"c"))
    assert await holds(cmp(CompareTarget.LEASE, CompareOp.EQUAL, 0))
    # all compares must hold
    assert not await holds(
        cmp(CompareTarget.VERSION, CompareOp.EQUAL, 2),
        cmp(CompareTarget.VALUE, CompareOp.EQUAL, b"x"),
    )
    # a missing key: version/create/mod/lease are 0; a value compare never holds (as in etcd)
    missing = b"/t/missing"
    assert await holds(cmp(CompareTarget.VERSION, CompareOp.EQUAL, 0, missing))
    assert await holds(cmp(CompareTarget.CREATE, CompareOp.EQUAL, 0, missing))
    assert await holds(cmp(CompareTarget.MOD, CompareOp.LESS, 1, missing))
    assert await holds(cmp(CompareTarget.LEASE, CompareOp.EQUAL, 0, missing))
    assert not await holds(cmp(CompareTarget.VALUE, CompareOp.EQUAL, b"", missing))
    assert not await holds(cmp(CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"", missing))


async def test_txn_with_unknown_lease_fails_whole_txn(store: Store) -> None:
    base = await store.current_revision()
    with pytest.raises(LeaseNotFoundError) as info:
        await store.txn([], [Put(b"/t/l/a", b"1"), Put(b"/t/l/b", b"2", lease=424242)])
    assert info.value.lease_id == 424242
    assert await store.get(b"/t/l/a") is None
    assert await store.current_revision() == base


async def test_txn_rejects_conflicting_ops_in_one_branch(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.txn([], [Put(b"/t/d", b"1"), Put(b"/t/d", b"2")])
    with pytest.raises(ValueError):
        await store.txn([], [], [Put(b"/t/d/x", b"1"), Delete(b"/t/d/", prefix=True)])
    # the same key in different branches is fine
    result = await store.txn([key_missing(b"/t/d")], [Put(b"/t/d", b"1")], [Put(b"/t/d", b"2")])
    assert result.succeeded


# -- delete ----------------------------------------------------------------------------------


async def test_delete_single_and_prefix(store: Store) -> None:
    for key in (b"/d/a", b"/d/b", b"/d/c/1", b"/e/a"):
        await store.put(key, b"v")
    base = await store.current_revision()
    assert await store.delete(b"/d/a") == (1, base + 1)
    assert await store.get(b"/d/a") is None
    assert await store.delete(b"/d/", prefix=True) == (2, base + 2)
    assert (await store.range(b"/d/")).count == 0
    assert await store.get(b"/e/a") is not None


# -- leases ----------------------------------------------------------------------------------


async def test_put_with_lease_and_revoke_deletes_at_once(store: Store) -> None:
    lease = await store.grant_lease(60)
    assert lease.ttl >= 60 and lease.id != 0
    r_put = await store.put(b"/l/a", b"1", lease=lease.id)
    await store.put(b"/l/b", b"2", lease=lease.id)
    await store.put(b"/l/free", b"3")
    kv = await store.get(b"/l/a")
    assert kv is not None and kv.lease == lease.id
    assert await store.keepalive(lease.id) >= 60
    watch = store.watch(b"/l/", r_put + 3)
    revoked_at = await store.revoke_lease(lease.id)
    batch = await next_batch(watch)
    assert batch.revision == revoked_at == r_put + 3  # one atomic write for the whole lease
    assert sorted(keys_of(batch)) == [b"/l/a", b"/l/b"]
    assert all(e.type is EventType.DELETE for e in batch.events)
    assert [kv.key for kv in (await store.range(b"/l/")).kvs] == [b"/l/free"]
    with pytest.raises(LeaseNotFoundError):
        await store.revoke_lease(lease.id)
    with pytest.raises(LeaseNotFoundError):
        await store.keepalive(lease.id)
    with pytest.raises(LeaseNotFoundError):
        await store.put(b"/l/a", b"again", lease=lease.id)
    await watch.aclose()


async def test_unknown_lease_is_reported(store: Store) -> None:
    with pytest.raises(LeaseNotFoundError) as info:
        await store.put(b"/l/x", b"1", lease=987654321)
    assert info.value.lease_id == 987654321
    with pytest.raises(LeaseNotFoundError):
        await store.keepalive(987654321)
    with pytest.raises(LeaseNotFoundError):
        await store.revoke_lease(987654321)
    assert await store.get(b"/l/x") is None


async def test_lease_expiry_deletes_keys_with_delete_events(timed: Timed) -> None:
    store, clock = timed.store, timed.clock
    lease = await store.grant_lease(MIN_LEASE_TTL)
    granted_at = clock.monotonic()
    await store.put(b"/x/a", b"1", lease=lease.id)
    last = await store.put(b"/x/b", b"2", lease=lease.id)
    watch = store.watch(b"/x/", last + 1)
    batch = await next_batch(watch, timeout=lease.ttl + TIMEOUT)
    assert clock.monotonic() - granted_at >= lease.ttl * 0.9
    assert batch.revision == last + 1
    assert sorted(keys_of(batch)) == [b"/x/a", b"/x/b"]
    for event in batch.events:
        assert event.type is EventType.DELETE
        assert event.kv == KeyValue(event.kv.key, b"", 0, last + 1, 0, 0)
    assert (await store.range(b"/x/")).count == 0
    with pytest.raises(LeaseNotFoundError):
        await store.keepalive(lease.id)
    with pytest.raises(LeaseNotFoundError):
        await store.put(b"/x/c", b"3", lease=lease.id)
    await watch.aclose()


async def test_keepalive_extends_lease_life(timed: Timed) -> None:
    store, clock = timed.store, timed.clock
    lease = await store.grant_lease(MIN_LEASE_TTL)
    await store.put(b"/k/a", b"1", lease=lease.id)
    granted_at = clock.monotonic()
    # Keep it alive past its ttl, refreshing at a fifth of it (the sleep only paces keepalives:
    # what proves the point is the key still being there after the ttl has passed).
    while clock.monotonic() - granted_at < 1.3 * lease.ttl:
        assert await store.keepalive(lease.id) == lease.ttl
        assert await store.get(b"/k/a") is not None
        await clock.sleep(lease.ttl / 5)
    assert await store.get(b"/k/a") is not None
    last_keepalive = clock.monotonic()

    async def gone() -> bool:
        return await store.get(b"/k/a") is None

    await eventually(gone, lease.ttl + TIMEOUT, "the lease to expire once keepalives stop")
    assert clock.monotonic() - last_keepalive >= lease.ttl * 0.5


async def test_a_short_lease_ttl_is_raised_to_the_minimum(store: Store) -> None:
    granted = [await store.grant_lease(ttl) for ttl in (-5, 0, 1, MIN_LEASE_TTL, MIN_LEASE_TTL + 1)]
    try:
        assert [lease.ttl for lease in granted] == [MIN_LEASE_TTL] * 4 + [MIN_LEASE_TTL + 1]
        assert await store.keepalive(granted[2].id) == MIN_LEASE_TTL  # the ttl granted
        with pytest.raises(ValueError):
            await store.grant_lease(MAX_LEASE_TTL + 1)
    finally:
        for lease in granted:
            await store.revoke_lease(lease.id)


async def test_a_lease_lives_its_granted_ttl_not_the_one_asked_for() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, reap_interval=3600)
    try:
        lease = await store.grant_lease(1)
        await store.put(b"/min/a", b"1", lease=lease.id)
        clock.advance(MIN_LEASE_TTL - 0.5)  # past the ttl asked for, within the one granted
        assert await store.reap_expired_leases() == 0
        assert await store.get(b"/min/a") is not None
        clock.advance(0.5)
        assert await store.reap_expired_leases() == 1
        assert await store.get(b"/min/a") is None
    finally:
        await store.close()


# -- etcd's limits ---------------------------------------------------------------------------


def puts(n: int, prefix: bytes = b"/ops/") -> list[Put]:
    return [Put(prefix + b"%04d" % i, b"v") for i in range(n)]


async def test_a_txn_holds_at_most_max_txn_ops_compares_and_ops_each(store: Store) -> None:
    base = await store.current_revision()
    keys = [p.key for p in puts(MAX_TXN_OPS)]
    full = await store.txn(
        [key_missing(k) for k in keys], puts(MAX_TXN_OPS), puts(MAX_TXN_OPS, b"/ops/f/")
    )
    assert full.succeeded and full.revision == base + 1
    assert (await store.range(b"/ops/")).count == MAX_TXN_OPS
    too_many = [
        ([key_missing(b"/ops/x")] * (MAX_TXN_OPS + 1), [], []),
        ([], puts(MAX_TXN_OPS + 1, b"/ops/s/"), []),
        ([], [], puts(MAX_TXN_OPS + 1, b"/ops/f/")),
        ([], [Get(b"/ops/0000")] * (MAX_TXN_OPS + 1), []),
    ]
    for compares, success, failure in too_many:
        with pytest.raises(TooManyOpsError):
            await store.txn(compares, success, failure)
    assert await store.current_revision() == base + 1  # nothing was written


async def test_a_request_is_at_most_max_request_bytes(store: Store) -> None:
    base = await store.current_revision()
    key = b"/big/a"
    room = MAX_REQUEST_BYTES - OP_OVERHEAD_BYTES - len(key)  # the largest value a put carries
    r = await store.put(key, b"x" * room)
    assert r == base + 1
    kv = await store.get(key)
    assert kv is not None and len(kv.value) == room
    with pytest.raises(RequestTooLargeError):
        await store.put(key, b"x" * (room + 1))
    with pytest.raises(RequestTooLargeError):
        await store.txn([], [Put(key, b"x" * (room + 1))])
    # A txn counts every op and compare: 128 puts and 128 compares filling the limit exactly.
    ops = puts(MAX_TXN_OPS, b"/big/t/")
    compares = [key_missing(p.key) for p in ops]
    fixed = sum(2 * len(p.key) + 2 * OP_OVERHEAD_BYTES for p in ops)
    share, extra = divmod(MAX_REQUEST_BYTES - fixed, len(ops))
    ops = [Put(p.key, b"y" * (share + (i < extra))) for i, p in enumerate(ops)]
    assert (await store.txn(compares, ops)).succeeded
    ops[0] = Put(ops[0].key, ops[0].value + b"y")
    with pytest.raises(RequestTooLargeError):
        await store.txn(compares, ops)
    assert await store.current_revision() == base + 2


@pytest.mark.etcd
async def test_etcd_own_limit_errors_map_to_the_same_classes(
    etcd_server: EtcdProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the client-side checks, etcd itself refuses, and the store maps its answers."""
    import lucid_cp.store.etcd as etcd_module

    monkeypatch.setattr(etcd_module, "check_put", lambda key, value: None)
    monkeypatch.setattr(etcd_module, "check_txn", lambda compares, success, failure: None)
    await etcd_server.reset()
    store = open_store(etcd_server.url)
    try:
        with pytest.raises(TooManyOpsError):
            await store.txn([], puts(MAX_TXN_OPS + 1))
        with pytest.raises(RequestTooLargeError):  # etcd's --max-request-bytes
            await store.put(b"/big/a", b"x" * MAX_REQUEST_BYTES)
        with pytest.raises(RequestTooLargeError):  # beyond etcd's gRPC message limit
            await store.put(b"/big/a", b"x" * 2 * MAX_REQUEST_BYTES)
    finally:
        await store.close()


# -- watch -----------------------------------------------------------------------------------


async def test_watch_replays_history_then_live_events_exactly_once(store: Store) -> None:
    base = await store.current_revision()
    await store.put(b"/w/a", b"1")
    await store.put(b"/elsewhere", b"x")
    await store.put(b"/w/b", b"1")
    await store.put(b"/w/a", b"2")
    await store.delete(b"/w/b")
    watch = store.watch(b"/w/", base + 1)
    history = await take(watch, 4)
    assert [b.revision for b in history] == [base + 1, base + 3, base + 4, base + 5]
    assert [(e.type, e.kv.key, e.kv.value) for b in history for e in b.events] == [
        (EventType.PUT, b"/w/a", b"1"),
        (EventType.PUT, b"/w/b", b"1"),
        (EventType.PUT, b"/w/a", b"2"),
        (EventType.DELETE, b"/w/b", b""),
    ]
    live_task = asyncio.ensure_future(next_batch(watch))
    await store.put(b"/elsewhere", b"y")
    r_live = await store.put(b"/w/c", b"live")
    live = await live_task
    assert (live.revision, keys_of(live)) == (r_live, [b"/w/c"])
    r_sentinel = await store.put(b"/w/z", b"sentinel")
    assert (await next_batch(watch)).revision == r_sentinel  # nothing repeated or extra between
    await watch.aclose()


async def test_watch_events_carry_metadata_and_prev_kv(store: Store) -> None:
    r1 = await store.put(b"/e/k", b"v1")
    r2 = await store.put(b"/e/k", b"v2")
    r3 = (await store.delete(b"/e/k"))[1]
    watch = store.watch(b"/e/", r1, prev_kv=True)
    created, updated, deleted = [b.events[0] for b in await take(watch, 3)]
    assert created.kv == KeyValue(b"/e/k", b"v1", r1, r1, 1, 0) and created.prev_kv is None
    assert updated.kv == KeyValue(b"/e/k", b"v2", r1, r2, 2, 0)
    assert updated.prev_kv == created.kv
    assert deleted.type is EventType.DELETE
    assert deleted.kv == KeyValue(b"/e/k", b"", 0, r3, 0, 0)
    assert deleted.prev_kv == updated.kv
    await watch.aclose()


async def test_watch_from_the_middle_of_history(store: Store) -> None:
    revisions = [await store.put(f"/wm/{i}".encode(), b"v") for i in range(5)]
    watch = store.watch(b"/wm/", revisions[2])
    assert [b.revision for b in await take(watch, 3)] == revisions[2:]
    await watch.aclose()


async def test_concurrent_writers_while_watching_lose_nothing(store: Store) -> None:
    base = await store.current_revision()
    early = store.watch(b"/cw/", base + 1)
    writers, per_writer = 4, 50
    total = writers * per_writer
    halfway = asyncio.Event()
    done_writes = 0

    async def writer(n: int) -> None:
        nonlocal done_writes
        for i in range(per_writer):
            await store.put(f"/cw/{n}/{i % 7}".encode(), f"{i}".encode())
            done_writes += 1
            if done_writes == total // 2:
                halfway.set()

    async def consume(watch: AsyncIterator[WatchBatch]) -> list[int]:
        seen: list[int] = []
        while len(seen) < total:
            batch = await next_batch(watch, timeout=3 * TIMEOUT)
            assert len(batch.events) == 1
            seen.append(batch.revision)
        return seen

    early_task = asyncio.ensure_future(consume(early))
    writer_tasks = [asyncio.ensure_future(writer(n)) for n in range(writers)]
    await asyncio.wait_for(halfway.wait(), 3 * TIMEOUT)
    # A watcher joining mid-stream, from the first revision: catch-up and live must meet exactly.
    late = store.watch(b"/cw/", base + 1)
    late_task = asyncio.ensure_future(consume(late))
    await asyncio.wait_for(asyncio.gather(*writer_tasks), 6 * TIMEOUT)
    expected = list(range(base + 1, base + total + 1))
    assert await asyncio.wait_for(early_task, 6 * TIMEOUT) == expected
    assert await asyncio.wait_for(late_task, 6 * TIMEOUT) == expected
    await early.aclose()
    await late.aclose()


async def test_watch_stops_cleanly_on_aclose_and_cancellation(store: Store) -> None:
    base = await store.current_revision()
    watch = store.watch(b"/wc/", base + 1)
    blocked = asyncio.ensure_future(anext(watch))
    await watches_open(store, 1)  # it is waiting inside the backend
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    with pytest.raises(StopAsyncIteration):  # a cancelled generator is finished
        await anext(watch)

    second = store.watch(b"/wc/", base + 1)
    r = await store.put(b"/wc/a", b"1")
    assert (await next_batch(second)).revision == r
    await second.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(second)
    assert isinstance(store, (SqliteStore, EtcdStore))
    assert store.active_watches == 0


async def test_watch_rejects_start_revision_below_1(store: Store) -> None:
    with pytest.raises(ValueError):
        await anext(store.watch(b"/", 0))


# -- compaction ------------------------------------------------------------------------------


async def test_compaction(store: Store) -> None:
    revs = [await store.put(b"/c/k", f"v{i}".encode()) for i in range(5)]
    await store.put(b"/c/gone", b"x")
    r_deleted = (await store.delete(b"/c/gone"))[1]
    point = revs[2]
    await store.compact(point)

    with pytest.raises(CompactedError) as info:
        await store.range(b"/c/", revision=point - 1)
    assert info.value.compact_revision == point
    at_point = await store.range(b"/c/", revision=point)
    assert [(kv.value, kv.mod_revision) for kv in at_point.kvs] == [(b"v2", point)]
    latest = await store.range(b"/c/", revision=revs[4])
    assert [kv.value for kv in latest.kvs] == [b"v4"]

    for start in (point - 1, point):  # at or below the compacted revision
        with pytest.raises(CompactedError) as info:
            await anext(store.watch(b"/c/", start))
        assert info.value.compact_revision == point
    watch = store.watch(b"/c/", point + 1)
    assert [b.revision for b in await take(watch, 4)] == [
        revs[3],
        revs[4],
        r_deleted - 1,
        r_deleted,
    ]
    await watch.aclose()

    with pytest.raises(CompactedError):
        await store.compact(point)
    with pytest.raises(FutureRevisionError):
        await store.compact(await store.current_revision() + 1)


async def test_lagging_watcher_gets_compacted_error_not_a_gap(local_store: SqliteStore) -> None:
    base = await local_store.current_revision()
    for i in range(1200):  # several read chunks' worth
        await local_store.put(f"/lag/{i % 10}".encode(), b"v")
    watch = local_store.watch(b"/lag/", base + 1)
    seen = [(await next_batch(watch)).revision]
    await local_store.compact(await local_store.current_revision())
    with pytest.raises(CompactedError):
        while True:
            seen.append((await next_batch(watch)).revision)
    assert seen == list(range(base + 1, base + 1 + len(seen)))  # contiguous up to the error
    assert len(seen) < 1200


# -- local backends: fake clock and persistence ----------------------------------------------


async def test_lease_expiry_follows_the_injected_clock() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, reap_interval=3600)
    try:
        lease = await store.grant_lease(10)
        r = await store.put(b"/fc/a", b"1", lease=lease.id)
        watch = store.watch(b"/fc/", r + 1)
        clock.advance(8)
        assert await store.keepalive(lease.id) == 10
        clock.advance(8)  # 16 s since grant, 8 since keepalive
        assert await store.reap_expired_leases() == 0
        assert await store.get(b"/fc/a") is not None
        clock.advance(2)
        with pytest.raises(LeaseNotFoundError):  # expired, even before the reaper ran
            await store.keepalive(lease.id)
        assert await store.reap_expired_leases() == 1
        batch = await next_batch(watch)
        assert (batch.revision, batch.events[0].type) == (r + 1, EventType.DELETE)
        assert await store.get(b"/fc/a") is None
        await watch.aclose()
    finally:
        await store.close()


async def test_sqlite_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "persist.db"
    clock = FakeClock()
    first = SqliteStore(path, clock=clock)
    r1 = await first.put(b"/s/a", b"1")
    r2 = await first.put(b"/s/a", b"2")
    lease = await first.grant_lease(30)
    r3 = await first.put(b"/s/leased", b"x", lease=lease.id)
    doomed = await first.grant_lease(5)
    r4 = await first.put(b"/s/doomed", b"y", lease=doomed.id)
    await first.compact(r2)
    await first.close()
    with pytest.raises(StoreUnavailableError):
        await first.get(b"/s/a")

    clock.advance(10)  # the short lease expires while the store is down
    second = open_store(f"sqlite:///{path}", clock=clock)
    try:
        assert await second.current_revision() == r4
        assert await second.get(b"/s/a") == KeyValue(b"/s/a", b"2", r1, r2, 2, 0)
        assert [kv.value for kv in (await second.range(b"/s/a", revision=r2)).kvs] == [b"2"]
        with pytest.raises(CompactedError) as info:
            await second.range(b"/s/", revision=r1)
        assert info.value.compact_revision == r2
        watch = second.watch(b"/s/", r3)
        replay = await take(watch, 3)
        assert [b.revision for b in replay] == [r3, r4, r4 + 1]  # r4 + 1: the expired lease
        assert (replay[2].events[0].type, replay[2].events[0].kv.key) == (
            EventType.DELETE,
            b"/s/doomed",
        )
        assert await second.keepalive(lease.id) == 30  # the live lease is still known
        await second.revoke_lease(lease.id)
        revoked = await next_batch(watch)
        assert (revoked.revision, keys_of(revoked)) == (r4 + 2, [b"/s/leased"])
        await watch.aclose()
    finally:
        await second.close()


async def test_close_ends_open_watches(store: Store) -> None:
    watch = store.watch(b"/", await store.current_revision() + 1)
    waiting = asyncio.ensure_future(anext(watch))
    await watches_open(store, 1)
    await store.close()
    with pytest.raises(StoreUnavailableError):
        await asyncio.wait_for(waiting, TIMEOUT)
    with pytest.raises(StoreUnavailableError):
        await store.get(b"/a")


async def test_a_sqlite_file_has_one_owner(tmp_path: Path) -> None:
    owner = SqliteStore(tmp_path / "owned.db")
    await owner.put(b"/a", b"1")
    with pytest.raises(StoreUnavailableError):
        SqliteStore(tmp_path / "owned.db")
    await owner.close()
    successor = SqliteStore(tmp_path / "owned.db")
    assert await successor.current_revision() == 2
    await successor.close()


# -- etcd: endpoints, failover and disconnects -----------------------------------------------


@pytest.mark.etcd
async def test_etcd_fails_over_to_a_live_endpoint(etcd_server: EtcdProcess) -> None:
    await etcd_server.reset()
    dead = free_port()
    store = EtcdStore(
        parse_etcd_endpoints(f"127.0.0.1:{dead},{etcd_server.endpoint}"), connect_timeout=0.5
    )
    try:
        await store.put(b"/fo/a", b"1")
        assert store.endpoint == etcd_server.endpoint
        assert (await store.get(b"/fo/a")) is not None
    finally:
        await store.close()


@pytest.mark.etcd
async def test_etcd_with_no_live_endpoint_is_unavailable() -> None:
    store = EtcdStore([("127.0.0.1", free_port()), ("127.0.0.1", free_port())], connect_timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await store.current_revision()
        with pytest.raises(StoreUnavailableError):
            await store.put(b"/a", b"1")
        assert time.monotonic() - started < TIMEOUT
    finally:
        await store.close()


@pytest.mark.etcd
async def test_etcd_watch_resumes_after_restart_without_loss_or_duplicates(
    fresh_etcd: EtcdProcess,
) -> None:
    store = EtcdStore(parse_etcd_endpoints(fresh_etcd.endpoint), connect_timeout=0.5)
    try:
        base = await store.current_revision()
        watch = store.watch(b"/rs/", base + 1)
        r1 = await store.put(b"/rs/a", b"1")
        assert (await next_batch(watch)).revision == r1
        pending = asyncio.ensure_future(take(watch, 3, timeout=4 * TIMEOUT))
        assert store.active_watches == 1  # its stream is live: it has just delivered r1
        fresh_etcd.kill()
        with pytest.raises(StoreUnavailableError):
            await store.put(b"/rs/b", b"lost")
        fresh_etcd.start()
        r2 = await store.put(b"/rs/b", b"2")  # written before the watch has reconnected
        r3 = await store.put(b"/rs/c", b"3")
        r4 = await store.put(b"/rs/a", b"4")
        got = await pending
        assert [b.revision for b in got] == [r2, r3, r4] == [r1 + 1, r1 + 2, r1 + 3]
        assert [keys_of(b) for b in got] == [[b"/rs/b"], [b"/rs/c"], [b"/rs/a"]]
        r5 = await store.put(b"/rs/z", b"sentinel")
        assert (await next_batch(watch)).revision == r5
        await watch.aclose()
    finally:
        await store.close()


# -- open_store ------------------------------------------------------------------------------


async def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = open_store("memory://")
    assert isinstance(memory, MemoryStore)
    await memory.close()

    absolute = open_store(f"sqlite:///{tmp_path / 'abs.db'}")
    await absolute.put(b"/k", b"v")
    await absolute.close()
    assert (tmp_path / "abs.db").exists()

    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///rel.db")
    await relative.put(b"/k", b"v")
    await relative.close()
    assert (tmp_path / "rel.db").exists()

    etcd = open_store("etcd://127.0.0.1:2379,[::1]:2380, localhost:2381")
    assert isinstance(etcd, EtcdStore)
    await etcd.close()
    assert parse_etcd_endpoints("127.0.0.1:2379,[::1]:2380") == [("127.0.0.1", 2379), ("::1", 2380)]

    for bad in (
        "",
        "memory:",
        "redis://x",
        "sqlite://",
        "sqlite:///",
        "sqlite:///x.db?mode=ro",
        "etcd://",
        "etcd://host",
        "etcd://host:port",
        "etcd://h:0",
        "etcd://h:1/path",
    ):
        with pytest.raises(ValueError):
            open_store(bad)
