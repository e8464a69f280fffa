"""The message queue core: sends, status reads, acks and nacks, claims, the sweeper's and the
pusher's transitions, dead letters and consumer configurations. Pure asyncio over narrow store
interfaces and the Clock; it never imports grpc.

Every change of a message record is one txn guarded by the record's mod_revision (the
transitions themselves are ``records.py``): a send is create-only; everything after it is a
compare-and-swap, with the dead-letter key written or deleted in the same txn. Concurrent
sends and changes share store txns (``store.group_commit``): each still succeeds or fails on
its own guard. Several replicas
may race for the same record; the loser re-reads (requests) or lets it go (background work: the
winner did what was needed). Ownership is checked here: a service acts for itself, an admin for
anyone, and a message the caller neither sent nor received is "not found".
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from lucid_cp.api.lucid.messaging.v1 import delivery_pb2 as dpb
from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.api.lucid.messaging.v1 import queue_storage_pb2 as spb
from lucid_cp.auth.tokens import Principal
from lucid_cp.clock import Clock
from lucid_cp.errors import Conflict, FieldViolation, LucidError
from lucid_cp.messaging import keys, records
from lucid_cp.messaging.errors import (
    STATUS_ROWS,
    AttemptNotCurrent,
    InvalidMessageRequest,
    MessageIdConflict,
    MessageNotFound,
)
from lucid_cp.messaging.index import Entry, QueueIndex
from lucid_cp.reasons import reason_string
from lucid_cp.store.base import (
    MAX_TXN_OPS,
    Compare,
    Delete,
    Get,
    KeyReader,
    KeyValue,
    KeyWriter,
    Put,
    TxnOp,
    TxnResult,
    key_missing,
    mod_revision_is,
)
from lucid_cp.store.group_commit import GroupCommit
from lucid_cp.validation import normalize

log = logging.getLogger("lucid_cp.messaging.queue")

CAS_ATTEMPTS = 8
READ_YOUR_WRITES_TIMEOUT = 2.0


def default_consumer() -> pb.ConsumerConfig:
    """A service's delivery settings until it stores its own (the declared defaults)."""
    config = pb.ConsumerConfig()
    normalize(config)
    return config


class QueueStore(KeyReader, KeyWriter, Protocol):
    """The store methods the core uses: reads and txns."""


@dataclass(slots=True, eq=False)  # made several times per message: no frozen-init cost
class Known:
    """A record as some reader last saw it, with the revisions a compare-and-swap needs."""

    record: spb.StoredMessage
    mod_revision: int
    create_revision: int

    @staticmethod
    def of(entry: Entry) -> Known:
        return Known(entry.record, entry.mod_revision, entry.create_revision)

    @staticmethod
    def read(kv: KeyValue) -> Known:
        return Known(spb.StoredMessage.FromString(kv.value), kv.mod_revision, kv.create_revision)


# A transition: (the record, now) -> the next record, or None when there is nothing to write.
# It may raise (not found, not the current attempt).
Change = Callable[[spb.StoredMessage, float], spb.StoredMessage | None]


def _invalid(field: str, description: str) -> InvalidMessageRequest:
    return InvalidMessageRequest(f"{field}: {description}", [FieldViolation(field, description)])


def _not_found(message_id: str) -> MessageNotFound:
    return MessageNotFound(f"no message {message_id}", details={"messageId": message_id})


