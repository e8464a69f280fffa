"""Replica membership: rendezvous assignment, lease-based join/leave/death on a real store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from lucid_cp.clock import SystemClock
from lucid_cp.discovery.health.membership import (
    LeaseMembership,
    StaticMembership,
    rendezvous_owner,
)
from lucid_cp.replica_lease import ReplicaLease
from lucid_cp.store.memory import MemoryStore

from .flaky import FlakyStore
from .targets import wait_until

CLOCK = SystemClock()
KEYS = [str(uuid.UUID(int=n)) for n in range(3000)]


def test_rendezvous_is_deterministic_balanced_and_moves_only_the_lost_share() -> None:
    replicas = ["r-a", "r-b", "r-c"]
    owners = {k: rendezvous_owner(replicas, k) for k in KEYS}
    assert owners == {k: rendezvous_owner(list(reversed(replicas)), k) for k in KEYS}
    counts = {r: sum(1 for o in owners.values() if o == r) for r in replicas}
    assert all(800 <= c <= 1200 for c in counts.values()), counts
    after = {k: rendezvous_owner(["r-a", "r-c"], k) for k in KEYS}
    moved = [k for k in KEYS if after[k] != owners[k]]
    assert moved and all(owners[k] == "r-b" for k in moved)
    assert rendezvous_owner([], "x") is None


def test_static_membership_owns_everything() -> None:
    membership = StaticMembership("solo")
    assert all(membership.owns(k) for k in KEYS[:50]) and membership.members() == {"solo"}


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    backend = MemoryStore(reap_interval=0.05)
    try:
        yield backend
    finally:
        await backend.close()


async def test_replicas_split_the_keys_and_take_over_a_dead_ones_share(store: MemoryStore) -> None:
    link_b = FlakyStore(store)
    lease_a = ReplicaLease(store, CLOCK, ttl=1)
    lease_b = ReplicaLease(link_b, CLOCK, ttl=1)
    a = LeaseMembership(store, "replica-a", lease_a, clock=CLOCK)
    b = LeaseMembership(link_b, "replica-b", lease_b, clock=CLOCK)
    await a.start()
    await b.start()
    try:
        both = {"replica-a", "replica-b"}
        await wait_until(lambda: a.members() == both and b.members() == both, 2, "both joined")
        owned_a = {k for k in KEYS if a.owns(k)}
        owned_b = {k for k in KEYS if b.owns(k)}
        assert owned_a | owned_b == set(KEYS) and not owned_a & owned_b
        assert owned_a and owned_b

        generation = a.generation
        link_b.down = True  # b is cut off: no keepalive reaches the store, its lease expires
        await wait_until(lambda: a.members() == {"replica-a"}, 3, "b's lease to expire")
        assert a.generation > generation and all(a.owns(k) for k in KEYS)

        link_b.down = False  # b comes back: its lease is gone, so it joins again
        await wait_until(lambda: a.members() == both and b.members() == both, 3, "b to re-join")
        assert {k for k in KEYS if b.owns(k)} == owned_b
    finally:
        await b.stop()
        await a.stop()
        await lease_b.stop()
        await lease_a.stop()


async def test_clean_stop_hands_over_at_once(store: MemoryStore) -> None:
    lease_a, lease_b = ReplicaLease(store, CLOCK, ttl=30), ReplicaLease(store, CLOCK, ttl=30)
    a = LeaseMembership(store, "replica-a", lease_a, clock=CLOCK)
    b = LeaseMembership(store, "replica-b", lease_b, clock=CLOCK)
    await a.start()
    await b.start()
    await wait_until(lambda: a.members() == {"replica-a", "replica-b"}, 2, "both joined")
    await b.stop()
    await wait_until(lambda: a.members() == {"replica-a"}, 1, "b's key revoked")
    assert b.members() == frozenset() and not b.owns(KEYS[0])
    await a.stop()
    await lease_b.stop()
    await lease_a.stop()


async def test_replica_ids_cannot_escape_the_prefix(store: MemoryStore) -> None:
    with pytest.raises(ValueError):
        LeaseMembership(store, "a/b", ReplicaLease(store, CLOCK, ttl=3), clock=CLOCK)
