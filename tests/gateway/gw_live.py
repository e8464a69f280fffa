"""The real control plane on 127.0.0.1:0 with the real gateway in front, and REST helpers."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from gateway.server import GatewayHandle, start_gateway
from lucid_cp.app import ControlPlane, start_control_plane
from lucid_cp.auth.tokens import Role, mint_token
from lucid_cp.clock import SystemClock
from lucid_cp.config import Settings
from lucid_cp.discovery.settings import DiscoverySettings

SECRET = b"gateway-tests-secret-0123456789abcdef"
# Active health checks off: schemathesis registers generated host names, and probing them would
# send DNS lookups and connections off this machine. Tests only ever talk to loopback.
SETTINGS = Settings(
    store_url="memory://",
    grpc_addr="127.0.0.1:0",
    jwt_secret=SECRET,
    sections=(DiscoverySettings(health_checks_enabled=False),),
)
BASE = "/api/v1/service-discovery"
T = TypeVar("T")


def token(subject: str, role: Role = Role.SERVICE) -> str:
    return mint_token(SECRET, subject, role, SystemClock())


def bearer(subject: str = "api-gateway", role: Role = Role.SERVICE) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(subject, role)}"}


ADMIN = bearer("ops-admin", Role.ADMIN)


def registration(name: str = "api-gateway", **overrides: Any) -> dict[str, Any]:
    """The seed's registration example (plus the healthCheck data-models.md requires)."""
    body: dict[str, Any] = {
        "serviceId": str(uuid.uuid4()),
        "serviceName": name,
        "cluster": "api-gateway",
        "plane": "ops",
        "endpoint": {
            "host": f"{name}.lucid.onion",
            "port": 8080,
            "protocol": "https",
            "path": "/api/v1",
        },
        "version": "1.0.0",
        "healthCheck": {"endpoint": "/health", "interval": 30, "timeout": 10},
    }
    body.update(overrides)
    return body


@dataclass
class Stack:
    plane: ControlPlane
    gateway: GatewayHandle

    async def stop(self) -> None:
        await self.gateway.stop()
        await self.plane.stop(grace=0.5)


async def start_stack(settings: Settings = SETTINGS, **gateway_options: Any) -> Stack:
    plane = await start_control_plane(settings)
    try:
        gateway = await start_gateway(plane.grpc_target, "127.0.0.1:0", **gateway_options)
    except BaseException:
        await plane.stop(grace=0)
        raise
    return Stack(plane, gateway)


def without_rate_limits() -> Settings:
    return replace(SETTINGS, rate_limits_enabled=False)


class ThreadedStack:
    """A Stack running in its own event loop on a background thread, for synchronous callers
    (schemathesis drives the API with a blocking HTTP client)."""

    def __init__(self, settings: Settings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gw-live", daemon=True)
        self._thread.start()
        self.stack = self._run(lambda: start_stack(settings), timeout=30)

    def _run(self, make: Callable[[], Awaitable[T]], timeout: float) -> T:
        async def wrapped() -> T:
            return await make()

        future: Future[T] = asyncio.run_coroutine_threadsafe(wrapped(), self._loop)
        return future.result(timeout)

    @property
    def url(self) -> str:
        return self.stack.gateway.url

    def close(self) -> None:
        try:
            self._run(self.stack.stop, timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
