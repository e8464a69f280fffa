"""lucid_cp.tasks: background tasks end the same way everywhere."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lucid_cp.tasks import cancel, cancel_and_wait


async def test_cancel_and_wait_ends_every_task_and_skips_none() -> None:
    ended: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # still running after its cancellation was asked for
            ended.append(name)

    a = asyncio.create_task(forever("a"))
    b = asyncio.create_task(forever("b"))
    await asyncio.sleep(0)
    await cancel_and_wait(a, None, b)
    assert sorted(ended) == ["a", "b"] and a.cancelled() and b.cancelled()
    await cancel_and_wait()
    await cancel_and_wait(None)
    await cancel_and_wait(a)  # already ended: nothing to do


async def test_a_task_that_had_failed_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fail(), name="failing-part")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="lucid_cp.tasks"):
        await cancel_and_wait(task)
    assert "failing-part" in caplog.text and "boom" in caplog.text


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    release = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()

    task = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.01)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    release.set()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 1)
    assert task.cancelled()


async def test_cancel_from_a_synchronous_callback() -> None:
    task = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    cancel(task)
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
