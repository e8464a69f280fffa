"""Push delivery to real HTTP receivers on 127.0.0.1 (asyncio servers in the test): batches of
batchSize POSTed as JSON to a healthy instance of the subscriber at pushPath; a failure retried
after retryDelay; after maxRetries the batch is dead-lettered (recorded) and the cursor moves on.
The control plane runs on a ScaledClock (20x), so a 1 s retryDelay takes 50 ms."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.clock import ScaledClock
from lucid_cp.events import keys
from tests.discovery.conftest import registration

from .conftest import (
    ADMIN,
    Events,
    Receiver,
    auth,
    event,
    open_events,
    subscription,
    until,
    with_events,
)

HOOKS = auth("hooks-api")


@pytest.fixture
async def events() -> AsyncIterator[Events]:
    # Without the registry's own events: the sequences below are the test's events only.
    async for e in open_events(with_events(own_events=False), clock=ScaledClock(20)):
        yield e


async def serve(
    events: Events, receiver: Receiver, name: str = "hooks-api", *, healthy: bool = True
) -> str:
    reg = registration(name, port=receiver.port)
    reg.endpoint.host = "127.0.0.1"
    reg.endpoint.protocol = dpb.PROTOCOL_HTTP
    await events.discovery.Register(dpb.RegisterRequest(registration=reg), metadata=auth(name))
    if healthy:
        await events.discovery.UpdateHealth(
            dpb.UpdateHealthRequest(
                service_id=reg.service_id, update=dpb.HealthUpdate(status=dpb.HEALTH_STATE_HEALTHY)
            ),
            metadata=ADMIN,
        )
    return reg.service_id


async def push_subscription(events: Events, **fields: object) -> pb.EventSubscriptionResponse:
    body: dict[str, object] = {
        "deliveryMode": "DELIVERY_MODE_PUSH",
        "pushPath": "/hooks/events",
        "retryDelay": 1000,
    } | fields
    return await events.subscribe(subscription("order.*", **body), md=HOOKS)


async def stored(events: Events, sid: str) -> pb.EventSubscriptionResponse:
    return await events.stub.GetSubscription(
        pb.GetSubscriptionRequest(subscription_id=sid), metadata=HOOKS
    )


async def wait_cursor(events: Events, sid: str, cursor: int) -> pb.EventSubscriptionResponse:
    last: list[pb.EventSubscriptionResponse] = []

    async def check() -> bool:
        last[:] = [await stored(events, sid)]
        return last[0].cursor >= cursor

    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not await check():
        assert loop.time() < deadline, f"cursor stuck at {last[0].cursor}, wanted {cursor}"
        await asyncio.sleep(0.02)
    return last[0]


async def test_batches_are_posted_and_the_cursor_moves(events: Events, receiver: Receiver) -> None:
    await serve(events, receiver)
    sub = await push_subscription(events, batchSize=2)
    sid = sub.subscription_id
    await until(lambda: sid in events.system.pusher.delivering, what="the push loop")
    for i, t in enumerate(["order.created", "user.created", "order.paid", "order.shipped"]):
        await events.publish(event(t, source="shop-api", data={"i": i}), md=auth("shop-api"))
    got = await wait_cursor(events, sid, 4)
    assert got.dead_batches == []
    delivered = receiver.delivered()
    sent = [e["data"]["i"] for body in delivered for e in body["events"]]
    assert sent == [0, 2, 3]
    assert all(len(b["events"]) <= 2 for b in delivered)
    first = delivered[0]
    assert first["subscriptionId"] == sid
    assert first["events"][0]["eventType"] == "order.created"
    assert first["events"][0]["sequence"] == 1 and isinstance(first["cursor"], int)
    assert set(receiver.paths) == {"/hooks/events"}
    # The owner key is this replica's, under its lease.
    owner = await events.plane.store.get(keys.owner_key(sid))
    assert owner is not None and owner.lease == events.system.owners.lease


async def test_a_failing_receiver_is_retried_until_it_answers(
    events: Events, receiver: Receiver
) -> None:
    receiver.script = [500, 503]
    await serve(events, receiver)
    sub = await push_subscription(events, maxRetries=3)
    await until(lambda: sub.subscription_id in events.system.pusher.delivering)
    await events.publish(event("order.created", source="shop-api"), md=auth("shop-api"))
    got = await wait_cursor(events, sub.subscription_id, 1)
    assert receiver.statuses == [500, 503, 200]
    assert len({str(b["events"]) for b in receiver.bodies}) == 1  # the same batch each time
    assert got.dead_batches == []


async def test_a_batch_that_always_fails_is_dead_lettered_and_the_cursor_moves_on(
    events: Events, receiver: Receiver
) -> None:
    receiver.default = 500
    await serve(events, receiver)
    sub = await push_subscription(events, maxRetries=1)
    sid = sub.subscription_id
    await until(lambda: sid in events.system.pusher.delivering)
    for i in range(2):
        await events.publish(
            event("order.created", source="shop-api", data={"i": i}), md=auth("shop-api")
        )
    got = await wait_cursor(events, sid, 2)
    while len(got.dead_batches) < 2:  # the cursor moves in the txn that records the batch
        got = await stored(events, sid)
    first, second = got.dead_batches
    assert (first.first_sequence, first.last_sequence, first.events) == (1, 1, 1)
    assert (second.first_sequence, second.last_sequence) == (2, 2)
    assert first.attempts == 2 and "HTTP 500" in first.error and first.at.seconds > 0
    assert receiver.statuses == [500] * 4  # two attempts per batch
    # The next event is delivered once the receiver recovers.
    receiver.default = 200
    await events.publish(
        event("order.created", source="shop-api", data={"i": 9}), md=auth("shop-api")
    )
    got = await wait_cursor(events, sid, 3)
    assert receiver.delivered()[-1]["events"][0]["data"] == {"i": 9}
    assert len(got.dead_batches) == 2


async def test_no_healthy_instance_is_a_failed_attempt(events: Events, receiver: Receiver) -> None:
    await serve(events, receiver, healthy=False)  # registered, status unknown
    sub = await push_subscription(events, maxRetries=0)
    await until(lambda: sub.subscription_id in events.system.pusher.delivering)
    await events.publish(event("order.created", source="shop-api"), md=auth("shop-api"))
    got = await wait_cursor(events, sub.subscription_id, 1)
    assert "no healthy instance of service hooks-api" in got.dead_batches[0].error
    assert receiver.bodies == []


async def test_round_robin_over_healthy_instances(events: Events) -> None:
    receivers = [Receiver(), Receiver()]
    for r in receivers:
        await r.start()
        await serve(events, r)
    try:
        sub = await push_subscription(events)
        await until(lambda: sub.subscription_id in events.system.pusher.delivering)
        for _ in range(4):
            await events.publish(event("order.created", source="shop-api"), md=auth("shop-api"))
        await wait_cursor(events, sub.subscription_id, 4)
        assert [len(r.bodies) for r in receivers] == [2, 2]
    finally:
        for r in receivers:
            await r.stop()


async def test_deleting_a_push_subscription_stops_its_delivery(
    events: Events, receiver: Receiver
) -> None:
    await serve(events, receiver)
    sub = await push_subscription(events)
    sid = sub.subscription_id
    await until(lambda: sid in events.system.pusher.delivering)
    await events.stub.DeleteSubscription(
        pb.DeleteSubscriptionRequest(subscription_id=sid), metadata=HOOKS
    )
    await until(lambda: sid not in events.system.pusher.delivering, what="the loop to stop")
    assert await events.plane.store.get(keys.owner_key(sid)) is None
    await events.publish(event("order.created", source="shop-api"), md=auth("shop-api"))
    assert receiver.bodies == []
