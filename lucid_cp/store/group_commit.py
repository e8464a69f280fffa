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
* No two members of one group touch the same key (etcd refuses a txn that writes a key twice),
  and a write of a key a txn in flight touches waits for it: writes of one key apply in the
  order submitted.
* When the joined txn's compares all hold, every member succeeded at its revision. When any
  fails, the joined txn wrote nothing, and its failure branch read every guarded key at that
  revision: a member whose own guards failed there is answered as its own txn would have been
  then (its failure branch, when that reads only guarded keys; otherwise it runs alone), and the
  members whose guards held are joined again among themselves (no newcomer joins them, so each
  round answers at least one: none is starved). So a member's answer never depends on its
  neighbours, and one stale guard costs its group one extra round trip. A joined txn the store
  refuses (a lease gone, a limit) is retried member by member; StoreUnavailableError reaches
  every member, as it would have alone.
* Unknown outcomes: the store resolves a joined txn as any txn of puts (reading every key back).
  If the txn had applied but another write changed one of its keys before the read-back, the
  store reports it not applied, and the resend fails its guards; a member whose guarded keys
  read back exactly its own values, all at one revision, is then answered as written at that
  revision (a member with a put it does not guard is answered as failed: a write that applied
  reported as lost, which a guarded write's caller re-reads and sees).
* At most ``parallel`` groups are in flight (members sorted out to run alone after a failed
  guard run beside them); the next group gathers meanwhile (no timer: a quiet store sees a
  lone write at once).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter, deque
from collections.abc import Sequence

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
    StoreError,
    StoreUnavailableError,
    TxnOp,
    TxnResult,
)

log = logging.getLogger("lucid_cp.store.group_commit")

# What one joined txn may carry (etcd's request limit, less a margin for its own framing).
GROUP_BYTES = MAX_REQUEST_BYTES - 64 * 1024
PARALLEL = 2


