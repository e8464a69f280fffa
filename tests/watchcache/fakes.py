"""Test doubles for the reflector: a real memory store whose watch and reads can be cut off
(an outage), which records where each watch starts and what each range asked for, and a
clock that records the backoff delays it is asked to sleep."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.clock import FakeClock
from lucid_cp.store import MemoryStore, RangeResult, StoreUnavailableError, WatchBatch

PREFIX = b"/test/items/"


def item(name: str, group: str = "g", weight: int = 0) -> bytes:
    """A stored value: a protobuf message (any message type does)."""
    return pb.ServiceInstance(
        service_id=name, service_name=group, weight=weight
    ).SerializeToString()


def key(name: str) -> bytes:
    return PREFIX + name.encode()


class ControlledStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.watch_starts: list[int] = []
        self.ranges: list[tuple[int, bytes]] = []  # (revision asked, start)
        self.after_range: Callable[[], object] | None = None  # runs after each range page
        self._down = False
        self._cut = asyncio.Event()

    @property
    def down(self) -> bool:
        return self._down

    def go_down(self) -> None:
        """Every range and watch now fails; open watches break."""
        self._down = True
        self._cut.set()

    def come_back(self) -> None:
        self._down = False
        self._cut = asyncio.Event()

    async def current_revision(self) -> int:
        if self._down:
            raise StoreUnavailableError("store unreachable (test outage)")
        return await super().current_revision()

    async def range(
        self, prefix: bytes, *, limit: int = 0, revision: int = 0, start: bytes = b""
    ) -> RangeResult:
        if self._down:
            raise StoreUnavailableError("store unreachable (test outage)")
        self.ranges.append((revision, start))
        result = await super().range(prefix, limit=limit, revision=revision, start=start)
        if self.after_range is not None:
            outcome = self.after_range()
            if asyncio.iscoroutine(outcome):
                await outcome
        return result

    def watch(
        self, prefix: bytes, start_revision: int, *, prev_kv: bool = False
    ) -> AsyncIterator[WatchBatch]:
        return self._controlled_watch(prefix, start_revision)

    async def _controlled_watch(
        self, prefix: bytes, start_revision: int
    ) -> AsyncIterator[WatchBatch]:
        if self._down:
            raise StoreUnavailableError("store unreachable (test outage)")
        self.watch_starts.append(start_revision)
        inner = super().watch(prefix, start_revision)
        cut = asyncio.ensure_future(self._cut.wait())
        next_batch = asyncio.ensure_future(inner.__anext__())
        try:
            while True:
                done, _ = await asyncio.wait({next_batch, cut}, return_when=asyncio.FIRST_COMPLETED)
                if cut in done:
                    raise StoreUnavailableError("connection lost (test outage)")
                yield next_batch.result()
                next_batch = asyncio.ensure_future(inner.__anext__())
        finally:
            cut.cancel()
            next_batch.cancel()
            with contextlib.suppress(BaseException):
                await next_batch
            await inner.aclose()


class RecordingClock(FakeClock):
    """A fake clock that remembers every sleep it was asked for (the reflector's backoff)."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []
        self.asked = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.asked.set()
        await super().sleep(seconds)

    async def wait_for_sleeps(self, count: int, timeout: float = 5.0) -> None:
        """Waits until ``count`` sleeps have been asked for in all."""
        async with asyncio.timeout(timeout):
            while len(self.slept) < count:
                self.asked.clear()
                await self.asked.wait()


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Waits (checking each loop turn, bounded by ``timeout``) until ``condition`` holds."""
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.001)
