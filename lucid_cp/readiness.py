"""Readiness follows the store: grpc.health.v1 says NOT_SERVING while the store is unreachable.

The control plane answers nothing useful without its store, so a :class:`StoreMonitor` probes
it (``current_revision``, one linearizable read) every ``interval`` of the injected clock and
sets the health of :data:`STORE_HEALTH_SERVICE` (so a reader can tell *which* dependency is
down), of the overall ``""`` service and of every served service to SERVING or NOT_SERVING.

A probe rather than the watch-fed indexes' ``connected`` flag: after a reconnect a watch on a
quiet store stays unconfirmed until an event arrives, so ``connected`` would keep a healthy
plane unready; a probe asks the store itself, at a bounded cost (one read per interval).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2

from lucid_cp.clock import Clock
from lucid_cp.store.base import KeyReader, StoreError
from lucid_cp.tasks import cancel_and_wait

log = logging.getLogger("lucid_cp.readiness")

# The grpc.health.v1 service name under which the control plane reports its store.
STORE_HEALTH_SERVICE = "lucid.store"

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StoreMonitor:
    def __init__(
        self,
        store: KeyReader,
        servicer: health.aio.HealthServicer,
        services: Sequence[str],
        clock: Clock,
        *,
        interval: float = 1.0,
        probe_timeout: float = 3.0,
    ) -> None:
        self._store = store
        self._servicer = servicer
        self._names = [STORE_HEALTH_SERVICE, "", *services]
        self._clock = clock
        self._interval = interval
        self._probe_timeout = probe_timeout
        self._reachable: bool | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def reachable(self) -> bool | None:
        """The last probe's answer (None before the first)."""
        return self._reachable

    async def not_serving(self) -> None:
        """Sets every name NOT_SERVING (grpc's servicer starts ``""`` as SERVING): call it before
        the server starts, so nothing reads ready before the first probe has answered."""
        for name in self._names:
            await self._servicer.set(name, _NOT_SERVING)

    async def start(self) -> None:
        """Probes once (so health is right from the start), then every ``interval``."""
        await self.check()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def check(self) -> bool:
        """One probe; any failure, an unexpected exception included, counts as unreachable."""
        try:
            async with self._clock.timeout(self._probe_timeout):
                await self._store.current_revision()
            reachable = True
        except (StoreError, TimeoutError) as e:
            if self._reachable is not False:
                log.warning("store unreachable: control plane NOT_SERVING", extra={"error": str(e)})
            reachable = False
        except Exception:
            if self._reachable is not False:
                log.exception("store probe failed unexpectedly: control plane NOT_SERVING")
            reachable = False
        if reachable != self._reachable:
            if reachable and self._reachable is False:
                log.info("store reachable again: control plane SERVING")
            self._reachable = reachable
            for name in self._names:
                await self._servicer.set(name, _SERVING if reachable else _NOT_SERVING)
        return reachable

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            await self.check()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
