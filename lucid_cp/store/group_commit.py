"""Group commit of independent guarded writes: many callers' small txns share one store txn.

A caller awaits ``GroupCommit.txn(compares, success, failure)`` exactly as it would
``store.txn``, and gets the result its own txn would have had. Underneath, the writes queued
while earlier ones are in flight (and those queued in the same event-loop turn) are joined into
one txn: every member's compares, then every member's puts. On etcd that is one raft entry and
one fsync for the whole group instead of one per write; on sqlite one transaction.

* Joined: members whose success branch is only puts (create-only sends, compare-and-swap record
  changes), so the joined txn keeps the store's rule for resolving an unknown outcome (a txn of
  puts reads its keys back, see ``store.base``, "Faults"). A member with a delete, or too big to
  share a txn, runs alone, in order with the rest.
* No two members of one group touch the same key (etcd refuses a txn that writes a key twice);
  a member that would is left for the next group.
* When the joined txn's compares all hold, every member succeeded at its revision. When any
  fails, the joined txn wrote nothing, and its failure branch read every guarded key at that
  revision: a member whose own guards failed there is answered as its own txn would have been
  then (its failure branch, when that reads only guarded keys; otherwise it runs alone), and the
  members whose guards held go back to the front of the queue, to be joined again. So a
  member's answer never depends on its neighbours, and one stale guard costs its group one
  extra round trip.
* At most ``parallel`` txns are in flight; the next group gathers meanwhile (no timer: a quiet
  store sees a lone write at once).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from lucid_cp.store._contract import holds, op_bytes
from lucid_cp.store.base import (
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    OP_OVERHEAD_BYTES,
    Compare,
    Get,
    KeyValue,
    KeyWriter,
    Put,
    TxnOp,
    TxnResult,
)

log = logging.getLogger("lucid_cp.store.group_commit")

# What one joined txn may carry (etcd's request limit, less a margin for its own framing).
GROUP_BYTES = MAX_REQUEST_BYTES - 64 * 1024
PARALLEL = 2


@dataclass(eq=False)
class _Member:
    compares: Sequence[Compare]
    success: Sequence[TxnOp]
    failure: Sequence[TxnOp]
    future: asyncio.Future[TxnResult]
    size: int = 0
    keys: frozenset[bytes] = field(default_factory=frozenset)
    joinable: bool = True


class GroupCommit:
    def __init__(
        self,
        store: KeyWriter,
        *,
        parallel: int = PARALLEL,
        max_ops: int = MAX_TXN_OPS,
        max_bytes: int = GROUP_BYTES,
    ) -> None:
        self._store = store
        self._parallel = parallel
        self._max_ops = max_ops
        self._max_bytes = max_bytes
        self._queue: deque[_Member] = deque()
        self._running = 0
        self._kick_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        # How many txns were sent, and how many members they carried (joined or alone).
        self.txns = 0
        self.members = 0
        self.fallbacks = 0

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        return await self.submit(compares, success, failure)

    def submit(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> asyncio.Future[TxnResult]:
        """``txn`` without a coroutine: the future of its result (many writes can be submitted
        and gathered without a task each)."""
        member = _Member(compares, success, failure, asyncio.get_running_loop().create_future())
        member.size = sum(op_bytes(op) for op in success) + sum(
            2 * (len(c.key) + OP_OVERHEAD_BYTES)
            + (len(c.value) if isinstance(c.value, bytes) else 0)
            for c in compares
        )
        member.keys = frozenset(c.key for c in compares) | frozenset(op.key for op in success)
        member.joinable = (
            all(isinstance(op, Put) for op in success)
            and len(compares) <= self._max_ops
            and len(success) <= self._max_ops
            and member.size <= self._max_bytes
        )
        self._queue.append(member)
        self._schedule()
        return member.future

    async def stop(self) -> None:
        """Waits for the txns in flight (their callers get their answers)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _schedule(self) -> None:
        """Groups are formed after the current turn: writes queued in the same turn (a gather)
        share a txn."""
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)

    def _kick(self) -> None:
        self._kick_scheduled = False
        while self._queue and self._running < self._parallel:
            group = self._take()
            self._running += 1
            task = asyncio.create_task(self._commit(group), name="group-commit")
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._running -= 1
        if self._queue:
            self._kick()

    def _take(self) -> list[_Member]:
        """The next group: the first member, then those after it that fit and touch no key of
        the group (in queue order; the others wait for the next group)."""
        first = self._queue.popleft()
        group = [first]
        if not first.joinable:
            return group
        keys = set(first.keys)
        compares, ops, size = len(first.compares), len(first.success), first.size
        skipped: list[_Member] = []
        while self._queue:
            member = self._queue.popleft()
            if (
                not member.joinable
                or compares + len(member.compares) > self._max_ops
                or ops + len(member.success) > self._max_ops
                or size + member.size > self._max_bytes
            ):
                self._queue.appendleft(member)
                break  # full (or one that runs alone): keep order
            if not keys.isdisjoint(member.keys):
                skipped.append(member)
                continue
            keys |= member.keys
            compares += len(member.compares)
            ops += len(member.success)
            size += member.size
            group.append(member)
        self._queue.extendleft(reversed(skipped))
        return group

    async def _commit(self, group: list[_Member]) -> None:
        live = [m for m in group if not m.future.done()]  # a caller cancelled meanwhile
        if not live:
            return
        self.txns += 1
        self.members += len(live)
        if len(live) == 1:
            await self._alone(live[0])
            return
        compare_keys = list(dict.fromkeys(c.key for m in live for c in m.compares))
        try:
            result = await self._store.txn(
                [c for m in live for c in m.compares],
                [op for m in live for op in m.success],
                [Get(key) for key in compare_keys],
            )
        except BaseException as exc:
            for member in live:
                _fail(member, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if result.succeeded:
            for member in live:
                if not member.future.done():
                    member.future.set_result(
                        TxnResult(True, result.revision, [None] * len(member.success))
                    )
            return
        # Some guard failed, so nothing was written. The failure branch read every guarded key
        # at that revision: a member whose guards failed there gets the answer its own txn
        # would have had then; the others go back to the front of the queue together.
        self.fallbacks += 1
        read = {
            key: kv if isinstance(kv, KeyValue) else None
            for key, kv in zip(compare_keys, result.responses, strict=True)
        }
        again: list[_Member] = []
        alone: list[_Member] = []
        for member in live:
            if all(holds(c, read[c.key]) for c in member.compares):
                again.append(member)
            elif all(isinstance(op, Get) and op.key in read for op in member.failure):
                if not member.future.done():
                    member.future.set_result(
                        TxnResult(
                            False,
                            result.revision,
                            [read[op.key] for op in member.failure],
                        )
                    )
            else:
                alone.append(member)
        if len(again) == len(live):  # cannot be (one guard failed); never loop on it
            alone, again = live, []
        if again:
            self._queue.extendleft(reversed(again))
            self._schedule()
        if alone:
            self.txns += len(alone)
            await asyncio.gather(*(self._alone(m) for m in alone))

    async def _alone(self, member: _Member) -> None:
        try:
            result = await self._store.txn(member.compares, member.success, member.failure)
        except BaseException as exc:
            _fail(member, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if not member.future.done():
            member.future.set_result(result)


def _fail(member: _Member, exc: BaseException) -> None:
    if member.future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        member.future.cancel()
    else:
        member.future.set_exception(exc)
