"""One replica's discovery core and health checker over a memory store that tests can cut off."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.auth.tokens import Principal, Role
from lucid_cp.clock import ScaledClock, SystemClock
from lucid_cp.discovery.health import (
    HealthChecker,
    HttpProber,
    ProtocolProber,
    StaticMembership,
    TcpProber,
)
from lucid_cp.discovery.health.grpc_probe import GrpcHealthProber
from lucid_cp.discovery.index import InstanceIndex
from lucid_cp.discovery.registry import Registry
from lucid_cp.store.memory import MemoryStore

from .conftest import SPEED
from .flaky import FlakyStore
from .targets import wait_until

ADMIN = Principal("ops-admin", Role.ADMIN)


class Harness:
    def __init__(
        self, store: FlakyStore, index: InstanceIndex, checker: HealthChecker, clock: ScaledClock
    ) -> None:
        self.store = store
        self.index = index
        self.checker = checker
        self.clock = clock  # the checker's
        self.registry = Registry(store, index, SystemClock())

    async def register(self, reg: pb.ServiceRegistration) -> str:
        await self.registry.register(ADMIN, reg)
        return reg.service_id

    def record(self, service_id: str) -> pb.ServiceInstance:
        instance = self.index.get(service_id)
        assert instance is not None, f"{service_id} is not in the index"
        return instance

    async def wait_status(
        self, service_id: str, status: int, timeout: float = 5.0
    ) -> pb.HealthStatus:
        def reached() -> bool:
            instance = self.index.get(service_id)
            return instance is not None and instance.status == status

        name = pb.HealthState.Name(status)  # type: ignore[arg-type]
        await wait_until(reached, timeout, f"{service_id} to be {name} in the index")
        return self.record(service_id).health


@asynccontextmanager
async def running_checker(**checker_options: object) -> AsyncIterator[Harness]:
    store = FlakyStore(MemoryStore(reap_interval=0.05))
    index = InstanceIndex(store, clock=SystemClock())
    await index.start()
    clock = ScaledClock(SPEED)
    prober = ProtocolProber(HttpProber(clock=clock), TcpProber(clock=clock), GrpcHealthProber())
    options: dict[str, object] = {"rescan_period": 0.05}
    options.update(checker_options)
    checker = HealthChecker(
        store,
        index,
        clock,
        prober,
        StaticMembership("test-replica"),
        **options,  # type: ignore[arg-type]
    )
    await checker.start()
    try:
        yield Harness(store, index, checker, clock)
    finally:
        store.down = False
        await checker.stop()
        await index.stop()
        await store.close()
