"""Fixtures for the event stream: a real control plane on 127.0.0.1:0 (memory store, active
health checks off), gRPC stubs, event and subscription builders, and a real HTTP receiver on
127.0.0.1 for push."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.api.lucid.messaging.v1 import events_pb2_grpc
from lucid_cp.app import ControlPlane, start_control_plane
from lucid_cp.clock import Clock
from lucid_cp.config import Settings
from lucid_cp.discovery.settings import DiscoverySettings
from lucid_cp.events.module import EventSettings, EventSystem
from tests.discovery.conftest import ADMIN, SECRET, auth, detail_of, error_info, registration

__all__ = ["ADMIN", "auth"]

SETTINGS = Settings(
    store_url="memory://",
    grpc_addr="127.0.0.1:0",
    jwt_secret=SECRET,
    rate_limits_enabled=False,
    sections=(DiscoverySettings(health_checks_enabled=False),),
)
GW = auth("api-gateway")
WAIT = 5.0


def with_events(settings: Settings = SETTINGS, **over: Any) -> Settings:
    sections = tuple(s for s in settings.sections if not isinstance(s, EventSettings))
    return replace(settings, sections=(*sections, EventSettings(**over)))


def event(
    event_type: str = "session.created",
    source: str = "api-gateway",
    data: dict[str, Any] | None = None,
    **fields: Any,
) -> pb.ServiceEvent:
    body: dict[str, Any] = {
        "eventId": str(uuid.uuid4()),
        "eventType": event_type,
        "source": source,
        "data": {"n": 1} if data is None else data,
    }
    body.update(fields)
    return json_format.ParseDict(body, pb.ServiceEvent())


def subscription(*event_types: str, **fields: Any) -> pb.EventSubscription:
    body: dict[str, Any] = {
        "eventTypes": list(event_types or ("session.>",)),
        "deliveryMode": "DELIVERY_MODE_PULL",
    }
    body.update(fields)
    return json_format.ParseDict(body, pb.EventSubscription())


@dataclass
class Events:
    plane: ControlPlane
    stub: events_pb2_grpc.EventServiceStub
    discovery: discovery_pb2_grpc.DiscoveryServiceStub

    @property
    def system(self) -> EventSystem:
        return self.plane.system(EventSystem)

    async def publish(self, ev: pb.ServiceEvent, md: Any = None) -> pb.EventResponse:
        return await self.stub.PublishEvent(
            pb.PublishEventRequest(event=ev), metadata=md or auth(ev.source)
        )

    async def subscribe(
        self, sub: pb.EventSubscription, md: Any = GW
    ) -> pb.EventSubscriptionResponse:
        return await self.stub.Subscribe(pb.SubscribeRequest(subscription=sub), metadata=md)

    async def pull(self, sid: str, md: Any = GW, **kw: Any) -> pb.EventBatch:
        return await self.stub.PullEvents(
            pb.PullEventsRequest(subscription_id=sid, **kw), metadata=md
        )

    async def ack(self, sid: str, cursor: int, md: Any = GW) -> pb.AckEventsResponse:
        return await self.stub.AckEvents(
            pb.AckEventsRequest(subscription_id=sid, cursor=cursor), metadata=md
        )

    async def register(self, name: str, md: Any = None, **kw: Any) -> dpb.RegisterResponse:
        return await self.discovery.Register(
            dpb.RegisterRequest(registration=registration(name, **kw)), metadata=md or auth(name)
        )


async def open_events(
    settings: Settings = SETTINGS, *, clock: Clock | None = None
) -> AsyncIterator[Events]:
    plane = await start_control_plane(settings, clock=clock)
    try:
        async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
            yield Events(
                plane,
                events_pb2_grpc.EventServiceStub(channel),
                discovery_pb2_grpc.DiscoveryServiceStub(channel),
            )
    finally:
        await plane.stop(grace=0.5)


@pytest.fixture
async def events() -> AsyncIterator[Events]:
    async for e in open_events():
        yield e


async def rpc_error(
    call: Any,
) -> tuple[grpc.StatusCode, str, list[tuple[str, str]], dict[str, str]]:
    """(code, LUCID_ERR reason, field violations, ErrorInfo metadata) of a call that must fail."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        info, status = error_info(err)
        bad = detail_of(status, error_details_pb2.BadRequest)
        violations = [(v.field, v.description) for v in bad.field_violations] if bad else []
        return err.code(), info.reason, violations, dict(info.metadata)
    raise AssertionError("the call succeeded")


async def until(predicate: Any, timeout: float = WAIT, what: str = "condition") -> None:
    """Polls ``predicate()`` (every 10 ms of real time) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# -- a real HTTP receiver for push --------------------------------------------------------------


@dataclass
class Receiver:
    """An HTTP/1.1 server on 127.0.0.1 that records every POST body and answers with the next
    status of ``script`` (then ``default``)."""

    script: list[int] = field(default_factory=list)
    default: int = 200
    bodies: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            _, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length)
            status = self.script.pop(0) if self.script else self.default
            self.paths.append(path)
            self.bodies.append(json.loads(body))
            self.statuses.append(status)
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def delivered(self) -> list[dict[str, Any]]:
        """The bodies answered 2xx."""
        return [b for b, s in zip(self.bodies, self.statuses, strict=True) if 200 <= s < 300]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()
