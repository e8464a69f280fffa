"""The feed's publisher on its own (fake append, fake clock): only an unavailable store is
retried, with backoff on the clock; an event the store refuses for good is dropped and the next
ones go on; data over the 64 KiB event limit becomes a summary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from google.protobuf import struct_pb2

from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.clock import FakeClock
from lucid_cp.events.feed import MAX_DATA_BYTES, Publisher, event_id
from lucid_cp.store.base import RequestTooLargeError, StoreUnavailableError, TooManyOpsError

from .conftest import until


@dataclass
class FakeAppend:
    """Fails an event's first ``failures[eventType]`` attempts with the given errors."""

    failures: dict[str, list[Exception]] = field(default_factory=dict)
    attempts: list[str] = field(default_factory=list)
    stored: list[pb.ServiceEvent] = field(default_factory=list)

    async def __call__(self, event: pb.ServiceEvent) -> object:
        self.attempts.append(event.event_type)
        queued = self.failures.get(event.event_type)
        if queued:
            raise queued.pop(0)
        self.stored.append(event)
        return None


@dataclass
class Running:
    publisher: Publisher
    append: FakeAppend
    clock: FakeClock


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    append, clock = FakeAppend(), FakeClock()
    publisher = Publisher(append, clock)
    publisher.start()
    try:
        yield Running(publisher, append, clock)
    finally:
        await publisher.stop()


def _publish(publisher: Publisher, event_type: str, data: struct_pb2.Struct | None = None) -> None:
    publisher.publish(event_type, "/k", "kind", 7, data, {"name": "n"})


@pytest.mark.parametrize("error", [RequestTooLargeError("big"), TooManyOpsError("ops")])
async def test_a_refused_event_is_dropped_and_the_next_ones_go_on(
    running: Running, error: Exception
) -> None:
    running.append.failures["a.refused"] = [error]
    _publish(running.publisher, "a.refused")
    _publish(running.publisher, "a.next")
    await asyncio.wait_for(running.publisher.drain(), 5)
    assert running.append.attempts == ["a.refused", "a.next"]  # tried once, never again
    assert [e.event_type for e in running.append.stored] == ["a.next"]
    assert (running.publisher.published, running.publisher.dropped) == (1, 1)


async def test_an_unavailable_store_is_retried_with_backoff_on_the_clock(running: Running) -> None:
    running.append.failures["a.retried"] = [StoreUnavailableError("down")] * 3
    _publish(running.publisher, "a.retried")
    _publish(running.publisher, "a.next")
    attempts, clock = running.append.attempts, running.clock
    for made, delay in enumerate([0.25, 0.5, 1.0], start=1):

        def sleeping(made: int = made) -> bool:
            return len(attempts) == made and clock.sleepers == 1

        await until(sleeping, what=f"the backoff after attempt {made}")
        clock.advance(delay - 0.01)
        # Not before the delay: advance() wakes every sleep that is due synchronously, so the
        # backoff still pending on the clock is exact, no sleep needed.
        assert clock.sleepers == 1 and len(attempts) == made
        clock.advance(0.01)
    await asyncio.wait_for(running.publisher.drain(), 5)
    assert [e.event_type for e in running.append.stored] == ["a.retried", "a.next"]
    assert running.publisher.dropped == 0


async def test_data_over_the_event_limit_is_a_summary(running: Running) -> None:
    big = struct_pb2.Struct()
    big.update({"policy": {"blob": "x" * (MAX_DATA_BYTES + 1)}})
    small = struct_pb2.Struct()
    small.update({"policy": {"name": "n"}})
    _publish(running.publisher, "policy.updated", big)
    _publish(running.publisher, "policy.updated", small)
    await asyncio.wait_for(running.publisher.drain(), 5)
    summarized, whole = running.append.stored
    assert summarized.event_id == event_id("/k", "kind", 7)
    assert dict(summarized.data) == {"name": "n", "key": "/k", "revision": 7, "truncated": True}
    assert summarized.data.ByteSize() <= MAX_DATA_BYTES
    assert whole.data == small
