"""Push delivery: for each push subscription, exactly one replica POSTs its events.

A reconcile loop (woken by subscription and owner-key changes) claims every push subscription
nobody holds (``owners``: a create-only key under this replica's lease) and runs one delivery
loop per subscription it holds; a deleted subscription's loop stops and lets go.

One delivery loop: from the stored cursor, the next ``batchSize`` matching events (waiting on the
tail when there are none) are POSTed as JSON ({"subscriptionId", "events": [REST JSON of each],
"cursor"}) to a healthy instance of the subscriber service (discovery; healthy, else degraded,
never draining; round-robin) at ``pushPath``. 2xx: delivered. Anything else (another status, a
timeout, a refused connection, no usable instance) is retried after ``retryDelay`` ms, up to
``maxRetries`` times; then the batch is dead-lettered for the subscription (a DeadBatch record:
its sequences, the last error, the attempts) and the cursor moves on. Either way the cursor
write is guarded by the owner key, so a replica that lost its lease cannot move it. A cursor that
fell behind retention is recorded as a dead batch of the lost events and moves to resumeCursor.
Events that match nothing move the cursor too (written once the loop is idle).

Delivery is at least once: a replica that dies after a POST and before the cursor write has its
batch POSTed again by the next owner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol

from google.protobuf import timestamp_pb2

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.clock import Clock
from lucid_cp.discovery.balancer import Balancer, eligible
from lucid_cp.discovery.health.http_post import JsonPoster
from lucid_cp.errors import Conflict
from lucid_cp.events.errors import CursorBehindRetention, SubscriptionNotFound
from lucid_cp.events.matching import Matcher
from lucid_cp.events.owners import Owners
from lucid_cp.events.reader import Batch, EventReader
from lucid_cp.events.subscriptions import SubscriptionIndex, SubscriptionWriter, is_push
from lucid_cp.events.wire import push_body
from lucid_cp.store.base import StoreError
from lucid_cp.tasks import cancel_and_wait

log = logging.getLogger("lucid_cp.events.push")

# Seconds one POST may take (connect, send, status line).
PUSH_TIMEOUT = 10.0
# Seconds between retries of a loop that hit a store error.
STORE_RETRY = 1.0


class Instances(Protocol):
    """What push needs of discovery: the registered instances of a service."""

    def of_service(self, service_name: str) -> Mapping[str, dpb.ServiceInstance]: ...


class PushClient:
    """POSTs push batches (the shared JsonPoster, with the push timeout)."""

    def __init__(self, clock: Clock, *, timeout: float = PUSH_TIMEOUT, user_agent: str) -> None:
        self._poster = JsonPoster(clock, user_agent)
        self._timeout = timeout

    async def post(self, instance: dpb.ServiceInstance, path: str, body: bytes) -> str:
        """ "" when the instance answered 2xx, else what went wrong."""
        ep = instance.endpoint
        answer = await self._poster.post(ep, path, body, self._timeout)
        if isinstance(answer, int) and 200 <= answer < 300:
            return ""
        what = f"HTTP {answer}" if isinstance(answer, int) else answer
        return f"POST {ep.host}:{ep.port}{path}: {what}"


class Pusher:
    def __init__(
        self,
        *,
        index: SubscriptionIndex,
        writer: SubscriptionWriter,
        reader: EventReader,
        owners: Owners,
        instances: Instances,
        client: PushClient,
        clock: Clock,
    ) -> None:
        self._index = index
        self._writer = writer
        self._reader = reader
        self._owners = owners
        self._instances = instances
        self._client = client
        self._clock = clock
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._balancer = Balancer()  # round-robin over the subscriber's instances
        self.delivered = 0  # batches POSTed with 2xx (metrics, tests)
        self.dead = 0  # batches dead-lettered

    @property
    def delivering(self) -> frozenset[str]:
        """The subscriptions this replica delivers now."""
        return frozenset(s for s, t in self._loops.items() if not t.done())

    async def start(self) -> None:
        self._index.on_change(self._wake.set)
        self._owners.on_change(self._wake.set)
        self._owners.on_lost(self._stop_all)
        self._wake.set()
        self._task = asyncio.create_task(self._reconcile_forever(), name="events-push")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        loops = list(self._loops.values())
        self._loops.clear()
        await cancel_and_wait(*loops)

    def _stop_all(self) -> None:
        for loop in self._loops.values():
            loop.cancel()
        self._loops.clear()
        self._wake.set()

    # -- who delivers what -------------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._reconcile()
            except StoreError as exc:
                log.warning("events push: reconcile failed (%s); retrying", exc)
                await self._clock.sleep(STORE_RETRY)
                self._wake.set()

    async def _reconcile(self) -> None:
        wanted = {r.subscription_id for r in self._index.all() if is_push(r)}
        for sid in list(self._loops):
            loop = self._loops[sid]
            if loop.done() or sid not in wanted:
                del self._loops[sid]
                loop.cancel()
                if sid not in wanted:
                    await self._owners.release(sid)
        for sid in sorted(wanted - set(self._loops)):
            holder = self._owners.owner_of(sid)
            if holder is not None and holder.lease != self._owners.lease:
                continue  # another replica delivers it
            if await self._owners.claim(sid):
                self._loops[sid] = asyncio.create_task(self._deliver(sid), name=f"push-{sid}")

    # -- one subscription --------------------------------------------------------------------

    async def _deliver(self, sid: str) -> None:
        try:
            while True:
                try:
                    await self._deliver_from_store(sid)
                    return
                except (StoreError, Conflict) as exc:
                    if isinstance(exc, Conflict) and not await self._owners.holds(sid):
                        return  # another replica took over
                    log.warning("events push %s: %s; retrying", sid, exc)
                    await self._clock.sleep(STORE_RETRY)
        except SubscriptionNotFound:
            await self._owners.release(sid)
        except Exception:
            log.exception("events push %s: delivery failed; restarting it", sid)
            await self._clock.sleep(STORE_RETRY)
        finally:
            self._wake.set()  # the reconcile loop looks again

    async def _deliver_from_store(self, sid: str) -> None:
        record = await self._writer.read(sid)
        sub = record.subscription
        matcher = Matcher.of(sub)
        cursor = record.cursor
        while True:
            try:
                batch = await self._reader.matching(cursor, sub.batch_size, matcher)
            except CursorBehindRetention as gap:
                lost = _dead(cursor + 1, gap.resume_cursor, gap.lost, 0, str(gap), self._clock)
                cursor = await self._advance(sid, gap.resume_cursor, lost)
                continue
            if not batch.events:
                if batch.cursor > cursor:
                    cursor = batch.cursor
                    if not batch.more:
                        cursor = await self._advance(sid, cursor, None)
                    continue
                await self._reader.wait_beyond(cursor)
                continue
            error, attempts = await self._post(record, batch)
            dead: pb.DeadBatch | None = None
            if error:
                first, last = batch.events[0].sequence, batch.events[-1].sequence
                dead = _dead(first, last, len(batch.events), attempts, error, self._clock)
                log.warning(
                    "events push %s: batch %d..%d dead-lettered: %s", sid, first, last, error
                )
                self.dead += 1
            else:
                self.delivered += 1
            cursor = await self._advance(sid, batch.cursor, dead)

    async def _post(self, record: pb.EventSubscriptionResponse, batch: Batch) -> tuple[str, int]:
        """("" or the last error, attempts made)."""
        sub = record.subscription
        body = push_body(record.subscription_id, batch.events, batch.cursor)
        attempts = 0
        while True:
            attempts += 1
            error = await self._post_once(sub.subscriber_id, sub.push_path, body)
            if not error or attempts > sub.max_retries:
                return error, attempts
            await self._clock.sleep(sub.retry_delay / 1000)

    async def _post_once(self, service: str, path: str, body: bytes) -> str:
        candidates = eligible(self._instances.of_service(service).values())
        if not candidates:
            return f"no healthy instance of service {service} is registered"
        instance = self._balancer.pick(
            dpb.LOAD_BALANCE_ROUND_ROBIN, candidates, cursor_key=f"events/{service}"
        )
        assert instance is not None  # candidates is not empty
        return await self._client.post(instance, path, body)

    async def _advance(self, sid: str, cursor: int, dead: pb.DeadBatch | None) -> int:
        advanced = await self._writer.advance(
            sid, cursor, dead=[dead] if dead is not None else [], guard=self._owners.guard(sid)
        )
        return max(cursor, advanced.record.cursor)


def _dead(
    first: int, last: int, events: int, attempts: int, error: str, clock: Clock
) -> pb.DeadBatch:
    at = timestamp_pb2.Timestamp()
    at.FromNanoseconds(int(clock.now() * 1e9))
    return pb.DeadBatch(
        first_sequence=first,
        last_sequence=last,
        events=events,
        at=at,
        error=error[:1024],
        attempts=attempts,
    )
