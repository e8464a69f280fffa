"""kill -9 of the control plane while messages and events flow (issue 10, "Faults"), with the real
`lucid-cp serve` as a child process and every check made over gRPC.

While senders send messages back to back, a Consume consumer acks most deliveries (and holds
some unacked), publishers publish events back to back and two subscribers (one pulling, one
streaming) ack cursors, the server gets SIGKILL. Then, on sqlite and on etcd, the server restarts
on the same store; with two replicas on one etcd, the survivor carries on. Afterwards:

* every message that got a 202 is delivered, with a status that tells the same story as the
  consumers saw it: its last attempt is one a consumer acked, every earlier one timed out, none
  failed or dead-lettered, and nothing was delivered after the acked attempt (delivered stays
  delivered); no attempt of a message was ever handed out twice; a delivery held unacked at the
  kill comes back with a later attempt after its ack deadline;
* a send or publish that was in flight at the kill, sent again with the same content, is 202;
* each subscription's durable cursor lies between the last ack the server answered and the last
  one sent; the subscriber resumes exactly after it (no gap, nothing at or before it again: only
  the unacknowledged tail comes twice), and every event that got a 202 reaches it, with the
  event id its publisher was answered for that sequence.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest
from etcd_server import EtcdProcess

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb

from .crash_load import (
    DESTINATION,
    RPC_TIMEOUT,
    Client,
    Crew,
    Deliveries,
    Errors,
    Publisher,
    Sender,
    Server,
    Subscriber,
    cancel,
    confirm_delivered,
    md,
    poll,
    put_consumer,
    statuses,
    stored_cursor,
    subscribe,
)

ACK_WAIT_MS = 1000
DRAIN = 15.0  # seconds for everything to arrive after the crash


def hold_every(n: int) -> Callable[[pb.Delivery], bool]:
    """Holds (never acks) the first attempt of every n-th message."""
    counter = itertools.count()
    return lambda d: d.attempt == 1 and next(counter) % n == 0


@pytest.fixture
async def crew(tmp_path: Path) -> AsyncIterator[Crew]:
    """The test's servers, tasks and consumers, ended at the end; the servers' output is
    printed (pytest shows it when the test failed)."""
    started = Crew(tmp_path)
    try:
        yield started
    finally:
        await started.end()
        print(started.report())


async def until_delivered(client: Client, ids: Iterable[str]) -> dict[str, pb.MessageStatus]:
    """The statuses of ``ids`` once every one is delivered (or failed, expired: final), read
    from the store again and again until then."""
    final: dict[str, pb.MessageStatus] = {}
    pending = set(ids)
    deadline = time.monotonic() + DRAIN
    while pending:
        for message_id, status in (await statuses(client, pending)).items():
            if status.status in (
                pb.MESSAGE_STATE_DELIVERED,
                pb.MESSAGE_STATE_FAILED,
                pb.MESSAGE_STATE_EXPIRED,
            ):
                final[message_id] = status
                pending.discard(message_id)
        if pending:
            assert time.monotonic() < deadline, f"{len(pending)} messages never delivered"
            await asyncio.sleep(0.1)
    return final


def check_messages(
    final: dict[str, pb.MessageStatus], deliveries: Deliveries, sent: set[str]
) -> None:
    attempts: dict[str, list[int]] = {}
    for message_id, attempt in deliveries.got:
        assert message_id in sent, f"delivered {message_id}, which nobody sent"
        attempts.setdefault(message_id, []).append(attempt)
    for message_id, status in final.items():
        assert status.status == pb.MESSAGE_STATE_DELIVERED, (message_id, status)
        assert not status.dead_lettered
        # The attempt that made it delivered is one a consumer acked, and the last handed out.
        assert status.attempts in deliveries.acked.get(message_id, set()), (message_id, status)
        assert max(attempts[message_id]) == status.attempts, (attempts[message_id], status)
        history = [(a.number, a.outcome) for a in status.history]
        expected = [(n, pb.ATTEMPT_OUTCOME_TIMED_OUT) for n in range(1, status.attempts)]
        assert history == [*expected, (status.attempts, pb.ATTEMPT_OUTCOME_ACKED)], status


def check_redelivered(
    held: dict[str, int],
    consumer: str,
    deliveries: Deliveries,
    final: dict[str, pb.MessageStatus],
) -> None:
    """Each message ``held`` unacked at the kill (id -> attempt) timed out no sooner than its
    ack deadline and came back to ``consumer`` with a later attempt."""
    for message_id, attempt in held.items():
        again = [n for (m, n), c in deliveries.got.items() if m == message_id and c == consumer]
        assert again and min(again) > attempt, (message_id, attempt, again)
        missed = final[message_id].history[attempt - 1]
        assert missed.outcome == pb.ATTEMPT_OUTCOME_TIMED_OUT
        waited = missed.ended_at.ToNanoseconds() - missed.started_at.ToNanoseconds()
        assert waited >= ACK_WAIT_MS * 1_000_000, (message_id, waited)


def check_resumed(sub: Subscriber, start: int, cursor: int, target: int) -> None:
    """``sub`` read ``runs[0]`` from ``start`` (its cursor then) until the crash, resumed from
    ``cursor`` (stored) in ``runs[1]`` and got up to ``target``."""
    before, after = sub.runs
    assert before == list(range(start + 1, start + 1 + len(before))), "a gap before the crash"
    assert cursor <= before[-1]
    assert after[0] == cursor + 1, "the resumed read does not start right after the ack"
    assert after == list(range(cursor + 1, cursor + 1 + len(after))), "a gap after the restart"
    assert after[-1] >= target


def check_events(publishers: Iterable[Publisher], *subscribers: Subscriber) -> None:
    for publisher in publishers:
        for seq, event_id in publisher.by_sequence().items():
            for sub in subscribers:
                assert sub.ids.get(seq) == event_id, (seq, event_id, sub.ids.get(seq))


def snapshot(sub: Subscriber) -> tuple[int, int]:
    return sub.confirmed, sub.acking


async def crash_and_restart(crew: Crew, server: Server) -> None:
    errors = Errors()
    sender, publisher, deliveries = Sender(errors), Publisher(errors), Deliveries()
    confirmed: set[str] = set()
    client = Client.of(await server.start())
    try:
        await put_consumer(client, ACK_WAIT_MS)
        subs = [await subscribe(client), await subscribe(client)]
        puller = Subscriber(subs[0].subscription_id, "pull", errors)
        streamer = Subscriber(subs[1].subscription_id, "stream", errors)
        consumer = crew.consumer(client, "before", deliveries, errors, hold=hold_every(4))
        workers = [
            *(crew.task(sender.run(client)) for _ in range(2)),
            *(crew.task(publisher.run(client)) for _ in range(2)),
            crew.task(puller.run(client)),
            crew.task(streamer.run(client)),
            consumer.task,
        ]
        checker = crew.task(confirm_delivered(client, deliveries, confirmed))
        await poll(
            lambda: (
                len(sender.accepted) >= 300
                and len(consumer.held) >= 5
                and len(confirmed) >= 20
                and len(publisher.accepted) >= 200
                and puller.confirmed > 0
                and streamer.confirmed > 0
            ),
            15,
            "messages and events to flow",
        )
        server.kill()
        async with asyncio.timeout(10):  # every worker ends on its own: the server is gone
            await asyncio.gather(*workers)
        await cancel(checker)
        errors.assert_only_from(server)
        crash_errors = len(errors.seen)
        held, delivered_before = dict(consumer.held), set(confirmed)
        acks = {id(s): snapshot(s) for s in (puller, streamer)}
        await client.close()

        client = Client.of(await server.start())
        config = await client.messages.GetConsumer(
            pb.GetConsumerRequest(service_name=DESTINATION),
            metadata=md(DESTINATION),
            timeout=RPC_TIMEOUT,
        )
        assert config.config.ack_wait_ms == ACK_WAIT_MS  # the next consumer's deadline
        # The sends and publishes in flight at the kill, retried: 202 whether they were stored.
        await sender.retry_unanswered(client)
        await publisher.retry_unanswered(client)
        cursors = {}
        for sub in (puller, streamer):
            cursors[id(sub)] = cursor = await stored_cursor(client, sub.subscription_id)
            last_answered, last_sent = acks[id(sub)]
            assert last_answered <= cursor <= last_sent, (sub.mode, acks[id(sub)], cursor)
        after = crew.consumer(client, "after", deliveries, errors)
        readers = [crew.task(s.run(client)) for s in (puller, streamer)]
        # The flow goes on: more messages and events after the restart.
        await sender.run(client, limit=len(sender.accepted) + 100)
        await publisher.run(client, limit=len(publisher.accepted) + 100)
        target = max(publisher.accepted.values())
        await poll(
            lambda: puller.last >= target and streamer.last >= target,
            DRAIN,
            "the subscribers to catch up",
        )
        final = await until_delivered(client, sender.accepted)
        await cancel(*readers)
        await after.close()
        assert errors.seen[crash_errors:] == []  # none after the restart
        assert set(sender.sent) == set(sender.accepted)
        check_messages(final, deliveries, set(sender.accepted))
        assert not delivered_before & deliveries.ids("after")  # delivered stays delivered
        check_redelivered(held, "after", deliveries, final)
        dead = await client.messages.ListDeadLetters(
            pb.ListDeadLettersRequest(destination=DESTINATION),
            metadata=md(DESTINATION),
            timeout=RPC_TIMEOUT,
        )
        assert dead.total == 0
        assert set(publisher.sent) == set(publisher.accepted)
        for sub, created in zip((puller, streamer), subs, strict=True):
            check_resumed(sub, created.cursor, cursors[id(sub)], target)
        check_events([publisher], puller, streamer)
    finally:
        await client.close()


async def test_kill_9_on_sqlite_loses_nothing(crew: Crew) -> None:
    await crash_and_restart(crew, crew.server("data"))


@pytest.mark.etcd
async def test_kill_9_on_etcd_loses_nothing(crew: Crew, fresh_etcd: EtcdProcess) -> None:
    await crash_and_restart(crew, crew.server("data", fresh_etcd.url))


@pytest.mark.etcd
async def test_one_of_two_replicas_killed_the_other_redelivers_and_flows_on(
    crew: Crew, fresh_etcd: EtcdProcess
) -> None:
    a, b = crew.server("a", fresh_etcd.url), crew.server("b", fresh_etcd.url)
    await asyncio.gather(a.start(), b.start())
    ca, cb = Client.of(a.target), Client.of(b.target)
    errors_a, errors_b = Errors(), Errors()
    senders = [Sender(errors_a), Sender(errors_b)]
    publishers = [Publisher(errors_a), Publisher(errors_b)]
    deliveries, confirmed = Deliveries(), set[str]()
    try:
        await put_consumer(ca, ACK_WAIT_MS)
        await put_consumer(cb, ACK_WAIT_MS)
        created = [await subscribe(ca), await subscribe(cb)]
        on_a = Subscriber(created[0].subscription_id, "pull", errors_a)
        on_b = Subscriber(created[1].subscription_id, "stream", errors_b)
        consumer_a = crew.consumer(ca, "a", deliveries, errors_a, hold=hold_every(3))
        consumer_b = crew.consumer(cb, "b", deliveries, errors_b)
        workers_a = [
            crew.task(senders[0].run(ca)),
            crew.task(publishers[0].run(ca)),
            crew.task(on_a.run(ca)),
            consumer_a.task,
        ]
        workers_b = [
            crew.task(senders[1].run(cb)),
            crew.task(publishers[1].run(cb)),
            crew.task(on_b.run(cb)),
            crew.task(confirm_delivered(cb, deliveries, confirmed)),
        ]
        await poll(
            lambda: (
                all(len(s.accepted) >= 150 for s in senders)
                and all(len(p.accepted) >= 100 for p in publishers)
                and len(consumer_a.held) >= 3
                and consumer_b.count >= 30
                and len(confirmed) >= 20
                and on_a.confirmed > 0
                and on_b.confirmed > 0
            ),
            15,
            "messages and events to flow through both replicas",
        )
        a.kill()
        async with asyncio.timeout(10):  # A's workers end on their own: A is gone
            await asyncio.gather(*workers_a)
        errors_a.assert_only_from(a)
        held = dict(consumer_a.held)
        at_kill = len(senders[1].accepted), len(publishers[1].accepted), on_b.last
        last_answered, last_sent = snapshot(on_a)

        # B goes on; A's subscriber reconnects to B and resumes from its durable cursor.
        cursor = await stored_cursor(cb, on_a.subscription_id)
        assert last_answered <= cursor <= last_sent, (last_answered, last_sent, cursor)
        on_a.errors = errors_b
        resumed = crew.task(on_a.run(cb))
        await poll(
            lambda: (
                len(senders[1].accepted) >= at_kill[0] + 100
                and len(publishers[1].accepted) >= at_kill[1] + 100
            ),
            DRAIN,
            "B to accept more after the kill",
        )
        await cancel(*workers_b[:2])  # B's sender and publisher
        for sender in senders:  # what was in flight (on A at the kill, on B now), retried on B
            sender.errors = errors_b
            await sender.retry_unanswered(cb)
        for publisher in publishers:
            publisher.errors = errors_b
            await publisher.retry_unanswered(cb)
        target = max(seq for p in publishers for seq in p.accepted.values())
        await poll(
            lambda: on_a.last >= target and on_b.last >= target,
            DRAIN,
            "both subscribers to catch up on B",
        )
        accepted = senders[0].accepted | senders[1].accepted
        final = await until_delivered(cb, accepted)
        await cancel(resumed, *workers_b[2:])
        await consumer_b.close()
        assert errors_b.seen == []
        check_messages(final, deliveries, set(senders[0].sent) | set(senders[1].sent))
        assert all(set(s.sent) == set(s.accepted) for s in senders)
        # A's deliveries in flight at the kill: B redelivered them after their ack deadline.
        check_redelivered(held, "b", deliveries, final)
        # Events flowed on B throughout: its subscriber read every event, the ones after the
        # kill included, without a gap; A's resumed after its last ack.
        [through] = on_b.runs
        assert through == list(range(created[1].cursor + 1, through[-1] + 1))
        assert through[-1] >= target > at_kill[2]
        check_resumed(on_a, created[0].cursor, cursor, target)
        check_events(publishers, on_a, on_b)
    finally:
        await ca.close()
        await cb.close()
