"""Gateway fixtures: a scripted gRPC backend and the real gateway (uvicorn) in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from gw_dynamic_proto import echo_service
from gw_fake_backend import FAKE_AUTH, FakeBackend, start_fake_backend
from gw_live import Stack, start_stack

from gateway.server import GatewayHandle, start_gateway


@pytest.fixture
async def backend() -> AsyncIterator[FakeBackend]:
    fake = await start_fake_backend()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def gateway(backend: FakeBackend) -> AsyncIterator[GatewayHandle]:
    handle = await start_gateway(backend.target, "127.0.0.1:0")
    try:
        yield handle
    finally:
        await handle.stop()


@pytest.fixture
async def client(gateway: GatewayHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10.0, headers=FAKE_AUTH) as http:
        yield http


@pytest.fixture
async def echo_client(backend: FakeBackend) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway exposing the test-only EchoService next to discovery, with a short deadline."""
    handle = await start_gateway(
        backend.target,
        "127.0.0.1:0",
        services=[echo_service(), "lucid.discovery.v1.DiscoveryService"],
        timeout=0.5,
    )
    try:
        async with httpx.AsyncClient(base_url=handle.url, timeout=10.0, headers=FAKE_AUTH) as http:
            yield http
    finally:
        await handle.stop()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """The real control plane (memory store, default rate limits) behind the real gateway."""
    live = await start_stack()
    try:
        yield live
    finally:
        await live.stop()


@pytest.fixture
async def live(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10.0) as http:
        yield http
