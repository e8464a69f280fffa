"""One consumer's view of a reflector: a bounded queue that never drops silently.

A subscription yields rendered changes in order. When its queue is full it switches to "needs
snapshot": the queue is cleared and the next item is a fresh snapshot (built when it is read), so a
slow consumer is resynced, never silently skipped. ``close()`` is idempotent, unregisters the
subscription and ends a pending or later ``__anext__`` with StopAsyncIteration; it is synchronous,
so a gRPC handler can register it with ``call.on_done(sub.close)``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Subscription(Generic[T]):
    def __init__(
        self,
        group: str,
        snapshot: Callable[[], T],
        maxsize: int,
        on_close: Callable[[Subscription[T]], None],
    ) -> None:
        if maxsize < 1:
            raise ValueError("a subscription queue holds at least one item")
        self.group = group
        self._snapshot = snapshot
        self._maxsize = maxsize
        self._on_close: Callable[[Subscription[T]], None] | None = on_close
        self._queue: deque[T] = deque()
        self._wakeup = asyncio.Event()
        self.needs_snapshot = False
        self.overflows = 0  # times the queue overflowed into a resync

    @property
    def closed(self) -> bool:
        return self._on_close is None

    def __len__(self) -> int:
        """Items queued and not yet read."""
        return len(self._queue)

    def push(self, item: T) -> None:
        if self.needs_snapshot or self.closed:
            return  # the coming snapshot covers it
        if len(self._queue) >= self._maxsize:
            self.overflows += 1
            self.resync()
            return
        self._queue.append(item)
        self._wakeup.set()

    def resync(self) -> None:
        """Drops what is queued; the next item read is a fresh snapshot."""
        self._queue.clear()
        self.needs_snapshot = True
        self._wakeup.set()

    def close(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is None:
            return
        self._queue.clear()
        self.needs_snapshot = False
        self._wakeup.set()
        on_close(self)

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            if self.closed:
                raise StopAsyncIteration
            if self.needs_snapshot:
                self.needs_snapshot = False
                return self._snapshot()
            if self._queue:
                return self._queue.popleft()
            self._wakeup.clear()
            await self._wakeup.wait()
