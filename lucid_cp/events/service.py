"""EventService servicer: thin. Authentication, rate limits, validation and error mapping happen
in the policy interceptor, which hands each method the request and a ``Call``; each method
calls the core (``control.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.call import Call
from lucid_cp.events.control import EventControl


class EventServicer:
    """Implements every method of lucid.messaging.v1.EventService."""

    def __init__(self, control: EventControl) -> None:
        self._control = control

    async def PublishEvent(self, request: pb.PublishEventRequest, call: Call) -> pb.EventResponse:
        return await self._control.publish(call.principal, request.event)

    async def Subscribe(
        self, request: pb.SubscribeRequest, call: Call
    ) -> pb.EventSubscriptionResponse:
        return await self._control.subscribe(call.principal, request.subscription)

    async def GetSubscription(
        self, request: pb.GetSubscriptionRequest, call: Call
    ) -> pb.EventSubscriptionResponse:
        return self._control.get(call.principal, request.subscription_id)

    async def DeleteSubscription(
        self, request: pb.DeleteSubscriptionRequest, call: Call
    ) -> pb.DeleteSubscriptionResponse:
        revision = await self._control.delete(call.principal, request.subscription_id)
        return pb.DeleteSubscriptionResponse(revision=revision)

    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, call: Call
    ) -> pb.SubscriptionList:
        return self._control.list(call.principal, request)

    def StreamEvents(
        self, request: pb.StreamEventsRequest, call: Call
    ) -> AsyncIterator[pb.ServiceEvent]:
        return self._control.stream(call.principal, request.subscription_id)

    async def PullEvents(self, request: pb.PullEventsRequest, call: Call) -> pb.EventBatch:
        return await self._control.pull(call.principal, request)

    async def AckEvents(self, request: pb.AckEventsRequest, call: Call) -> pb.AckEventsResponse:
        return await self._control.ack(call.principal, request.subscription_id, request.cursor)
