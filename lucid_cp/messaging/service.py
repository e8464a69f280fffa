"""MessageService servicer: thin. Authentication, rate limits, validation and error mapping
happen in the policy interceptor, which hands each method the request and a ``Call``; each
method calls the core with the caller's principal (ownership is the core's): sends, status,
acks, dead letters and consumer configurations (``queue.py``), pipelined sends (``publish.py``),
pull delivery (``dispatch.py``, ``stream.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.call import Call
from lucid_cp.messaging import publish, stream
from lucid_cp.messaging.dispatch import Dispatcher
from lucid_cp.messaging.queue import MessageQueue


class MessageServicer:
    """Implements lucid.messaging.v1.MessageService."""

    def __init__(self, queue: MessageQueue, dispatcher: Dispatcher) -> None:
        self._queue = queue
        self._dispatcher = dispatcher

    async def SendMessage(self, request: pb.SendMessageRequest, call: Call) -> pb.MessageResponse:
        return await self._queue.send(call.principal, request.message)

    async def SendMessages(
        self, request: pb.SendMessagesRequest, call: Call
    ) -> pb.SendMessagesResponse:
        results = await self._queue.send_many(call.principal, request.messages)
        return pb.SendMessagesResponse(results=results)

    def PublishMessages(
        self, requests: AsyncIterator[pb.SendMessageRequest], call: Call
    ) -> AsyncIterator[pb.SendResult]:
        return publish.publish(self._queue, call.principal, requests, call.on_done)

    async def GetMessageStatus(
        self, request: pb.GetMessageStatusRequest, call: Call
    ) -> pb.MessageStatus:
        return await self._queue.status(call.principal, request.message_id)

    async def PullMessages(
        self, request: pb.PullMessagesRequest, call: Call
    ) -> pb.PullMessagesResponse:
        deliveries = await self._dispatcher.pull(
            call.principal, request.service_name, request.max_messages, request.wait_ms / 1000.0
        )
        return pb.PullMessagesResponse(deliveries=deliveries)

    async def AckMessage(self, request: pb.AckMessageRequest, call: Call) -> pb.MessageStatus:
        return await self._queue.ack(call.principal, request.message_id, request.attempt)

    async def NackMessage(self, request: pb.NackMessageRequest, call: Call) -> pb.MessageStatus:
        return await self._queue.nack(
            call.principal, request.message_id, request.attempt, request.error, request.retryable
        )

    def Consume(
        self, requests: AsyncIterator[pb.ConsumeRequest], call: Call
    ) -> AsyncIterator[pb.ConsumeResponse]:
        return stream.consume(self._queue, self._dispatcher, call.principal, requests, call.on_done)

    async def PutConsumer(
        self, request: pb.PutConsumerRequest, call: Call
    ) -> pb.ConsumerConfigResponse:
        return await self._queue.put_consumer(call.principal, request.service_name, request.config)

    async def GetConsumer(
        self, request: pb.GetConsumerRequest, call: Call
    ) -> pb.ConsumerConfigResponse:
        return self._queue.get_consumer(call.principal, request.service_name)

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, call: Call
    ) -> pb.DeadLetterList:
        return await self._queue.dead_letters(
            call.principal, request.destination, request.limit, request.offset
        )

    async def ReplayDeadLetter(
        self, request: pb.ReplayDeadLetterRequest, call: Call
    ) -> pb.MessageResponse:
        return await self._queue.replay(call.principal, request.message_id)