class MessageQueue:
    def __init__(self, store: QueueStore, index: QueueIndex, clock: Clock, replica: str) -> None:
        self._store = store
        # Sends and record changes: concurrent ones share store txns (group commit).
        self.writes = GroupCommit(store)
        # Direct delivery: the dispatcher's "a consumer slot for this destination, if any".
        self.direct: Callable[[str], DirectSlot | None] | None = None
        # Sends in flight that were not claimed directly, per destination.
        self._sending: dict[str, int] = {}
        self._index = index
        self._clock = clock
        self.replica = replica

    # -- sending and reading -----------------------------------------------------------------

    async def send(
        self, principal: Principal, message: pb.InterServiceMessage
    ) -> pb.MessageResponse:
        """Create-only. The same id again: the first answer when the content is the same, 409
        otherwise (the stored message untouched)."""
        self._check_send(principal, message, "message")
        return await self._store_new(message)

    async def send_many(
        self, principal: Principal, messages: Sequence[pb.InterServiceMessage]
    ) -> list[pb.SendResult]:
        """``send`` of each message, concurrently (their writes share store txns). Every message
        is checked first: one that is invalid or not the caller's stores nothing. A message id
        taken by other content is that message's result (LUCID_ERR_1908), not the call's
        error; a store failure is (the messages stored before it answer the same when resent)."""
        for n, message in enumerate(messages):
            self._check_send(principal, message, f"messages[{n}]")
        begun = [self._begin_new(m) for m in messages]
        # Shielded: a caller that goes away does not cancel writes already submitted (their
        # callbacks must see how they ended).
        answers = await asyncio.gather(
            *(asyncio.shield(b.future) for b in begun), return_exceptions=True
        )
        return [self.send_result(b, a) for b, a in zip(begun, answers, strict=True)]

    def submit_send(self, principal: Principal, message: pb.InterServiceMessage) -> PendingSend:
        """``send`` without a coroutine, for a pipelined stream: checks the message (raises as
        ``send`` does) and submits its write; ``send_result`` answers it once written."""
        self._check_send(principal, message, "message")
        return self._begin_new(message)

    def send_result(
        self, pending: PendingSend, written: TxnResult | BaseException
    ) -> pb.SendResult:
        """A submitted send's answer: accepted, or the conflict of its id (a store failure
        raises)."""
        result = pb.SendResult(message_id=pending.record.message.message_id)
        try:
            if isinstance(written, BaseException):
                raise written
            result.accepted.CopyFrom(self._end_new(pending, written))
        except MessageIdConflict as conflict:
            result.code = reason_string(STATUS_ROWS[MessageIdConflict])
            result.error = conflict.message
        return result

    @staticmethod
    def _check_send(principal: Principal, message: pb.InterServiceMessage, field: str) -> None:
        principal.require_acts_as(message.source)
        violations = [
            FieldViolation(field + f.removeprefix("message"), d)
            for f, d in records.header_errors(message)
        ]
        if violations:
            raise InvalidMessageRequest(
                "; ".join(f"{v.field}: {v.description}" for v in violations), violations
            )

    async def _store_new(self, message: pb.InterServiceMessage) -> pb.MessageResponse:
        pending = self._begin_new(message)
        return self._end_new(pending, await asyncio.shield(pending.future))

    def _begin_new(self, message: pb.InterServiceMessage) -> PendingSend:
        now = self._clock.now()
        record = records.new_record(message, now)
        destination = message.destination
        slot = self._direct_slot(destination)
        if slot is not None:
            # Nothing of the destination waits and a consumer here has room: the message is
            # written claimed for it (attempt 1), and handed over once written.
            record = records.claim(record, now, slot.consumer, self.replica, slot.ack_wait)
        else:
            self._sending[destination] = self._sending.get(destination, 0) + 1
        key = keys.message_key(message.message_id)
        value = record.SerializeToString()
        future = self.writes.submit([key_missing(key)], [Put(key, value)], [Get(key)])
        pending = PendingSend(record, value, future, slot)
        future.add_done_callback(functools.partial(self._written_new, pending))
        return pending

    def _direct_slot(self, destination: str) -> DirectSlot | None:
        """A slot of a consumer on this replica for a message sent now, when nothing of the
        destination is queued here (the index) nor on its way to be (sends in flight): a
        direct claim never overtakes a message sent before it."""
        if self.direct is None or self._sending.get(destination, 0):
            return None
        if self._index.waiting(destination):
            return None
        return self.direct(destination)

    def _written_new(self, pending: PendingSend, done: asyncio.Future[TxnResult]) -> None:
        """Runs when a send's write returned, whoever awaits it (or nobody): the index notes
        the record, a direct claim is handed to its consumer (or its slot given back)."""
        record = pending.record
        destination = record.message.destination
        result = None if done.cancelled() or done.exception() else done.result()
        written = result is not None and result.succeeded
        try:
            if written:
                assert result is not None
                key = keys.message_key(record.message.message_id)
                kv = KeyValue(key, pending.value, result.revision, result.revision, 1)
                self._index.note(kv, record)
        finally:  # whatever the note did, the slot or the count is given back
            if pending.slot is not None:
                pending.slot.give(record if written else None)
            else:
                left = self._sending[destination] - 1
                if left:
                    self._sending[destination] = left
                else:
                    del self._sending[destination]

    def _end_new(self, pending: PendingSend, result: TxnResult) -> pb.MessageResponse:
        record = pending.record
        message = record.message
        if result.succeeded:
            return records.accepted(record, result.revision)  # noted by _written_new
        existing = result.responses[0]
        assert isinstance(existing, KeyValue)  # the compare failed: the key exists (one txn)
        stored = spb.StoredMessage.FromString(existing.value)
        # Both digests are of the message with its defaults applied (a record written before
        # digests were taken so holds another digest: its message, stored so, is compared).
        if record.digest not in (stored.digest, records.digest(stored.message)):
            raise MessageIdConflict(
                f"message {message.message_id} was already sent with other content",
                details={"messageId": message.message_id},
            )
        return records.accepted(stored, existing.create_revision)

    async def status(self, principal: Principal, message_id: str) -> pb.MessageStatus:
        kv = await self._store.get(keys.message_key(message_id))
        if kv is None:
            raise _not_found(message_id)
        record = spb.StoredMessage.FromString(kv.value)
        if not records.visible_to(record, principal.subject, principal.is_admin):
            raise _not_found(message_id)
        return records.status(record, kv.mod_revision)

    # -- acks and nacks ------------------------------------------------------------------------

    async def ack(self, principal: Principal, message_id: str, attempt: int) -> pb.MessageStatus:
        written = await self._update(message_id, self._ack_change(principal, message_id, attempt))
        return records.status(written.record, written.mod_revision)

    async def nack(
        self, principal: Principal, message_id: str, attempt: int, error: str, retryable: bool
    ) -> pb.MessageStatus:
        change = self._nack_change(principal, message_id, attempt, error, retryable)
        written = await self._update(message_id, change)
        return records.status(written.record, written.mod_revision)

    async def settle_many(
        self,
        principal: Principal,
        settles: Sequence[pb.AckMessageRequest | pb.NackMessageRequest],
        settled: Callable[[str], None],
    ) -> list[BaseException | None]:
        """Acks and nacks of a Consume stream, all at once (sharing store txns); per item,
        None or why it failed. ``settled(message id)`` is called as each one ends."""
        changes: list[tuple[str, Change]] = []
        for settle in settles:
            if isinstance(settle, pb.AckMessageRequest):
                change = self._ack_change(principal, settle.message_id, settle.attempt)
            else:
                change = self._nack_change(
                    principal, settle.message_id, settle.attempt, settle.error, settle.retryable
                )
            changes.append((settle.message_id, change))
        written = await self._update_many(changes, settled)
        return [w if isinstance(w, BaseException) else None for w in written]

    def _ack_change(self, principal: Principal, message_id: str, attempt: int) -> Change:
        def change(record: spb.StoredMessage, now: float) -> spb.StoredMessage | None:
            self._check_attempt(principal, record, message_id, attempt, records.DELIVERED)
            if record.state == records.DELIVERED:
                return None  # acked before: the same answer
            return records.deliver(record, now, record.claim.consumer, pb.ATTEMPT_OUTCOME_ACKED)

        return change

    def _nack_change(
        self, principal: Principal, message_id: str, attempt: int, error: str, retryable: bool
    ) -> Change:
        def change(record: spb.StoredMessage, now: float) -> spb.StoredMessage | None:
            self._check_attempt(principal, record, message_id, attempt, None)
            return records.fail_attempt(
                record,
                now,
                pb.ATTEMPT_OUTCOME_NACKED,
                error,
                retryable=records.nack_retryable(record, error, retryable),
            )

        return change

    @staticmethod
    def _check_attempt(
        principal: Principal,
        record: spb.StoredMessage,
        message_id: str,
        attempt: int,
        repeatable: int | None,
    ) -> None:
        """Only the destination (or an admin) acks and nacks, and only the current attempt of a
        message being processed; ``repeatable`` is the state in which a repeat of the same
        attempt is answered as before (an ack)."""
        if not principal.is_admin and principal.subject != record.message.destination:
            raise _not_found(message_id)
        if record.attempt == attempt and (
            record.state == records.PROCESSING or record.state == repeatable
        ):
            return
        state = pb.MessageState.Name(record.state)
        raise AttemptNotCurrent(
            f"attempt {attempt} of message {message_id} is not being processed "
            f"(the message is {state}, attempt {record.attempt})",
            details={
                "messageId": message_id,
                "attempt": attempt,
                "currentAttempt": record.attempt,
                "key": keys.message_key(message_id).decode(),
            },
        )

    # -- the replica's own work: claims, the sweeper, pushes ---------------------------------

    async def claim_many(
        self, claims: Sequence[tuple[Entry, str, float]]
    ) -> list[spb.StoredMessage | BaseException | None]:
        """queued -> processing of each (entry, consumer, ack wait), all at once (sharing store
        txns), if the record is still what the index holds and is due. Per claim: the record
        claimed, None when someone else changed it first (or it had expired: then it is marked
        expired), or the store's error."""

        def change_for(consumer: str, ack_wait: float) -> Change:
            def change(record: spb.StoredMessage, now: float) -> spb.StoredMessage | None:
                if records.expired(record, now) and record.state == records.QUEUED:
                    return records.expire(record, now)
                if not records.due(record, now):
                    return None
                return records.claim(record, now, consumer, self.replica, ack_wait)

            return change

        tries = [(Known.of(e), change_for(consumer, wait)) for e, consumer, wait in claims]
        out: list[spb.StoredMessage | BaseException | None] = []
        for (entry, _, _), written in zip(claims, await self._try_many(tries), strict=True):
            if isinstance(written, BaseException):
                out.append(written)
            elif written is None or written.mod_revision == entry.mod_revision:
                out.append(None)  # lost the race, or nothing to claim
            else:
                out.append(written.record if written.record.state == records.PROCESSING else None)
        return out

    async def expire(self, entry: Entry) -> None:
        def change(record: spb.StoredMessage, now: float) -> spb.StoredMessage | None:
            if record.state == records.QUEUED and records.expired(record, now):
                return records.expire(record, now)
            return None

        await self._try(Known.of(entry), change)

    async def time_out(self, entry: Entry) -> None:
        def change(record: spb.StoredMessage, now: float) -> spb.StoredMessage | None:
            return records.time_out(record, now) if records.deadline_passed(record, now) else None

        await self._try(Known.of(entry), change)

    async def no_instance(self, entry: Entry) -> None:
        def change(record: spb.StoredMessage, now: float) -> spb.StoredMessage | None:
            if not records.due(record, now):
                return None
            if records.expired(record, now):
                return records.expire(record, now)
            return records.no_instance(record, now, record.message.destination)

        await self._try(Known.of(entry), change)

    async def settle(
        self, message_id: str, attempt: int, outcome: Change
    ) -> spb.StoredMessage | None:
        """Ends attempt ``attempt`` (a push's result) if it is still the current one; None when
        the record moved on meanwhile (e.g. another replica's sweeper timed it out)."""

        def change(record: spb.StoredMessage, now: float) -> spb.StoredMessage | None:
            if record.state != records.PROCESSING or record.attempt != attempt:
                raise _Lost
            return outcome(record, now)

        try:
            written = await self._update(message_id, change)
        except (_Lost, MessageNotFound):
            return None
        return written.record

    async def delete_final(self, message_id: str, mod_revision: int) -> None:
        """Retention: deletes a final record unless it changed since."""
        key = keys.message_key(message_id)
        await self._store.txn([mod_revision_is(key, mod_revision)], [Delete(key)])

    # -- dead letters --------------------------------------------------------------------------

    async def dead_letters(
        self, principal: Principal, destination: str, limit: int, offset: int
    ) -> pb.DeadLetterList:
        """Up to ``limit`` dead letters from ``offset``, oldest first, and at most
        ``records.ANSWER_BYTES`` of them (at least one): fewer than ``limit`` while ``total``
        says more follow."""
        if not principal.is_admin:
            destination = destination or principal.subject
            principal.require_acts_as(destination)
        listed = await self._store.range(keys.dead_prefix(destination))
        found = [p for p in (keys.parse_dead(kv.key) for kv in listed.kvs) if p is not None]
        found.sort(key=lambda p: (p[1], p[2]))
        page = found[offset : offset + limit]
        out = pb.DeadLetterList(total=len(found), revision=listed.revision)
        size = 0
        for start in range(0, len(page), MAX_TXN_OPS):
            chunk = page[start : start + MAX_TXN_OPS]
            got = await self._store.txn([], [Get(keys.message_key(p[2])) for p in chunk])
            for kv in got.responses:
                if not isinstance(kv, KeyValue):
                    continue
                record = spb.StoredMessage.FromString(kv.value)
                if not record.dead_lettered:
                    continue  # replayed meanwhile
                dead = pb.DeadLetter(
                    message=record.message, status=records.status(record, kv.mod_revision)
                )
                size += dead.ByteSize()
                if out.dead_letters and size > records.ANSWER_BYTES:
                    return out  # a full page: the caller asks again from offset + its length
                out.dead_letters.append(dead)
        return out

    async def replay(self, principal: Principal, message_id: str) -> pb.MessageResponse:
        def change(record: spb.StoredMessage, now: float) -> spb.StoredMessage | None:
            if not principal.is_admin and principal.subject != record.message.destination:
                raise _not_found(message_id)
            if not record.dead_lettered:
                raise Conflict(
                    f"message {message_id} is not in the dead-letter queue "
                    f"(it is {pb.MessageState.Name(record.state)})",
                    details={"messageId": message_id},
                )
            return records.replay(record, now)

        written = await self._update(message_id, change)
        response = pb.MessageResponse(
            message_id=message_id, status=written.record.state, revision=written.mod_revision
        )
        response.queued_at.CopyFrom(written.record.queued_at)
        response.expires_at.CopyFrom(written.record.expires_at)
        return response

    # -- consumer configurations ---------------------------------------------------------------

    async def put_consumer(
        self, principal: Principal, service_name: str, config: pb.ConsumerConfig
    ) -> pb.ConsumerConfigResponse:
        principal.require_acts_as(service_name)
        if config.delivery_mode == dpb.DELIVERY_MODE_UNSPECIFIED:
            raise _invalid("config.deliveryMode", "must be push or pull")
        record = pb.ConsumerConfigResponse(service_name=service_name, config=config)
        record.updated_at.CopyFrom(records.ts(self._clock.now()))
        revision = await self._store.put(
            keys.consumer_key(service_name), record.SerializeToString()
        )
        # The pusher and the dispatcher of this replica follow it before the answer.
        await self._index.wait_for(revision, READ_YOUR_WRITES_TIMEOUT)
        record.revision = revision
        return record

    def get_consumer(self, principal: Principal, service_name: str) -> pb.ConsumerConfigResponse:
        principal.require_acts_as(service_name)
        stored = self._index.config(service_name)
        if stored is not None:
            return stored
        return pb.ConsumerConfigResponse(service_name=service_name, config=default_consumer())

    def consumer_config(self, service_name: str) -> pb.ConsumerConfig:
        stored = self._index.config(service_name)
        return stored.config if stored is not None else default_consumer()

    # -- compare-and-swap ----------------------------------------------------------------------

    async def _update(self, message_id: str, change: Change) -> Known:
        """Writes ``change`` of the record, re-reading after a lost race. The first try is
        against this replica's index (it holds every message that is not final): no store read
        when it is current, the usual case for an ack or nack. When it is stale (the CAS loses,
        or ``change`` refuses what it shows), the stored record decides."""
        key = keys.message_key(message_id)
        kv: KeyValue | None = None
        entry = self._index.get(message_id)
        if entry is not None:
            try:
                written, kv = await self._write(Known.of(entry), change)
            except (LucidError, _Lost):
                written = None  # refused on a view that may be stale: ask the store
            if written is not None:
                return written
        if kv is None:
            kv = await self._store.get(key)
        for _ in range(CAS_ATTEMPTS):
            if kv is None:
                raise _not_found(message_id)
            known = Known.read(kv)
            written, kv = await self._write(known, change)
            if written is not None:
                return written
        raise Conflict(
            f"message {message_id} kept changing; retry", details={"messageId": message_id}
        )

    async def _try(self, known: Known, change: Change) -> Known | None:
        """One compare-and-swap against ``known``; None when the record had changed."""
        written, _ = await self._write(known, change)
        return written

    async def _try_many(
        self, tries: Sequence[tuple[Known, Change]]
    ) -> list[Known | BaseException | None]:
        """``_try`` of each, all submitted at once (a change that raises is that item's
        answer)."""
        out: list[Known | BaseException | None] = [None] * len(tries)
        waiting: list[tuple[int, Known, _Begun]] = []
        for n, (known, change) in enumerate(tries):
            try:
                begun = self._begin(known, change)
            except Exception as exc:
                out[n] = exc
                continue
            if isinstance(begun, Known):
                out[n] = begun
            else:
                waiting.append((n, known, begun))
        results = await asyncio.gather(*(b.future for _, _, b in waiting), return_exceptions=True)
        for (n, known, begun), result in zip(waiting, results, strict=True):
            out[n] = (
                result if isinstance(result, BaseException) else self._end(known, begun, result)[0]
            )
        return out

    async def _update_many(
        self, changes: Sequence[tuple[str, Change]], ended: Callable[[str], None]
    ) -> list[Known | BaseException]:
        """``_update`` of each: first all at once against the index; the ones that lose a race
        or are refused on what the index shows take ``_update``'s way (the store decides).
        ``ended(message id)`` is called as each one ends."""
        tries: list[tuple[Known, Change]] = []
        placed: list[int] = []
        slow: list[int] = []
        for n, (message_id, change) in enumerate(changes):
            entry = self._index.get(message_id)
            if entry is None:
                slow.append(n)
            else:
                placed.append(n)
                tries.append((Known.of(entry), change))
        out: list[Known | BaseException | None] = [None] * len(changes)
        for n, written in zip(placed, await self._try_many(tries), strict=True):
            if written is None or isinstance(written, (LucidError, _Lost)):
                slow.append(n)
            else:
                out[n] = written
                ended(changes[n][0])

        async def one(n: int) -> None:
            try:
                out[n] = await self._update(*changes[n])
            except Exception as exc:
                out[n] = exc
            finally:
                ended(changes[n][0])

        if slow:
            await asyncio.gather(*(one(n) for n in slow))
        done = [w for w in out if w is not None]
        assert len(done) == len(out)  # _update answers or raises
        return done

    async def _write(self, known: Known, change: Change) -> tuple[Known | None, KeyValue | None]:
        """(what is stored now, None) when ``change`` was written or had nothing to write;
        (None, the current record or None if gone) when the record was not ``known`` any more."""
        begun = self._begin(known, change)
        if isinstance(begun, Known):
            return begun, None
        return self._end(known, begun, await begun.future)

    def _begin(self, known: Known, change: Change) -> Known | _Begun:
        """Submits the compare-and-swap of ``change`` (``known`` itself: nothing to write)."""
        record = known.record
        message_id = record.message.message_id
        new = change(record, self._clock.now())
        if new is None:
            return known
        key = keys.message_key(message_id)
        value = new.SerializeToString()
        ops: list[TxnOp] = [Put(key, value)]
        dead = keys.dead_key(record.message.destination, known.create_revision, message_id)
        if new.dead_lettered and not record.dead_lettered:
            ops.append(Put(dead, b""))
        elif record.dead_lettered and not new.dead_lettered:
            ops.append(Delete(dead))
        guard: Sequence[Compare] = [mod_revision_is(key, known.mod_revision)]
        return _Begun(new, key, value, self.writes.submit(guard, ops, [Get(key)]))

    def _end(
        self, known: Known, begun: _Begun, result: TxnResult
    ) -> tuple[Known | None, KeyValue | None]:
        if result.succeeded:
            kv = KeyValue(begun.key, begun.value, known.create_revision, result.revision, 0)
            self._index.note(kv, begun.record)
            return Known(begun.record, result.revision, known.create_revision), None
        current = result.responses[0] if result.responses else None
        if isinstance(current, KeyValue):
            self._index.note(current)
            return None, current
        return None, None


@dataclass(slots=True, eq=False)  # made several times per message: no frozen-init cost
class PendingSend:
    """A submitted send: its record, the record's bytes, the create-only txn's future, and the
    consumer slot it was claimed for (None: written queued)."""

    record: spb.StoredMessage
    value: bytes
    future: asyncio.Future[TxnResult]
    slot: DirectSlot | None = None


@dataclass(slots=True, eq=False)
class DirectSlot:
    """A free slot of a consumer on this replica, reserved for a message being sent:
    ``give(record)`` once it is written claimed for ``consumer`` (None: not written, the slot
    is free again)."""

    consumer: str  # the claim's consumer label
    ack_wait: float  # seconds
    give: Callable[[spb.StoredMessage | None], None]


@dataclass(slots=True, eq=False)  # made several times per message: no frozen-init cost
class _Begun:
    """A submitted compare-and-swap: the new record, its key and bytes, the txn's future."""

    record: spb.StoredMessage
    key: bytes
    value: bytes
    future: asyncio.Future[TxnResult]


class _Lost(Exception):
    """The attempt being settled is no longer the message's current one."""
