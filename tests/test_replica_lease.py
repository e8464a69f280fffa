"""The replica lease (lucid_cp.replica_lease): one grant, one keepalive loop, a new lease after a
lost one with its users told before and after; and its three users sharing one lease through a
loss (health membership, sidecar status writer, event owners) and stopping alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from lucid_cp.api.lucid.sidecar.v1 import storage_pb2 as spb
from lucid_cp.clock import FakeClock, SystemClock
from lucid_cp.discovery.health.membership import PREFIX, LeaseMembership
from lucid_cp.events import keys as event_keys
from lucid_cp.events.owners import Owners
from lucid_cp.replica_lease import ReplicaLease
from lucid_cp.sidecar import keys as sidecar_keys
from lucid_cp.sidecar.writer import StatusWriter
from lucid_cp.store.base import Lease, LeaseNotFoundError, StoreUnavailableError
from lucid_cp.store.memory import MemoryStore
from tests.watchcache.fakes import eventually

TTL = 3  # seconds; the keepalive runs every TTL / 3


async def ticking(clock: FakeClock, condition: Callable[[], bool], step: float = 1.0) -> None:
    """Moves the fake clock on by ``step`` every few loop turns until ``condition`` holds."""
    async with asyncio.timeout(5):
        while not condition():
            clock.advance(step)
            await asyncio.sleep(0.005)


class GrantRefusals:
    """The memory store, refusing the next ``refuse`` lease grants as an unreachable store."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.refuse = 0
        self.grants = 0

    async def grant_lease(self, ttl: int) -> Lease:
        if self.refuse > 0:
            self.refuse -= 1
            raise StoreUnavailableError("store down")
        self.grants += 1
        return await self.store.grant_lease(ttl)

    async def keepalive(self, lease_id: int) -> int:
        return await self.store.keepalive(lease_id)

    async def revoke_lease(self, lease_id: int) -> int:
        return await self.store.revoke_lease(lease_id)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeClock, MemoryStore]]:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    try:
        yield clock, store
    finally:
        await store.close()


async def test_one_grant_kept_alive(fake: tuple[FakeClock, MemoryStore]) -> None:
    clock, store = fake
    counted = GrantRefusals(store)
    lease = ReplicaLease(counted, clock, ttl=TTL)
    assert lease.id == 0
    with pytest.raises(LeaseNotFoundError):
        lease.require()
    await lease.start()
    await lease.start()  # every user starts it: granted once
    first = lease.id
    assert first and lease.require() == first and counted.grants == 1
    events: list[object] = []
    lease.subscribe(lost=lambda: events.append("lost"), granted=events.append)
    for _ in range(6 * TTL):  # far past the ttl, a second at a time: the keepalive holds it
        clock.advance(1)
        await asyncio.sleep(0.005)
    assert lease.id == first and events == [] and counted.grants == 1
    assert await store.keepalive(first) == TTL
    await lease.stop()


async def test_a_lost_lease_is_replaced_and_its_users_told_before_and_after(
    fake: tuple[FakeClock, MemoryStore],
) -> None:
    clock, store = fake
    lease = ReplicaLease(store, clock, ttl=TTL)
    await lease.start()
    old = lease.id
    events: list[object] = []

    def lost() -> None:
        events.append(("lost", lease.id))  # no lease to write under meanwhile
        with pytest.raises(LeaseNotFoundError):
            lease.require()

    lease.subscribe(lost=lost, granted=lambda new: events.append(("granted", new)))
    await asyncio.sleep(0.01)  # the keepalive waits for its next turn
    clock.advance(4 * TTL)  # cut off longer than the ttl: expired
    await eventually(lambda: len(events) == 2)
    assert events == [("lost", 0), ("granted", lease.id)] and lease.id not in (0, old)
    await lease.stop()


