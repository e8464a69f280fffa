"""GroupCommit: concurrent guarded writes share store txns, and each member gets the answer its
own txn would have had."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from lucid_cp.store.base import (
    Compare,
    Delete,
    Get,
    KeyValue,
    LeaseNotFoundError,
    Put,
    StoreUnavailableError,
    TxnOp,
    TxnResult,
    key_missing,
    mod_revision_is,
)
from lucid_cp.store.group_commit import GroupCommit
from lucid_cp.store.memory import MemoryStore


class Counting:
    """The store, counting the txns that reach it (and failing them on demand)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.txns: list[tuple[int, int]] = []  # (compares, success ops) of each
        self.fail_with: Exception | None = None

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        return await self.store.put(key, value, lease=lease)

    async def delete(self, key: bytes, *, prefix: bool = False) -> tuple[int, int]:
        return await self.store.delete(key, prefix=prefix)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        self.txns.append((len(compares), len(success)))
        if self.fail_with is not None:
            raise self.fail_with
        return await self.store.txn(compares, success, failure)


@pytest.fixture
async def store() -> AsyncIterator[Counting]:
    memory = MemoryStore()
    yield Counting(memory)
    await memory.close()


def create(key: bytes, value: bytes = b"v") -> tuple[list[Compare], list[TxnOp], list[TxnOp]]:
    return [key_missing(key)], [Put(key, value)], [Get(key)]


async def test_writes_queued_in_one_turn_share_one_txn(store: Counting) -> None:
    group = GroupCommit(store)
    results = await asyncio.gather(*(group.txn(*create(b"k%d" % i)) for i in range(50)))
    assert store.txns == [(50, 50)]
    assert {r.succeeded for r in results} == {True}
    assert len({r.revision for r in results}) == 1
    assert all(r.responses == [None] for r in results)
    assert (await store.store.get(b"k49")) is not None
    assert (group.txns, group.members, group.fallbacks) == (1, 50, 0)


async def test_a_lone_write_is_sent_at_once_with_its_own_answer(store: Counting) -> None:
    group = GroupCommit(store)
    await store.store.put(b"taken", b"old")
    result = await group.txn(*create(b"taken"))
    assert not result.succeeded
    [kv] = result.responses
    assert isinstance(kv, KeyValue) and kv.value == b"old"
    assert store.txns == [(1, 1)]


async def test_a_failing_member_does_not_fail_its_neighbours(store: Counting) -> None:
    await store.store.put(b"k3", b"someone else's")
    group = GroupCommit(store)
    results = await asyncio.gather(*(group.txn(*create(b"k%d" % i)) for i in range(6)))
    # The joined txn failed on k3's guard and wrote nothing; k3 was answered from its read,
    # the other five were joined again.
    assert store.txns == [(6, 6), (5, 5)]
    assert [r.succeeded for r in results] == [True, True, True, False, True, True]
    kv = results[3].responses[0]
    assert isinstance(kv, KeyValue) and kv.value == b"someone else's"
    assert results[3].revision < results[0].revision
    assert group.fallbacks == 1


async def test_a_failing_member_with_other_reads_runs_alone(store: Counting) -> None:
    await store.store.put(b"k1", b"taken")
    await store.store.put(b"elsewhere", b"e")
    group = GroupCommit(store)
    first, second = await asyncio.gather(
        group.txn(*create(b"k0")),
        group.txn([key_missing(b"k1")], [Put(b"k1", b"v")], [Get(b"elsewhere")]),
    )
    assert first.succeeded and not second.succeeded
    kv = second.responses[0]
    assert isinstance(kv, KeyValue) and kv.value == b"e"
    assert store.txns == [(2, 2), (1, 1), (1, 1)]


async def test_compare_and_swap_members_keep_their_guards(store: Counting) -> None:
    revisions = [await store.store.put(b"r%d" % i, b"0") for i in range(4)]
    group = GroupCommit(store, parallel=1)
    stale = revisions[0] - 1
    results = await asyncio.gather(
        group.txn([mod_revision_is(b"r0", stale)], [Put(b"r0", b"1")], [Get(b"r0")]),
        *(
            group.txn([mod_revision_is(b"r%d" % i, revisions[i])], [Put(b"r%d" % i, b"1")])
            for i in range(1, 4)
        ),
    )
    assert [r.succeeded for r in results] == [False, True, True, True]
    assert (await store.store.get(b"r0")).value == b"0"  # type: ignore[union-attr]
    assert (await store.store.get(b"r3")).value == b"1"  # type: ignore[union-attr]


async def test_members_touching_one_key_go_in_separate_txns_in_order(store: Counting) -> None:
    group = GroupCommit(store, parallel=1)
    first, second, other = await asyncio.gather(
        group.txn([], [Put(b"same", b"1")]),
        group.txn([], [Put(b"same", b"2")]),
        group.txn([], [Put(b"other", b"x")]),
    )
    assert first.succeeded and second.succeeded and other.succeeded
    assert second.revision > first.revision
    assert (await store.store.get(b"same")).value == b"2"  # type: ignore[union-attr]
    assert store.txns == [(0, 2), (0, 1)]  # "same"=1 with "other", then "same"=2


async def test_a_write_with_a_delete_runs_alone(store: Counting) -> None:
    await store.store.put(b"gone", b"x")
    group = GroupCommit(store, parallel=1)
    a, deleted, b = await asyncio.gather(
        group.txn(*create(b"a")),
        group.txn([], [Delete(b"gone")]),
        group.txn(*create(b"b")),
    )
    assert a.succeeded and deleted.succeeded and b.succeeded
    assert deleted.responses == [1]
    assert store.txns == [(1, 1), (0, 1), (1, 1)]  # queue order kept: nobody joins past it


