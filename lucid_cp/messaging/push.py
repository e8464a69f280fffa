"""Push delivery on one replica: for every service whose consumer configuration says push, the
next messages are claimed (the same compare-and-swap as a pull, so each delivery is one
replica's) and POSTed as JSON to a healthy, non-draining instance of the service (discovery's
index; healthy ones, else degraded ones; round-robin), at most ``maxInFlight`` at once for the
service (counting what the index shows in processing on every replica), each with the request
timeout ``ackWaitMs``.

2xx: delivered. 408, 429, 5xx, any other status that is not a 4xx, a timeout, a connection
error, or no instance to push to: the attempt failed, retried after the backoff (failed and
dead-lettered after maxAttempts). Any other 4xx: failed at once, dead-lettered.

The request: ``POST <path>`` with the message as the REST API shows it (``records.push_body``)
and the headers ``X-Lucid-Message-Id`` and ``X-Lucid-Attempt``. One connection per request,
status line only (``lucid_cp/discovery/health/http_client.py``); https when the instance's
endpoint protocol is https (verified against its ``tls.certAuthority`` when it has one).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.messaging.v1 import delivery_pb2 as dlpb
from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.api.lucid.messaging.v1 import queue_storage_pb2 as spb
from lucid_cp.clock import Clock
from lucid_cp.discovery.balancer import Balancer, eligible
from lucid_cp.discovery.health.http_post import JsonPoster
from lucid_cp.messaging import records
from lucid_cp.messaging.claims import Claimer, Wakeups
from lucid_cp.messaging.index import Entry, QueueIndex
from lucid_cp.messaging.queue import Change, MessageQueue
from lucid_cp.tasks import cancel_and_wait

log = logging.getLogger("lucid_cp.messaging.push")

ERROR_PAUSE = 0.5
RETRIED_4XX = frozenset({408, 429})


class Instances(Protocol):
    """What the pusher needs of discovery: a service's registered instances."""

    def of_service(self, service_name: str) -> Mapping[str, dpb.ServiceInstance]: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a push ended: the attempt outcome, its error text, whether it may be retried."""

    outcome: int
    error: str = ""
    retryable: bool = True

    @property
    def delivered(self) -> bool:
        return self.outcome == pb.ATTEMPT_OUTCOME_PUSHED


def outcome_of_status(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome(pb.ATTEMPT_OUTCOME_PUSHED)
    if 400 <= status < 500 and status not in RETRIED_4XX:
        return Outcome(pb.ATTEMPT_OUTCOME_PUSH_REFUSED, f"HTTP {status}", retryable=False)
    return Outcome(pb.ATTEMPT_OUTCOME_PUSH_FAILED, f"HTTP {status}")


@dataclass(eq=False)
class _Service:
    config: pb.ConsumerConfig
    in_flight: set[str] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class Pusher:
    def __init__(
        self,
        claimer: Claimer,
        queue: MessageQueue,
        index: QueueIndex,
        instances: Instances,
        wakeups: Wakeups,
        clock: Clock,
        *,
        user_agent: str,
    ) -> None:
        self._claimer = claimer
        self._queue = queue
        self._index = index
        self._instances = instances
        self._wakeups = wakeups
        self._clock = clock
        self._balancer = Balancer()
        self._poster = JsonPoster(clock, user_agent)
        self._services: dict[str, _Service] = {}
        self._pushes: set[asyncio.Task[None]] = set()
        self._running = False
        self.pushed = 0  # pushes answered 2xx by this replica
        index.listen_configs(self._config_changed)

    async def start(self) -> None:
        self._running = True
        for record in self._index.configs():
            self._config_changed(record.service_name, record)

    async def stop(self) -> None:
        self._running = False
        tasks = [s.task for s in self._services.values() if s.task is not None]
        tasks += list(self._pushes)
        self._services.clear()
        await cancel_and_wait(*tasks)

    def _config_changed(self, service: str, record: pb.ConsumerConfigResponse | None) -> None:
        if not self._running:
            return
        state = self._services.get(service)
        if record is None or record.config.delivery_mode != dlpb.DELIVERY_MODE_PUSH:
            if state is not None and state.task is not None:
                state.task.cancel()  # pushes in flight finish on their own
            self._services.pop(service, None)
            return
        if state is None:
            state = self._services[service] = _Service(record.config)
            state.task = asyncio.create_task(self._serve(service, state), name="messaging-push")
        else:
            state.config = record.config
            self._wakeups.notify(service)

    async def _serve(self, service: str, state: _Service) -> None:
        with self._wakeups.following(service):
            while True:
                generation = self._wakeups.generation(service)
                try:
                    next_due = self._round(service, state)
                except Exception as exc:  # a bug must not end pushing for the service
                    log.exception("push round for %s failed: %s", service, exc)
                    await self._clock.sleep(ERROR_PAUSE)
                    continue
                timeout = None if next_due is None else max(0.0, next_due - self._clock.now())
                await self._wakeups.wait(service, generation, timeout)

    def _round(self, service: str, state: _Service) -> float | None:
        busy = max(len(state.in_flight), self._index.processing(service))
        capacity = state.config.max_in_flight - busy
        if capacity <= 0:
            return None  # woken when one ends
        ready, next_due = self._claimer.reserve(service, capacity)
        for entry in ready:
            state.in_flight.add(entry.message_id)
            task = asyncio.create_task(self._push(service, state, entry), name="messaging-push-one")
            self._pushes.add(task)
            task.add_done_callback(self._pushes.discard)
        return next_due

    async def _push(self, service: str, state: _Service, entry: Entry) -> None:
        config = state.config
        claiming = False  # the claim releases the reservation itself
        try:
            instance = self._pick(service)
            if instance is None:
                await self._queue.no_instance(entry)
                return
            label = f"instance {instance.service_id}"
            claiming = True
            record = await self._claimer.claim(entry, label, config.ack_wait_ms / 1000.0)
            if record is None:
                return
            result = await self._post(instance, record, config.path or "/")
            await self._queue.settle(
                record.message.message_id, record.attempt, _change(result, label)
            )
            if result.delivered:
                self.pushed += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store: the deadline and the sweeper take over
            log.warning("pushing message %s failed: %s", entry.message_id, exc)
        finally:
            if not claiming:
                self._claimer.release(entry)
            state.in_flight.discard(entry.message_id)
            self._wakeups.notify(service)

    def _pick(self, service: str) -> dpb.ServiceInstance | None:
        candidates = eligible(self._instances.of_service(service).values())
        return self._balancer.pick(
            dpb.LOAD_BALANCE_ROUND_ROBIN, candidates, cursor_key=f"messaging/{service}"
        )

    async def _post(
        self, instance: dpb.ServiceInstance, record: spb.StoredMessage, path: str
    ) -> Outcome:
        body = json.dumps(records.push_body(record.message), separators=(",", ":")).encode()
        headers = {
            "X-Lucid-Message-Id": record.message.message_id,
            "X-Lucid-Attempt": str(record.attempt),
        }
        timeout = max(0.001, records.seconds(record.claim.ack_deadline) - self._clock.now())
        answer = await self._poster.post(instance.endpoint, path, body, timeout, headers)
        if isinstance(answer, str):
            return Outcome(pb.ATTEMPT_OUTCOME_PUSH_FAILED, answer)
        return outcome_of_status(answer)


def _change(result: Outcome, label: str) -> Change:
    def change(record: spb.StoredMessage, now: float) -> spb.StoredMessage:
        if result.delivered:
            return records.deliver(record, now, label, result.outcome)
        return records.fail_attempt(
            record, now, result.outcome, result.error, retryable=result.retryable
        )

    return change