async def test_a_user_reporting_the_lease_gone_has_it_replaced_at_once(
    fake: tuple[FakeClock, MemoryStore],
) -> None:
    clock, store = fake
    lease = ReplicaLease(store, clock, ttl=TTL)
    await lease.start()
    old = lease.id
    granted: list[int] = []
    lease.subscribe(granted=granted.append)
    lease.lost(old + 1)  # not ours: ignored
    lease.lost(0)
    await store.revoke_lease(old)  # gone behind its back (a write found it so)
    lease.lost(old)
    await eventually(lambda: bool(granted))  # no clock advance: checked at once
    assert granted == [lease.id] and lease.id != old
    await lease.stop()


async def test_a_refused_grant_is_retried_every_period(
    fake: tuple[FakeClock, MemoryStore],
) -> None:
    clock, store = fake
    refusing = GrantRefusals(store)
    lease = ReplicaLease(refusing, clock, ttl=TTL)
    await lease.start()
    granted: list[int] = []
    lease.subscribe(granted=granted.append)
    refusing.refuse = 2
    await store.revoke_lease(lease.id)
    await ticking(clock, lambda: refusing.refuse == 0)
    assert lease.id == 0 and granted == []
    await ticking(clock, lambda: bool(granted))
    assert granted == [lease.id] and lease.id
    await lease.stop()


async def test_stop_revokes_and_unsubscribed_users_hear_nothing(
    fake: tuple[FakeClock, MemoryStore],
) -> None:
    clock, store = fake
    lease = ReplicaLease(store, clock, ttl=TTL)
    await lease.start()
    heard: list[object] = []
    unsubscribe = lease.subscribe(lost=lambda: heard.append("lost"), granted=heard.append)
    unsubscribe()
    unsubscribe()  # twice: harmless
    old = lease.id
    await store.revoke_lease(old)
    lease.lost(old)
    await eventually(lambda: lease.id not in (0, old))
    await store.put(b"/held", b"x", lease=lease.id)
    await lease.stop()
    await lease.stop()
    assert heard == [] and lease.id == 0 and await store.get(b"/held") is None
    with pytest.raises(RuntimeError):
        await lease.start()
    with pytest.raises(ValueError):
        ReplicaLease(store, clock, ttl=0)


# -- the users, sharing one lease -------------------------------------------------------------


async def test_three_users_share_one_lease_and_hold_their_keys_again_after_a_loss() -> None:
    clock = SystemClock()
    store = MemoryStore(reap_interval=0.05)
    lease = ReplicaLease(store, clock, ttl=1)
    membership = LeaseMembership(store, "replica-a", lease, clock=clock)
    writer = StatusWriter(store, lambda sid: 0, "replica-a-1", lease=lease, clock=clock)
    owners = Owners(store, clock, "replica-a", lease=lease)
    lost: list[int] = []
    changed: list[int] = []
    owners.on_lost(lambda: lost.append(1))
    owners.on_change(lambda: changed.append(1))
    parts = (membership, writer, owners)
    try:
        for part in parts:
            await part.start()
        writer.progress(7, 1)
        await writer.drain()
        assert await owners.claim("job")

        async def leases() -> set[int]:
            found: set[int] = set()
            for key in (
                PREFIX + b"replica-a",
                sidecar_keys.replica_key("replica-a-1"),
                event_keys.owner_key("job"),
            ):
                kv = await store.get(key)
                found.add(kv.lease if kv is not None else 0)
            return found

        old = lease.id
        assert await leases() == {old}
        await store.revoke_lease(old)  # expired: every key under it is gone
        await eventually(lambda: lease.id not in (0, old) and bool(lost))
        await eventually(lambda: membership.members() == {"replica-a"})
        assert await owners.claim("job")  # the jobs are claimed again under the new lease
        new = lease.id
        for _ in range(200):
            if await leases() == {new}:
                break
            await asyncio.sleep(0.01)
        assert await leases() == {new} and changed
        progress = await store.get(sidecar_keys.replica_key("replica-a-1"))
        assert progress is not None
        assert spb.ReplicaProgress.FromString(progress.value).evaluated_revision == 7

        # Each user stopping alone leaves at once; the lease lives on for the others.
        for part in parts:
            await part.stop()
        assert await leases() == {0} and lease.id == new
        await store.keepalive(new)
    finally:
        for part in parts:
            await part.stop()
        await lease.stop()
        await store.close()
