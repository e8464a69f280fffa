"""Subscribe, Get, List, Delete: defaults, cursors at the head (or the oldest retained), and who
may see what (403 subscribing for another service, 404 for another service's subscription)."""

from __future__ import annotations

import grpc
import pytest

from lucid_cp.api.lucid.messaging.v1 import delivery_pb2
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb

from .conftest import ADMIN, GW, Events, auth, event, rpc_error, subscription

WALLET = auth("wallet-api")


async def test_subscribe_applies_defaults_and_starts_at_the_head(events: Events) -> None:
    for _ in range(3):
        await events.publish(event())
    got = await events.subscribe(pb.EventSubscription(event_types=["session.*"]))
    sub = got.subscription
    assert sub.subscriber_id == "api-gateway"
    assert sub.delivery_mode == delivery_pb2.DELIVERY_MODE_PUSH
    assert (sub.batch_size, sub.max_retries, sub.retry_delay) == (1, 3, 5000)
    assert sub.push_path == "/lucid/events"
    assert got.cursor == 3 and got.head == 3
    assert got.created_at.seconds > 0 and got.revision > 0
    read = await events.stub.GetSubscription(
        pb.GetSubscriptionRequest(subscription_id=got.subscription_id), metadata=GW
    )
    assert read.subscription == got.subscription and read.cursor == 3
    assert read.revision == got.revision


async def test_from_beginning_starts_before_the_oldest_retained(events: Events) -> None:
    for _ in range(3):
        await events.publish(event())
    got = await events.subscribe(subscription(fromBeginning=True))
    assert got.cursor == 0
    batch = await events.pull(got.subscription_id, max_events=10)
    assert [e.sequence for e in batch.events] == [1, 2, 3]


async def test_subscribing_for_another_service_is_403_admin_may(events: Events) -> None:
    code, reason, _, _ = await rpc_error(
        events.subscribe(subscription(subscriberId="wallet-api"), md=GW)
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "LUCID_ERR_1902")
    got = await events.subscribe(subscription(subscriberId="wallet-api"), md=ADMIN)
    assert got.subscription.subscriber_id == "wallet-api"
    # The service it names reads it as its own.
    read = await events.stub.GetSubscription(
        pb.GetSubscriptionRequest(subscription_id=got.subscription_id), metadata=WALLET
    )
    assert read.subscription_id == got.subscription_id


async def test_another_services_subscription_is_404_everywhere(events: Events) -> None:
    got = await events.subscribe(subscription(), md=WALLET)
    sid = got.subscription_id
    calls = [
        events.stub.GetSubscription(pb.GetSubscriptionRequest(subscription_id=sid), metadata=GW),
        events.stub.DeleteSubscription(
            pb.DeleteSubscriptionRequest(subscription_id=sid), metadata=GW
        ),
        events.pull(sid, md=GW),
        events.ack(sid, 1, md=GW),
    ]
    for call in calls:
        code, reason, _, _ = await rpc_error(call)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "LUCID_ERR_1907")
    stream = events.stub.StreamEvents(pb.StreamEventsRequest(subscription_id=sid), metadata=GW)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Still there for its owner and for an admin.
    for md in (WALLET, ADMIN):
        read = await events.stub.GetSubscription(
            pb.GetSubscriptionRequest(subscription_id=sid), metadata=md
        )
        assert read.subscription_id == sid


async def test_list_is_own_for_a_service_and_all_or_one_subscriber_for_admin(
    events: Events,
) -> None:
    mine = [(await events.subscribe(subscription(), md=GW)).subscription_id for _ in range(2)]
    theirs = (await events.subscribe(subscription(), md=WALLET)).subscription_id
    own = await events.stub.ListSubscriptions(
        pb.ListSubscriptionsRequest(subscriber_id="wallet-api"), metadata=GW
    )
    assert [s.subscription_id for s in own.subscriptions] == mine and own.total == 2
    everything = await events.stub.ListSubscriptions(pb.ListSubscriptionsRequest(), metadata=ADMIN)
    assert everything.total == 3
    one = await events.stub.ListSubscriptions(
        pb.ListSubscriptionsRequest(subscriber_id="wallet-api"), metadata=ADMIN
    )
    assert [s.subscription_id for s in one.subscriptions] == [theirs]
    page = await events.stub.ListSubscriptions(
        pb.ListSubscriptionsRequest(limit=1, offset=1), metadata=ADMIN
    )
    assert len(page.subscriptions) == 1 and page.total == 3


async def test_an_explicit_unspecified_delivery_mode_is_400(events: Events) -> None:
    sub = pb.EventSubscription(
        event_types=["a"], delivery_mode=delivery_pb2.DELIVERY_MODE_UNSPECIFIED
    )
    code, _, violations, _ = await rpc_error(events.subscribe(sub))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in violations] == ["subscription.deliveryMode"]


async def test_delete_removes_it(events: Events) -> None:
    got = await events.subscribe(subscription())
    sid = got.subscription_id
    deleted = await events.stub.DeleteSubscription(
        pb.DeleteSubscriptionRequest(subscription_id=sid), metadata=GW
    )
    assert deleted.revision > got.revision
    code, _, _, _ = await rpc_error(
        events.stub.GetSubscription(pb.GetSubscriptionRequest(subscription_id=sid), metadata=GW)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, _, _, _ = await rpc_error(
        events.stub.DeleteSubscription(
            pb.DeleteSubscriptionRequest(subscription_id=sid), metadata=GW
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"eventTypes": ["session.>.x"]}, "subscription.eventTypes[0]"),
        ({"eventTypes": ["session.**"]}, "subscription.eventTypes[0]"),
        ({"eventTypes": ["Session.*"]}, "subscription.eventTypes[0]"),
        ({"eventTypes": ["a..b"]}, "subscription.eventTypes[0]"),
        ({"eventTypes": [">.a"]}, "subscription.eventTypes[0]"),
        ({"eventTypes": ["ok.*", "bad.>>"]}, "subscription.eventTypes[1]"),
        ({"eventTypes": []}, "subscription.eventTypes"),
        ({"eventTypes": ["a"], "batchSize": 0}, "subscription.batchSize"),
        ({"eventTypes": ["a"], "batchSize": 1001}, "subscription.batchSize"),
        ({"eventTypes": ["a"], "maxRetries": 11}, "subscription.maxRetries"),
        ({"eventTypes": ["a"], "retryDelay": 999}, "subscription.retryDelay"),
        ({"eventTypes": ["a"], "pushPath": "no-slash"}, "subscription.pushPath"),
        ({"eventTypes": ["a"], "filters": {"data": {"a..b": 1}}}, "subscription.filters.data"),
        (
            {"eventTypes": ["a"], "filters": {"source": ["Bad Name"]}},
            "subscription.filters.source[0]",
        ),
    ],
)
async def test_invalid_subscriptions_are_400_with_field_violations(
    events: Events, body: dict[str, object], field: str
) -> None:
    from google.protobuf import json_format

    sub = json_format.ParseDict(body, pb.EventSubscription())
    code, reason, violations, _ = await rpc_error(events.subscribe(sub))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "LUCID_ERR_1302")
    assert field in [f for f, _ in violations], violations
    listed = await events.stub.ListSubscriptions(pb.ListSubscriptionsRequest(), metadata=ADMIN)
    assert listed.total == 0
