"""Background tasks of the event system: one way to end them."""

from __future__ import annotations

import asyncio
import contextlib


async def cancelled(task: asyncio.Task[None] | None) -> None:
    """Cancels ``task`` (None: nothing) and waits until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
