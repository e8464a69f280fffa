"""Time-driven semantics on a fake clock: TTL expiry, redelivery after a missed ack deadline,
nack -> backoff -> retry -> dead letter after maxAttempts (every attempt's error kept), replay,
and retention of final messages."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.clock import FakeClock

from .conftest import Queue, message, open_queue, rpc_error, until, with_messaging


@pytest.fixture
async def fq() -> AsyncIterator[Queue]:
    async for queue in open_queue(with_messaging(retention=600), FakeClock(now=1_800_000_000.0)):
        yield queue


def advance(q: Queue, seconds: float) -> None:
    assert isinstance(q.clock, FakeClock)
    q.clock.advance(seconds)


async def _configure(q: Queue, **config: int) -> None:
    await q.stub.PutConsumer(
        pb.PutConsumerRequest(service_name="tron-node", config=pb.ConsumerConfig(**config)),
        metadata=q.md("tron-node"),
    )


async def test_an_expired_message_is_never_delivered(fq: Queue) -> None:
    soon, later = message(ttl=5), message(ttl=60)
    await fq.send(soon)
    await fq.send(later)
    advance(fq, 5)
    # The pull finds the expired one first: it is marked expired, never handed out.
    [delivery] = await fq.pull()
    assert delivery.message.message_id == later.message_id
    status = await until(lambda: fq.status_is(soon.message_id, pb.MESSAGE_STATE_EXPIRED))
    assert status.attempts == 0 and not status.dead_lettered


async def test_the_sweeper_expires_queued_messages_nobody_pulls(fq: Queue) -> None:
    msg = message(ttl=1)
    await fq.send(msg)
    advance(fq, 1.05)
    await until(lambda: fq.status_is(msg.message_id, pb.MESSAGE_STATE_EXPIRED))
    assert await fq.pull() == []


async def test_a_missed_ack_deadline_redelivers_with_attempts_counted(fq: Queue) -> None:
    await _configure(fq, ack_wait_ms=1000)
    msg = message(retryPolicy={"initialDelay": 500})
    await fq.send(msg)
    [first] = await fq.pull()
    assert first.attempt == 1
    assert first.ack_deadline.ToNanoseconds() == int((fq.clock.now() + 1) * 1e9)
    advance(fq, 1.0)
    status = await until(lambda: fq.status_is(msg.message_id, pb.MESSAGE_STATE_QUEUED))
    assert status.attempts == 1
    assert [a.outcome for a in status.history] == [pb.ATTEMPT_OUTCOME_TIMED_OUT]
    assert "no ack" in status.error
    assert await fq.pull() == []  # backing off: 500 ms
    advance(fq, 0.5)
    [second] = await fq.pull()
    assert second.attempt == 2
    # The first attempt is over: its ack is refused (409), the current one is accepted.
    code, reason, _ = await rpc_error(fq.ack(first))
    assert (code, reason) == (grpc.StatusCode.ABORTED, "LUCID_ERR_1905")
    done = await fq.ack(second)
    assert done.status == pb.MESSAGE_STATE_DELIVERED and done.attempts == 2
    outcomes = [a.outcome for a in done.history]
    assert outcomes == [pb.ATTEMPT_OUTCOME_TIMED_OUT, pb.ATTEMPT_OUTCOME_ACKED]


async def test_nacks_back_off_then_dead_letter_with_every_error_then_replay(fq: Queue) -> None:
    policy = {"maxAttempts": 3, "initialDelay": 1000, "backoffMultiplier": 2.0, "maxDelay": 1500}
    msg = message(retryPolicy=policy)
    await fq.send(msg)
    waits = []
    for attempt in (1, 2, 3):
        [delivery] = await fq.pull()
        assert delivery.attempt == attempt
        status = await fq.nack(delivery, f"error {attempt}")
        if attempt < 3:
            assert status.status == pb.MESSAGE_STATE_QUEUED
            wait = status.next_attempt_at.ToNanoseconds() / 1e9 - fq.clock.now()
            waits.append(round(wait, 3))
            assert await fq.pull() == []
            advance(fq, wait)
    assert waits == [1.0, 1.5]  # 1000 ms, then min(2000, maxDelay 1500)
    assert status.status == pb.MESSAGE_STATE_FAILED and status.dead_lettered
    assert [(a.number, a.outcome, a.error) for a in status.history] == [
        (n, pb.ATTEMPT_OUTCOME_NACKED, f"error {n}") for n in (1, 2, 3)
    ]
    assert all(a.HasField("started_at") and a.HasField("ended_at") for a in status.history)
    dead = await fq.stub.ListDeadLetters(
        pb.ListDeadLettersRequest(destination="tron-node"), metadata=fq.md("tron-node")
    )
    assert dead.total == 1 and dead.dead_letters[0].message.message_id == msg.message_id
    assert len(dead.dead_letters[0].status.history) == 3
    everyone = await fq.stub.ListDeadLetters(pb.ListDeadLettersRequest(), metadata=fq.admin)
    assert everyone.total == 1

    replayed = await fq.stub.ReplayDeadLetter(
        pb.ReplayDeadLetterRequest(message_id=msg.message_id), metadata=fq.md("tron-node")
    )
    assert replayed.status == pb.MESSAGE_STATE_QUEUED
    assert replayed.expires_at.ToNanoseconds() > replayed.queued_at.ToNanoseconds()
    [again] = await fq.pull()
    assert again.attempt == 1
    done = await fq.ack(again)
    assert done.status == pb.MESSAGE_STATE_DELIVERED and not done.dead_lettered
    assert len(done.history) == 4 and done.history[-1].outcome == pb.ATTEMPT_OUTCOME_ACKED
    empty = await fq.stub.ListDeadLetters(
        pb.ListDeadLettersRequest(destination="tron-node"), metadata=fq.md("tron-node")
    )
    assert empty.total == 0
    # Replaying what is not a dead letter: 409.
    code, _, _ = await rpc_error(
        fq.stub.ReplayDeadLetter(
            pb.ReplayDeadLetterRequest(message_id=msg.message_id), metadata=fq.admin
        )
    )
    assert code == grpc.StatusCode.ABORTED


async def test_a_final_nack_and_unlisted_errors_fail_at_once(fq: Queue) -> None:
    plain, listed = message(), message(retryPolicy={"retryableErrors": ["timeout"]})
    await fq.send(plain)
    await fq.send(listed)
    first, second = await fq.pull()
    status = await fq.nack(first, "poison", retryable=False)
    assert status.status == pb.MESSAGE_STATE_FAILED and status.dead_lettered
    status = await fq.nack(second, "bad input")  # not a listed retryable error
    assert status.status == pb.MESSAGE_STATE_FAILED and status.attempts == 1


async def test_a_listed_error_is_retried(fq: Queue) -> None:
    msg = message(retryPolicy={"retryableErrors": ["timeout"]})
    await fq.send(msg)
    [delivery] = await fq.pull()
    status = await fq.nack(delivery, "timeout talking to the node")
    assert status.status == pb.MESSAGE_STATE_QUEUED


async def test_retention_deletes_final_messages_but_keeps_dead_letters(fq: Queue) -> None:
    done, dead = message(), message()
    await fq.send(done)
    await fq.send(dead)
    first, second = await fq.pull()
    await fq.ack(first)
    await fq.nack(second, "poison", retryable=False)
    advance(fq, 599)
    assert (await fq.status(done.message_id)).status == pb.MESSAGE_STATE_DELIVERED
    advance(fq, 2)

    async def gone() -> bool:
        code, _, _ = await rpc_error(fq.status(done.message_id))
        return code == grpc.StatusCode.NOT_FOUND

    await until(gone)
    assert (await fq.status(dead.message_id)).status == pb.MESSAGE_STATE_FAILED


async def test_a_ttl_passing_during_the_last_attempt_expires_instead_of_dead_lettering(
    fq: Queue,
) -> None:
    # Regression: the last attempt was checked before expiry, so these were dead-lettered.
    await _configure(fq, ack_wait_ms=10_000)
    timed_out, nacked = (message(ttl=5, retryPolicy={"maxAttempts": 1}) for _ in range(2))
    await fq.send(timed_out)
    await fq.send(nacked)
    first, second = await fq.pull()
    advance(fq, 6)
    status = await fq.nack(second, "too late")
    assert status.status == pb.MESSAGE_STATE_EXPIRED and not status.dead_lettered
    advance(fq, 4)  # the first one's ack deadline: the sweeper times it out
    status = await until(lambda: fq.status_is(first.message.message_id, pb.MESSAGE_STATE_EXPIRED))
    assert not status.dead_lettered
    assert [a.outcome for a in status.history] == [pb.ATTEMPT_OUTCOME_TIMED_OUT]
    dead = await fq.stub.ListDeadLetters(pb.ListDeadLettersRequest(), metadata=fq.admin)
    assert dead.total == 0
