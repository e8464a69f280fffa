"""A test sidecar on the Connect stream: says hello, collects snapshots, and answers each with
an ACK, or a NACK while ``nack_with`` is set."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2_grpc


class FakeSidecar:
    def __init__(
        self,
        stub: sidecar_pb2_grpc.SidecarServiceStub,
        service_id: str,
        metadata: Any,
        *,
        version: int = 0,
        nack_with: str = "",
        auto_ack: bool = True,
    ) -> None:
        self.service_id = service_id
        self.nack_with = nack_with
        self.auto_ack = auto_ack
        self.snapshots: list[pb.ConnectResponse] = []
        self.applied = version
        self._outbox: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
        self._outbox.put_nowait(
            pb.ConnectRequest(hello=pb.Hello(service_id=service_id, version=version, build="t"))
        )
        self._arrived = asyncio.Condition()
        self.call = stub.Connect(self._requests(), metadata=metadata)
        self.error: grpc.aio.AioRpcError | None = None
        self.task = asyncio.create_task(self._read())

    async def _requests(self):  # type: ignore[no-untyped-def]
        while (item := await self._outbox.get()) is not None:
            yield item

    async def _read(self) -> None:
        try:
            async for snapshot in self.call:
                if self.auto_ack:
                    self.answer(snapshot)
                async with self._arrived:
                    self.snapshots.append(snapshot)
                    self._arrived.notify_all()
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        async with self._arrived:
            self._arrived.notify_all()

    def answer(self, snapshot: pb.ConnectResponse) -> None:
        if self.nack_with:
            nack = pb.Nack(version=snapshot.version, nonce=snapshot.nonce, error=self.nack_with)
            self.send(pb.ConnectRequest(nack=nack))
        else:
            self.applied = snapshot.version
            ack = pb.Ack(version=snapshot.version, nonce=snapshot.nonce)
            self.send(pb.ConnectRequest(ack=ack))

    def send(self, message: pb.ConnectRequest) -> None:
        self._outbox.put_nowait(message)

    async def wait(self, count: int, timeout: float = 5.0) -> pb.ConnectResponse:
        """Waits until ``count`` snapshots arrived; returns the last."""
        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(
                    lambda: len(self.snapshots) >= count or self.task.done()
                )
        assert len(self.snapshots) >= count, f"stream ended: {self.error}"
        return self.snapshots[count - 1]

    async def ended(self, timeout: float = 5.0) -> grpc.aio.AioRpcError | None:
        async with asyncio.timeout(timeout):
            await self.task
        return self.error

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