class _Member:
    """One caller's txn: its branches, its future, the bytes and keys it adds to a group, and
    whether it may share one (only puts, within the limits)."""

    __slots__ = ("compares", "failure", "future", "joinable", "keys", "size", "success")

    def __init__(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp],
        future: asyncio.Future[TxnResult],
        max_ops: int,
        max_bytes: int,
    ) -> None:
        self.compares = compares
        self.success = success
        self.failure = failure
        self.future = future
        joinable = len(compares) <= max_ops and len(success) <= max_ops
        size = 0
        keys: list[bytes] = []
        for op in success:
            if type(op) is Put:
                size += len(op.key) + len(op.value) + OP_OVERHEAD_BYTES
            else:
                joinable = False
                size += op_bytes(op)
            keys.append(op.key)
        for c in compares:
            # The guard, and its read in the joined txn's failure branch.
            size += 2 * (len(c.key) + OP_OVERHEAD_BYTES)
            if type(c.value) is bytes:
                size += len(c.value)
            keys.append(c.key)
        self.size = size
        self.keys = keys
        self.joinable = joinable and size <= max_bytes


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
        # The keys of the txns in flight (a write of one of them waits for its turn).
        self._in_flight: Counter[bytes] = Counter()
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
        future: asyncio.Future[TxnResult] = asyncio.get_running_loop().create_future()
        member = _Member(compares, success, failure, future, self._max_ops, self._max_bytes)
        self._queue.append(member)
        self._schedule()
        return member.future

    async def stop(self) -> None:
        """Waits until every write submitted so far was answered."""
        while self._tasks or self._queue:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                self._kick()
                await asyncio.sleep(0)

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
            if not group:
                return  # every queued write waits for a key in flight
            self._running += 1
            for member in group:
                self._in_flight.update(member.keys)
            task = asyncio.create_task(self._commit(group), name="group-commit")
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._done, group))

    def _done(self, group: list[_Member], task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._running -= 1
        for member in group:
            self._in_flight.subtract(member.keys)
        self._in_flight += Counter()  # drops the keys at zero
        if not task.cancelled() and task.exception() is not None:
            log.error("group commit failed", exc_info=task.exception())
        if self._queue:
            self._kick()

    def _take(self) -> list[_Member]:
        """The next group, in queue order: members that touch no key of a txn in flight nor of
        the group (those wait, keeping their order, so writes of one key apply in the order
        submitted), as many as fit; a member that may not share a txn goes alone, and nothing
        is taken past it."""
        group: list[_Member] = []
        keys: set[bytes] = set()
        compares = ops = size = 0
        waiting: list[_Member] = []
        blocked: set[bytes] = set()
        while self._queue:
            member = self._queue.popleft()
            if (
                not self._in_flight.keys().isdisjoint(member.keys)
                or not keys.isdisjoint(member.keys)
                or not blocked.isdisjoint(member.keys)
            ):
                waiting.append(member)
                blocked.update(member.keys)  # nothing after it may pass it on any of its keys
                continue
            if not member.joinable:
                if group:
                    self._queue.appendleft(member)
                else:
                    group.append(member)
                break
            if group and (
                compares + len(member.compares) > self._max_ops
                or ops + len(member.success) > self._max_ops
                or size + member.size > self._max_bytes
            ):
                self._queue.appendleft(member)
                break  # full
            keys.update(member.keys)
            compares += len(member.compares)
            ops += len(member.success)
            size += member.size
            group.append(member)
        self._queue.extendleft(reversed(waiting))
        return group

    async def _commit(self, group: list[_Member]) -> None:
        """Commits ``group``; every member's future is answered, whatever happens."""
        try:
            await self._joined([m for m in group if not m.future.done()])
        except BaseException as exc:
            for member in group:
                _fail(member, exc)
            raise

    async def _joined(self, live: list[_Member]) -> None:
        """One joined txn for ``live``; after a failed guard, the members whose guards held are
        joined again on their own (no newcomer joins them: each round answers at least one
        member, so they are never starved)."""
        others: list[asyncio.Task[None]] = []  # members sorted out to run alone
        try:
            while live:
                self.txns += 1
                self.members += len(live)
                if len(live) == 1:
                    await self._alone(live[0])
                    break
                compare_keys = list(dict.fromkeys(c.key for m in live for c in m.compares))
                try:
                    result = await self._store.txn(
                        [c for m in live for c in m.compares],
                        [op for m in live for op in m.success],
                        [Get(key) for key in compare_keys],
                    )
                except StoreUnavailableError as exc:  # the store's verdict for everyone
                    for member in live:
                        _fail(member, exc)
                    break
                except StoreError:  # refused for one member's sake (a lease gone...): alone
                    self.fallbacks += 1
                    await self._each_alone(live)
                    break
                if result.succeeded:
                    for member in live:
                        answer = TxnResult(True, result.revision, [None] * len(member.success))
                        _answer(member, answer)
                    break
                self.fallbacks += 1
                live, alone = self._sort_out(live, compare_keys, result)
                if alone:
                    others.append(asyncio.create_task(self._each_alone(alone)))
            if others:
                await asyncio.gather(*others)
        except BaseException:
            for task in others:
                task.cancel()
            raise

    def _sort_out(
        self, live: list[_Member], compare_keys: list[bytes], result: TxnResult
    ) -> tuple[list[_Member], list[_Member]]:
        """After a joined txn failed (nothing was written): its failure branch read every
        guarded key at that revision. A member whose guards failed there is answered as its own
        txn would have been then. (Unless its guarded keys hold exactly its own puts, all at one
        revision: then the joined txn had applied, in an attempt the store could not confirm,
        and failed its own guards when resent; that revision is its answer.) The members whose
        guards held are returned, to be joined again, apart from those that must run alone."""
        read = {
            key: kv if isinstance(kv, KeyValue) else None
            for key, kv in zip(compare_keys, result.responses, strict=True)
        }
        again: list[_Member] = []
        for member in live:
            if all(holds(c, read[c.key]) for c in member.compares):
                again.append(member)
                continue
            applied = _own_revision(member, read)
            if applied:
                _answer(member, TxnResult(True, applied, [None] * len(member.success)))
            elif all(type(op) is Get and op.key in read for op in member.failure):
                answer = [read[op.key] for op in member.failure]
                _answer(member, TxnResult(False, result.revision, list(answer)))
            else:
                again.append(member)  # its failure branch reads elsewhere: it runs alone
                member.joinable = False
        if len(again) == len(live):  # every guard held, yet the txn failed: never loop on it
            for member in again:
                member.joinable = False
        return [m for m in again if m.joinable], [m for m in again if not m.joinable]

    async def _each_alone(self, members: list[_Member]) -> None:
        self.txns += len(members)
        await asyncio.gather(*(self._alone(m) for m in members))

    async def _alone(self, member: _Member) -> None:
        try:
            result = await self._store.txn(member.compares, member.success, member.failure)
        except BaseException as exc:
            _fail(member, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        _answer(member, result)


def _own_revision(member: _Member, read: dict[bytes, KeyValue | None]) -> int:
    """The revision at which ``member``'s puts are stored, when every one of them is a guarded
    key read back holding exactly its value and lease, all at one mod_revision; else 0."""
    revisions = set()
    for op in member.success:
        if type(op) is not Put or op.key not in read:
            return 0
        kv = read[op.key]
        if kv is None or kv.value != op.value or kv.lease != op.lease:
            return 0
        revisions.add(kv.mod_revision)
    return revisions.pop() if len(revisions) == 1 else 0


def _answer(member: _Member, result: TxnResult) -> None:
    if not member.future.done():
        member.future.set_result(result)


def _fail(member: _Member, exc: BaseException) -> None:
    if member.future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        member.future.cancel()
    else:
        member.future.set_exception(exc)
