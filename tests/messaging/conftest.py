"""Fixtures for message queue tests: a real control plane on 127.0.0.1:0 (memory store, active
health checks and rate limits off), the MessageService stub, tokens minted on the plane's clock,
and request builders."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import json_format

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.api.lucid.messaging.v1 import messages_pb2_grpc
from lucid_cp.app import ControlPlane, start_control_plane
from lucid_cp.auth.tokens import Role, mint_token
from lucid_cp.clock import Clock, SystemClock
from lucid_cp.config import Settings
from lucid_cp.discovery.settings import DiscoverySettings
from lucid_cp.messaging.module import MessagingSettings, MessagingSystem
from lucid_cp.store.memory import MemoryStore
from tests.discovery.conftest import SECRET
from tests.mesh.conftest import rpc_error

__all__ = ["rpc_error"]

SETTINGS = Settings(
    store_url="memory://",
    grpc_addr="127.0.0.1:0",
    jwt_secret=SECRET,
    rate_limits_enabled=False,
    sections=(
        DiscoverySettings(health_checks_enabled=False),
        MessagingSettings(sweep_interval=0.05),
    ),
)
T = TypeVar("T")


def message(
    source: str = "api-gateway", destination: str = "tron-node", **over: Any
) -> pb.InterServiceMessage:
    """A message in the REST JSON shape (camelCase keys; enums by proto name)."""
    body: dict[str, Any] = {
        "messageId": str(uuid.uuid4()),
        "source": source,
        "destination": destination,
        "payload": {"op": "transfer", "amount": 5},
    }
    return json_format.ParseDict(body | over, pb.InterServiceMessage())


async def until(check: Callable[[], Awaitable[T]], timeout: float = 5.0) -> T:
    """Polls the async ``check`` until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while not (found := await check()):  # noqa: ASYNC110 (state another task writes)
            await asyncio.sleep(0.01)
    return found


@dataclass
class Queue:
    plane: ControlPlane
    stub: messages_pb2_grpc.MessageServiceStub
    discovery: discovery_pb2_grpc.DiscoveryServiceStub
    clock: Clock

    def md(
        self, subject: str = "api-gateway", role: Role = Role.SERVICE
    ) -> tuple[tuple[str, str], ...]:
        token = mint_token(SECRET, subject, role, self.clock, ttl=10**6)
        return (("authorization", f"Bearer {token}"),)

    @property
    def admin(self) -> tuple[tuple[str, str], ...]:
        return self.md("ops-admin", Role.ADMIN)

    @property
    def system(self) -> MessagingSystem:
        return self.plane.system(MessagingSystem)

    async def send(self, msg: pb.InterServiceMessage, md: Any = None) -> pb.MessageResponse:
        return await self.stub.SendMessage(
            pb.SendMessageRequest(message=msg), metadata=md or self.md(msg.source)
        )

    async def status(self, message_id: str, as_: str = "api-gateway") -> pb.MessageStatus:
        return await self.stub.GetMessageStatus(
            pb.GetMessageStatusRequest(message_id=message_id), metadata=self.md(as_)
        )

    async def pull(
        self, service: str = "tron-node", max_messages: int = 10, wait_ms: int = 0
    ) -> list[pb.Delivery]:
        response = await self.stub.PullMessages(
            pb.PullMessagesRequest(
                service_name=service, max_messages=max_messages, wait_ms=wait_ms
            ),
            metadata=self.md(service),
        )
        return list(response.deliveries)

    async def ack(self, delivery: pb.Delivery) -> pb.MessageStatus:
        m = delivery.message
        return await self.stub.AckMessage(
            pb.AckMessageRequest(message_id=m.message_id, attempt=delivery.attempt),
            metadata=self.md(m.destination),
        )

    async def nack(
        self, delivery: pb.Delivery, error: str, retryable: bool = True
    ) -> pb.MessageStatus:
        m = delivery.message
        return await self.stub.NackMessage(
            pb.NackMessageRequest(
                message_id=m.message_id, attempt=delivery.attempt, error=error, retryable=retryable
            ),
            metadata=self.md(m.destination),
        )

    async def status_is(self, message_id: str, state: int) -> pb.MessageStatus | None:
        found = await self.status(message_id, as_="tron-node")
        return found if found.status == state else None


async def open_queue(
    settings: Settings = SETTINGS, clock: Clock | None = None
) -> AsyncIterator[Queue]:
    clock = clock or SystemClock()
    store = MemoryStore(clock=clock) if settings.store_url == "memory://" else None
    plane = await start_control_plane(settings, clock=clock, store=store)
    try:
        async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
            yield Queue(
                plane,
                messages_pb2_grpc.MessageServiceStub(channel),
                discovery_pb2_grpc.DiscoveryServiceStub(channel),
                clock,
            )
    finally:
        await plane.stop(grace=0.5)


@pytest.fixture
async def q() -> AsyncIterator[Queue]:
    async for queue in open_queue():
        yield queue


def with_messaging(**kw: Any) -> Settings:
    return replace(SETTINGS, sections=(SETTINGS.sections[0], MessagingSettings(**kw)))
