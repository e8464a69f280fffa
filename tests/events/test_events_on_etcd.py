"""Two replicas on a real etcd: events published through B appear on a stream opened on A, in
sequence order, each once, and the registry's own events (which both replicas see and publish)
appear once each; a push subscription is delivered by exactly one replica, and by the other
once that one stops."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.api.lucid.messaging.v1 import events_pb2_grpc
from lucid_cp.app import ControlPlane, start_control_plane
from lucid_cp.events.module import EventSystem
from tests.discovery.conftest import registration

from .conftest import ADMIN, Receiver, auth, event, subscription, until, with_events

pytestmark = pytest.mark.etcd


async def _two(url: str) -> tuple[ControlPlane, ControlPlane]:
    settings = replace(with_events(expiry_grace=0.5), store_url=url, replica_ttl=3)
    return await start_control_plane(settings), await start_control_plane(settings)


async def test_events_through_b_stream_on_a_and_registry_events_once(fresh_etcd) -> None:
    a, b = await _two(fresh_etcd.url)
    try:
        async with (
            grpc.aio.insecure_channel(a.grpc_target) as ca,
            grpc.aio.insecure_channel(b.grpc_target) as cb,
        ):
            events_a = events_pb2_grpc.EventServiceStub(ca)
            events_b = events_pb2_grpc.EventServiceStub(cb)
            disc_b = discovery_pb2_grpc.DiscoveryServiceStub(cb)
            sub = await events_a.Subscribe(
                pb.SubscribeRequest(subscription=subscription(">", fromBeginning=True)),
                metadata=ADMIN,
            )
            stream = events_a.StreamEvents(
                pb.StreamEventsRequest(subscription_id=sub.subscription_id), metadata=ADMIN
            )
            gw = auth("api-gateway")
            published = await asyncio.gather(
                *(
                    events_b.PublishEvent(
                        pb.PublishEventRequest(event=event(data={"i": i})), metadata=gw
                    )
                    for i in range(30)
                )
            )
            assert sorted(p.sequence for p in published)[-1] >= 30
            reg = registration("api-gateway")
            await disc_b.Register(dpb.RegisterRequest(registration=reg), metadata=gw)
            await disc_b.UpdateHealth(
                dpb.UpdateHealthRequest(
                    service_id=reg.service_id,
                    update=dpb.HealthUpdate(status=dpb.HEALTH_STATE_HEALTHY),
                ),
                metadata=ADMIN,
            )
            await disc_b.Deregister(dpb.DeregisterRequest(service_id=reg.service_id), metadata=gw)

            seen: list[pb.ServiceEvent] = []
            wanted = {"service.registered", "service.health-changed", "service.deregistered"}

            def mine() -> list[int]:
                return sorted(int(e.data["i"]) for e in seen if e.source == "api-gateway")

            while mine() != list(range(30)) or not wanted <= {e.event_type for e in seen}:
                seen.append(await asyncio.wait_for(stream.read(), 10))
            # Past both replicas' expiry grace: no expiry, no second copy of anything.
            await asyncio.sleep(1.5)
            late = await events_a.PullEvents(
                pb.PullEventsRequest(subscription_id=sub.subscription_id, max_events=1000),
                metadata=ADMIN,
            )
            stream.cancel()
            every = list(late.events)
            sequences = [e.sequence for e in every]
            assert sequences == sorted(sequences) == list(range(1, len(every) + 1))
            own = [e.event_type for e in every if e.source == "lucid-cp"]
            assert own == [
                "service.registered",
                "service.health-changed",
                "service.deregistered",
            ], own
            assert len({e.event_id for e in every}) == len(every)
            # The stream saw the same events in the same order.
            assert [e.event_id for e in seen] == [e.event_id for e in every[: len(seen)]]
    finally:
        await a.stop(grace=0.5)
        await b.stop(grace=0.5)


async def test_one_replica_pushes_and_the_other_takes_over(fresh_etcd) -> None:
    receiver = Receiver()
    await receiver.start()
    a, b = await _two(fresh_etcd.url)
    stopped: set[str] = set()
    try:
        async with grpc.aio.insecure_channel(a.grpc_target) as ca:
            events_a = events_pb2_grpc.EventServiceStub(ca)
            disc_a = discovery_pb2_grpc.DiscoveryServiceStub(ca)
            reg = registration("hooks-api", port=receiver.port)
            reg.endpoint.host = "127.0.0.1"
            reg.endpoint.protocol = dpb.PROTOCOL_HTTP
            await disc_a.Register(dpb.RegisterRequest(registration=reg), metadata=auth("hooks-api"))
            await disc_a.UpdateHealth(
                dpb.UpdateHealthRequest(
                    service_id=reg.service_id,
                    update=dpb.HealthUpdate(status=dpb.HEALTH_STATE_HEALTHY),
                ),
                metadata=ADMIN,
            )
            sub = await events_a.Subscribe(
                pb.SubscribeRequest(
                    subscription=subscription(
                        "order.*", deliveryMode="DELIVERY_MODE_PUSH", pushPath="/in"
                    )
                ),
                metadata=auth("hooks-api"),
            )
            sid = sub.subscription_id
            pushers = {"a": a.system(EventSystem).pusher, "b": b.system(EventSystem).pusher}

            def holders() -> list[str]:
                return [n for n, p in pushers.items() if sid in p.delivering and n not in stopped]

            await until(lambda: len(holders()) == 1, timeout=10, what="one pushing replica")
            shop = auth("shop-api")
            created = await events_a.PublishEvent(
                pb.PublishEventRequest(event=event("order.created", source="shop-api")),
                metadata=shop,
            )
            await until(lambda: len(receiver.delivered()) == 1, timeout=10, what="delivery")
            # Delivery is at least once: a batch POSTed but whose cursor was not written when
            # its replica stops is pushed again by the next owner. Here the cursor is written
            # first, so the takeover must send only what is new.
            for _ in range(200):
                got = await events_a.GetSubscription(
                    pb.GetSubscriptionRequest(subscription_id=sid), metadata=auth("hooks-api")
                )
                if got.cursor >= created.sequence:
                    break
                await asyncio.sleep(0.05)
            assert got.cursor >= created.sequence
            [first] = holders()
            # The delivering replica stops (its lease is revoked): the other takes over.
            if first == "a":
                await a.stop(grace=0.5)
                survivor = b
            else:
                await b.stop(grace=0.5)
                survivor = a
            stopped.add(first)
            await until(lambda: len(holders()) == 1, timeout=10, what="the takeover")
            async with grpc.aio.insecure_channel(survivor.grpc_target) as cs:
                await events_pb2_grpc.EventServiceStub(cs).PublishEvent(
                    pb.PublishEventRequest(event=event("order.paid", source="shop-api")),
                    metadata=shop,
                )
            await until(lambda: len(receiver.delivered()) == 2, timeout=10, what="delivery")
            types = [b["events"][0]["eventType"] for b in receiver.delivered()]
            assert types == ["order.created", "order.paid"]
    finally:
        for name, plane in (("a", a), ("b", b)):
            if name not in stopped:
                await plane.stop(grace=0.5)
        await receiver.stop()
