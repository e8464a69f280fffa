"""A test consumer on the Consume stream: sends ``start``, collects deliveries, and acks or
nacks when told to (never on its own)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.api.lucid.messaging.v1 import messages_pb2_grpc


class FakeConsumer:
    def __init__(
        self,
        stub: messages_pb2_grpc.MessageServiceStub,
        service: str,
        metadata: Any,
        **start: Any,
    ) -> None:
        self.deliveries: list[pb.Delivery] = []
        self.responses: list[pb.ConsumeResponse] = []
        self.unacked: dict[str, pb.Delivery] = {}
        self.error: grpc.aio.AioRpcError | None = None
        self._outbox: asyncio.Queue[pb.ConsumeRequest | None] = asyncio.Queue()
        self._outbox.put_nowait(
            pb.ConsumeRequest(start=pb.ConsumeStart(service_name=service, **start))
        )
        self._arrived = asyncio.Condition()
        self.call = stub.Consume(self._requests(), metadata=metadata)
        self.task = asyncio.create_task(self._read())

    async def _requests(self):  # type: ignore[no-untyped-def]
        while (item := await self._outbox.get()) is not None:
            yield item

    async def _read(self) -> None:
        try:
            async for response in self.call:
                async with self._arrived:
                    self.responses.append(response)
                    batch = response.deliveries or [response.delivery]
                    for delivery in batch:
                        self.deliveries.append(delivery)
                        self.unacked[delivery.message.message_id] = delivery
                    self._arrived.notify_all()
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        async with self._arrived:
            self._arrived.notify_all()

    def send(self, request: pb.ConsumeRequest) -> None:
        self._outbox.put_nowait(request)

    def ack(self, delivery: pb.Delivery) -> None:
        self.unacked.pop(delivery.message.message_id, None)
        self.send(
            pb.ConsumeRequest(
                ack=pb.AckMessageRequest(
                    message_id=delivery.message.message_id, attempt=delivery.attempt
                )
            )
        )

    def ack_all(self, deliveries: list[pb.Delivery]) -> None:
        """One ``acks`` batch for ``deliveries``."""
        for delivery in deliveries:
            self.unacked.pop(delivery.message.message_id, None)
        acks = [
            pb.AckMessageRequest(message_id=d.message.message_id, attempt=d.attempt)
            for d in deliveries
        ]
        self.send(pb.ConsumeRequest(acks=pb.AckBatch(acks=acks)))

    def nack(self, delivery: pb.Delivery, error: str, retryable: bool = True) -> None:
        self.unacked.pop(delivery.message.message_id, None)
        self.send(
            pb.ConsumeRequest(
                nack=pb.NackMessageRequest(
                    message_id=delivery.message.message_id,
                    attempt=delivery.attempt,
                    error=error,
                    retryable=retryable,
                )
            )
        )

    async def wait(self, count: int, timeout: float = 5.0) -> list[pb.Delivery]:
        """Until ``count`` deliveries have arrived in all (or the stream ended)."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.deliveries) >= count or self.task.done())
        return self.deliveries

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
