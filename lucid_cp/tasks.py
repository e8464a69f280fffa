"""Background tasks: one way to end them.

Every part that runs background tasks ends them at ``stop()`` the same way: cancel, then wait
until each has really ended, so nothing of it still runs (or writes) once ``stop()`` returns.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("lucid_cp.tasks")


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancels ``tasks`` (None: skipped) and waits until every one has ended.

    How a task ended is not raised: its cancellation is the point, and an error it had already
    ended with is logged rather than failing the stop that reaped it (the rest of that stop
    still has to run). The caller being cancelled while it waits is raised as usual (the tasks
    are cancelled already and end on their own).
    """
    pending = [task for task in tasks if task is not None]
    if not pending:
        return
    for task in pending:
        task.cancel()
    await asyncio.wait(pending)
    for task in pending:
        if not task.cancelled() and (exc := task.exception()) is not None:
            name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
            log.error("background task %s had failed before it was stopped", name, exc_info=exc)


def cancel(task: asyncio.Future[Any]) -> None:
    """Cancels ``task`` without waiting: for synchronous callbacks (a finished RPC's done
    callback), which cannot wait. The task ends at its next await; where the caller can wait,
    use :func:`cancel_and_wait`."""
    task.cancel()
