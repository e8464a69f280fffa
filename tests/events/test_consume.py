"""Pull, ack and the gRPC stream: from the stored cursor, nothing lost and nothing skipped across
reconnects; non-matching events move the cursor; long polls wake on a new event; an ack never
moves back nor beyond the head; a cursor behind retention is an explicit gap."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb

from .conftest import (
    GW,
    Events,
    event,
    open_events,
    rpc_error,
    subscription,
    until,
    with_events,
)


async def test_pull_returns_matching_events_after_the_cursor(events: Events) -> None:
    sub = await events.subscribe(subscription("session.*", batchSize=2))
    await events.publish(event("session.created", data={"i": 1}))
    await events.publish(event("payment.settled"))
    await events.publish(event("session.user.created"))
    await events.publish(event("session.deleted", data={"i": 2}))
    await events.publish(event("session.renewed", data={"i": 3}))
    first = await events.pull(sub.subscription_id)  # batchSize is the default maximum
    assert [e.data["i"] for e in first.events] == [1, 2]
    assert first.cursor == 4 and first.more
    # Not acked: the same batch again.
    assert (await events.pull(sub.subscription_id)).cursor == 4
    await events.ack(sub.subscription_id, first.cursor)
    rest = await events.pull(sub.subscription_id, max_events=10)
    assert [e.data["i"] for e in rest.events] == [3]
    assert rest.cursor == 5 and not rest.more
    await events.ack(sub.subscription_id, rest.cursor)
    empty = await events.pull(sub.subscription_id)
    assert empty.events == [] and empty.cursor == 5 and not empty.more


async def test_non_matching_events_move_the_cursor_without_being_sent(events: Events) -> None:
    sub = await events.subscribe(subscription("session.*"))
    for _ in range(3):
        await events.publish(event("payment.settled"))
    batch = await events.pull(sub.subscription_id)
    assert batch.events == [] and batch.cursor == 3 and not batch.more


async def test_ack_never_moves_back_nor_beyond_the_head(events: Events) -> None:
    sub = await events.subscribe(subscription())
    for _ in range(3):
        await events.publish(event())
    acked = await events.ack(sub.subscription_id, 2)
    assert acked.cursor == 2
    back = await events.ack(sub.subscription_id, 1)
    assert back.cursor == 2 and back.revision == acked.revision
    code, reason, violations, meta = await rpc_error(events.ack(sub.subscription_id, 4))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "LUCID_ERR_1302")
    assert [f for f, _ in violations] == ["cursor"] and meta["head"] == "3"
    read = await events.stub.GetSubscription(
        pb.GetSubscriptionRequest(subscription_id=sub.subscription_id), metadata=GW
    )
    assert read.cursor == 2 and read.head == 3


async def test_long_poll_wakes_on_the_first_matching_event(
    events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The synchronisation point: the cursors the poll waits beyond (the reader's wait_beyond).
    reader = events.system.reader
    wait_beyond = reader.wait_beyond
    waited: list[int] = []

    async def recording(sequence: int) -> None:
        waited.append(sequence)
        await wait_beyond(sequence)

    monkeypatch.setattr(reader, "wait_beyond", recording)
    sub = await events.subscribe(subscription("session.*"))
    poll = asyncio.create_task(events.pull(sub.subscription_id, wait_ms=5000))
    await until(lambda: waited == [0], what="the poll waiting beyond cursor 0")
    assert not poll.done()
    await events.publish(event("payment.settled"))  # not matching: keeps waiting
    # It read the event, found nothing matching, and waits again, now beyond it.
    await until(lambda: waited == [0, 1], what="the poll waiting beyond cursor 1")
    assert not poll.done()
    await events.publish(event("session.created", data={"i": 7}))
    batch = await asyncio.wait_for(poll, 5)
    assert [e.data["i"] for e in batch.events] == [7] and batch.cursor == 2


async def test_long_poll_times_out_empty(events: Events) -> None:
    sub = await events.subscribe(subscription())
    batch = await events.pull(sub.subscription_id, wait_ms=50)
    assert batch.events == [] and batch.cursor == sub.cursor


async def read_n(call: grpc.aio.UnaryStreamCall, n: int) -> list[pb.ServiceEvent]:  # type: ignore[type-arg]
    out = []
    for _ in range(n):
        out.append(await asyncio.wait_for(call.read(), 5))
    return out


async def test_stream_from_the_cursor_then_live_events(events: Events) -> None:
    sub = await events.subscribe(subscription("session.*", fromBeginning=True))
    for i in range(3):
        await events.publish(event("session.created", data={"i": i}))
    await events.ack(sub.subscription_id, 1)
    call = events.stub.StreamEvents(
        pb.StreamEventsRequest(subscription_id=sub.subscription_id), metadata=GW
    )
    backlog = await read_n(call, 2)
    assert [e.sequence for e in backlog] == [2, 3]
    await events.publish(event("payment.settled"))
    await events.publish(event("session.created", data={"i": 9}))
    [live] = await read_n(call, 1)
    assert live.sequence == 5 and live.data["i"] == 9
    call.cancel()


async def test_stream_resumes_after_a_reconnect_exactly_after_the_ack(events: Events) -> None:
    """Nothing lost, nothing skipped: each connection starts exactly after the last ack (the
    unacknowledged tail of the one before is delivered again first) and is contiguous."""
    sub = await events.subscribe(subscription("session.*"))
    acked = published = 0
    for _ in range(4):
        for i in range(published, published + 10):
            await events.publish(event("session.created", data={"i": i}))
        published += 10
        call = events.stub.StreamEvents(
            pb.StreamEventsRequest(subscription_id=sub.subscription_id), metadata=GW
        )
        got = await read_n(call, published - acked)
        assert [int(e.data["i"]) for e in got] == list(range(acked, published))
        call.cancel()  # the connection drops after processing 7 of them
        acked = got[6].sequence
        await events.ack(sub.subscription_id, acked)


async def test_pull_resume_after_reconnect_loses_and_skips_nothing(events: Events) -> None:
    sub = await events.subscribe(subscription("session.*", batchSize=4))
    for i in range(10):
        await events.publish(event("session.created", data={"i": i}))
    got: list[int] = []
    while True:
        # A fresh channel each time: the cursor is the subscription's, not the connection's.
        async with grpc.aio.insecure_channel(events.plane.grpc_target) as channel:
            from lucid_cp.api.lucid.messaging.v1 import events_pb2_grpc

            stub = events_pb2_grpc.EventServiceStub(channel)
            batch = await stub.PullEvents(
                pb.PullEventsRequest(subscription_id=sub.subscription_id), metadata=GW
            )
            if not batch.events:
                break
            got += [int(e.data["i"]) for e in batch.events]
            await stub.AckEvents(
                pb.AckEventsRequest(subscription_id=sub.subscription_id, cursor=batch.cursor),
                metadata=GW,
            )
    assert got == list(range(10))


async def test_a_cursor_behind_retention_is_a_gap_with_the_lost_count() -> None:
    async for ev in open_events(with_events(retention_count=5, retention_interval=3600)):
        sub = await ev.subscribe(subscription("session.*", fromBeginning=True))
        for i in range(12):
            await ev.publish(event("session.created", data={"i": i}))
        assert await ev.system.sweeper.sweep() == 7  # keeps the newest 5: 8..12
        code, reason, _, meta = await rpc_error(ev.pull(sub.subscription_id))
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "LUCID_ERR_1302")
        assert meta["lost"] == "7" and meta["resumeCursor"] == "7"
        stream = ev.stub.StreamEvents(
            pb.StreamEventsRequest(subscription_id=sub.subscription_id), metadata=GW
        )
        try:
            await stream.read()
            raise AssertionError("the stream did not fail")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "7 event(s)" in (err.details() or "")
        # Acking resumeCursor goes on from the oldest retained.
        await ev.ack(sub.subscription_id, 7)
        batch = await ev.pull(sub.subscription_id, max_events=10)
        assert [e.data["i"] for e in batch.events] == [7, 8, 9, 10, 11]
        # A cursor in the middle of the retained range is no gap; a new subscription from the
        # beginning starts at the oldest retained.
        again = await ev.subscribe(subscription("session.*", fromBeginning=True))
        assert again.cursor == 7


async def test_retention_by_age_deletes_what_is_older() -> None:
    from lucid_cp.clock import FakeClock
    from tests.discovery.conftest import auth as auth_at

    clock = FakeClock()
    async for ev in open_events(
        with_events(retention_seconds=60, retention_interval=3600), clock=clock
    ):
        md = auth_at("api-gateway", clock=clock)
        sub = await ev.subscribe(subscription(fromBeginning=True), md=md)
        for _ in range(3):
            await ev.publish(event(), md=md)
        clock.advance(61)
        await ev.publish(event(), md=md)
        assert await ev.system.sweeper.sweep() == 3
        code, _, _, meta = await rpc_error(ev.pull(sub.subscription_id, md=md))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and meta["lost"] == "3"