async def test_groups_stay_within_the_store_limits(store: Counting) -> None:
    group = GroupCommit(store, parallel=1)
    results = await asyncio.gather(*(group.txn(*create(b"n%03d" % i)) for i in range(300)))
    assert all(r.succeeded for r in results)
    assert all(c <= 128 and s <= 128 for c, s in store.txns)
    assert sum(s for _, s in store.txns) == 300
    big = b"x" * (600 * 1024)  # three of these exceed one request: two txns at least
    store.txns.clear()
    await asyncio.gather(*(group.txn(*create(b"big%d" % i, big)) for i in range(3)))
    assert [s for _, s in store.txns] == [2, 1]


async def test_writes_gather_while_a_txn_is_in_flight(store: Counting) -> None:
    gate = asyncio.Event()
    real = store.txn

    async def slow(*args: Any) -> TxnResult:
        await gate.wait()
        return await real(*args)

    store.txn = slow  # type: ignore[method-assign]
    group = GroupCommit(store, parallel=1)
    first = asyncio.create_task(group.txn(*create(b"first")))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    later = [asyncio.create_task(group.txn(*create(b"later%d" % i))) for i in range(10)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(first, *later)
    assert all(r.succeeded for r in results)
    assert (group.txns, group.members) == (2, 11)
    assert len({r.revision for r in results[1:]}) == 1


async def test_a_store_failure_reaches_every_member(store: Counting) -> None:
    group = GroupCommit(store)
    store.fail_with = StoreUnavailableError("etcd is gone")
    results = await asyncio.gather(
        *(group.txn(*create(b"f%d" % i)) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailableError) for r in results)
    store.fail_with = None
    assert (await group.txn(*create(b"after"))).succeeded
    await group.stop()


async def test_writes_whose_guards_held_are_joined_again_without_newcomers(
    store: Counting,
) -> None:
    # Regression (review): re-queued writes were joined with new ones, so a steady trickle of
    # stale guards could hold a good write back for ever.
    for key in (b"a", b"c", b"d"):
        await store.store.put(key, b"taken")
    gate = asyncio.Event()
    real = store.txn

    async def gated(*args: Any) -> TxnResult:
        await gate.wait()
        return await real(*args)

    store.txn = gated  # type: ignore[method-assign]
    group = GroupCommit(store, parallel=1)
    first = [asyncio.ensure_future(group.txn(*create(k))) for k in (b"a", b"b", b"b2")]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(group.txn(*create(k))) for k in (b"c", b"d")]
    await asyncio.sleep(0)
    gate.set()
    a, b, b2 = await asyncio.gather(*first)
    assert not a.succeeded and b.succeeded and b2.succeeded
    assert store.txns[:2] == [(3, 3), (2, 2)]  # b and b2 again, alone together
    assert not any(r.succeeded for r in await asyncio.gather(*later))


async def test_a_refused_joined_txn_is_retried_member_by_member(store: Counting) -> None:
    lease = await store.store.grant_lease(10)
    await store.store.revoke_lease(lease.id)
    group = GroupCommit(store)
    results = await asyncio.gather(
        group.txn(*create(b"ok1")),
        group.txn([key_missing(b"leased")], [Put(b"leased", b"v", lease=lease.id)]),
        group.txn(*create(b"ok2")),
        return_exceptions=True,
    )
    assert isinstance(results[0], TxnResult) and results[0].succeeded
    assert isinstance(results[1], LeaseNotFoundError)
    assert isinstance(results[2], TxnResult) and results[2].succeeded


async def test_a_member_whose_write_is_stored_is_answered_as_written(store: Counting) -> None:
    # As after an unknown outcome the store could not confirm: the joined txn had applied,
    # another key of it changed, and the resend failed its guards.
    revision = await store.store.put(b"mine", b"new")
    group = GroupCommit(store)
    mine, other = await asyncio.gather(
        group.txn([mod_revision_is(b"mine", 1)], [Put(b"mine", b"new")], [Get(b"mine")]),
        group.txn(*create(b"other")),
    )
    assert mine.succeeded and mine.revision == revision
    assert other.succeeded


async def test_an_unexpected_failure_answers_every_member(store: Counting) -> None:
    async def short(*args: Any) -> TxnResult:
        return TxnResult(False, 5, [])  # a broken store: no reads in the failure branch

    store.txn = short  # type: ignore[method-assign]
    group = GroupCommit(store)
    results = await asyncio.wait_for(
        asyncio.gather(*(group.txn(*create(b"x%d" % i)) for i in range(3)), return_exceptions=True),
        5,
    )
    assert all(isinstance(r, ValueError) for r in results)


async def test_stop_waits_for_writes_not_yet_sent(store: Counting) -> None:
    group = GroupCommit(store)
    pending = group.submit(*create(b"late"))
    await group.stop()
    assert pending.done() and pending.result().succeeded


async def test_a_waiting_write_blocks_later_writes_of_any_of_its_keys(store: Counting) -> None:
    # Review: M2 {k, j} waited for k (in flight) while a later M3 {j} went ahead.
    gate = asyncio.Event()
    real = store.txn

    async def gated(*args: Any) -> TxnResult:
        await gate.wait()
        return await real(*args)

    store.txn = gated  # type: ignore[method-assign]
    group = GroupCommit(store, parallel=2)
    first = asyncio.ensure_future(group.txn([], [Put(b"k", b"1")]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    both = asyncio.ensure_future(group.txn([], [Put(b"k", b"2"), Put(b"j", b"2")]))
    later = asyncio.ensure_future(group.txn([], [Put(b"j", b"3")]))
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(first, both, later)
    assert results[0].revision < results[1].revision < results[2].revision
    assert (await store.store.get(b"j")).value == b"3"  # type: ignore[union-attr]
