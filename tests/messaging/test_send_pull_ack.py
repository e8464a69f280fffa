"""The basic flow over gRPC: send (202 once stored), status, pull, ack; idempotent re-send and
409; priority order and FIFO within a priority."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.api.lucid.messaging.v1 import queue_storage_pb2 as spb
from lucid_cp.messaging import keys, records
from lucid_cp.store.base import Put, TxnResult, mod_revision_is
from lucid_cp.store.group_commit import GroupCommit

from .conftest import Queue, message, rpc_error


async def test_send_pull_ack(q: Queue) -> None:
    msg = message()
    sent = await q.send(msg)
    assert sent.message_id == msg.message_id and sent.status == pb.MESSAGE_STATE_QUEUED
    assert sent.revision > 0
    ttl = sent.expires_at.ToNanoseconds() - sent.queued_at.ToNanoseconds()
    assert ttl == 3600 * 10**9
    status = await q.status(msg.message_id)
    assert status.status == pb.MESSAGE_STATE_QUEUED and status.attempts == 0
    [delivery] = await q.pull()
    assert delivery.attempt == 1 and delivery.message.payload == msg.payload
    assert delivery.message.priority == pb.PRIORITY_NORMAL
    status = await q.status(msg.message_id)
    assert status.status == pb.MESSAGE_STATE_PROCESSING and status.attempts == 1
    acked = await q.ack(delivery)
    assert acked.status == pb.MESSAGE_STATE_DELIVERED
    assert acked.delivered_to.startswith("pull ") and acked.processing_time >= 0
    assert [a.outcome for a in acked.history] == [pb.ATTEMPT_OUTCOME_ACKED]
    # Acking again is answered the same; nothing more to pull.
    again = await q.ack(delivery)
    assert again.status == pb.MESSAGE_STATE_DELIVERED and again.revision == acked.revision
    assert await q.pull() == []


async def test_resend_is_idempotent_and_other_content_conflicts(q: Queue) -> None:
    msg = message()
    first = await q.send(msg)
    second = await q.send(msg)
    assert second == first
    other = pb.InterServiceMessage()
    other.CopyFrom(msg)
    other.payload["amount"] = 6
    code, reason, _ = await rpc_error(q.send(other))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "LUCID_ERR_1908")
    [delivery] = await q.pull()
    assert delivery.message.payload["amount"] == 5


async def test_priority_order_and_fifo_within_a_priority(q: Queue) -> None:
    sent = []
    for priority in ("PRIORITY_LOW", "PRIORITY_NORMAL", "PRIORITY_CRITICAL", "PRIORITY_HIGH"):
        for n in range(3):
            msg = message(priority=priority, payload={"p": priority, "n": n})
            await q.send(msg)
            sent.append(msg)
    got = await q.pull(max_messages=100)
    order = [(d.message.payload["p"], int(d.message.payload["n"])) for d in got]
    expected = [
        (p, n)
        for p in ("PRIORITY_CRITICAL", "PRIORITY_HIGH", "PRIORITY_NORMAL", "PRIORITY_LOW")
        for n in range(3)
    ]
    assert order == expected
    # One at a time too: pulls of one follow the same order.
    for d in got:
        await q.nack(d, "later")


async def test_a_resend_with_the_defaults_spelled_out_is_the_same_content(q: Queue) -> None:
    # Regression: the digest was taken before the defaults were applied: this was a 409.
    msg = message()
    first = await q.send(msg)
    spelled = pb.InterServiceMessage()
    spelled.CopyFrom(msg)
    spelled.retry_policy.max_attempts = 3
    assert await q.send(spelled) == first
    everything = pb.InterServiceMessage()
    everything.CopyFrom(msg)
    everything.priority = pb.PRIORITY_NORMAL
    everything.ttl = 3600
    everything.retry_policy.CopyFrom(
        pb.RetryPolicy(max_attempts=3, initial_delay=1000, max_delay=10000, backoff_multiplier=2)
    )
    assert await q.send(everything) == first
    other = pb.InterServiceMessage()
    other.CopyFrom(spelled)
    other.retry_policy.max_attempts = 4
    code, reason, _ = await rpc_error(q.send(other))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "LUCID_ERR_1908")


class _AnotherReplicaWins:
    """The queue's store, where another replica claims ``message_id`` just before this one."""

    def __init__(self, store: Any, message_id: str) -> None:
        self._store = store
        self._key = keys.message_key(message_id)
        self.won = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def txn(self, compares: Any, success: Any, failure: Any = ()) -> TxnResult:
        if not self.won and any(isinstance(op, Put) and op.key == self._key for op in success):
            self.won = True
            kv = await self._store.get(self._key)
            record = spb.StoredMessage.FromString(kv.value)
            theirs = records.claim(
                record, records.seconds(record.updated_at), "pull x on b", "b", 30
            )
            await self._store.txn(
                [mod_revision_is(self._key, kv.mod_revision)],
                [Put(self._key, theirs.SerializeToString())],
            )
        result: TxnResult = await self._store.txn(compares, success, failure)
        return result


async def test_a_long_poll_that_loses_every_claim_looks_again_at_once(q: Queue) -> None:
    # Regression: it waited for a wakeup that never came (a claim wakes nobody), here for the
    # whole waitMs, while the next message was ready.
    first, second = message(), message()
    await q.send(first)
    await q.send(second)
    queue = q.system.queue
    rival = queue._store = _AnotherReplicaWins(queue._store, first.message_id)
    queue.writes = GroupCommit(rival)
    async with asyncio.timeout(5):
        [delivery] = await q.pull(max_messages=1, wait_ms=20_000)
    assert rival.won and delivery.message.message_id == second.message_id
