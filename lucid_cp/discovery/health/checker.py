"""The active health checker of one control-plane replica.

It follows the discovery index (no store reads of its own), checks the instances its replica
owns (``membership``), runs each instance's status machine in memory and hands transitions to the
``StatusWriter``. Steady state writes nothing; a transition is one compare-and-swap write.

What the store holds (and Discover and Watch show) is the health as of the last transition:
``timestamp``/``lastCheck`` are when it happened, the counters and ``responseTime``/``error``
are those of the deciding check. The live counters between transitions stay in the checking
replica's memory; a replica taking over an instance starts from the stored status.

A change of an instance's health by anyone else (a manual UpdateHealth, another replica during a
hand-over) is adopted: the status machine takes that status and counts afresh, ignoring rounds
that were already running. Instances are dropped (checks stop, gRPC channels close) the moment
they leave the index, and re-registration under a new lease starts a new status machine.
Hosts under ``.onion`` are not actively checked (RFC 7686: never resolved through DNS, and the
control plane does not route through Tor); they keep the status reported by UpdateHealth.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from dataclasses import dataclass
from typing import Protocol

from google.protobuf import timestamp_pb2

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.clock import Clock
from lucid_cp.discovery.health.membership import Membership
from lucid_cp.discovery.health.plan import CheckKind, CheckPlan
from lucid_cp.discovery.health.probes import ProtocolProber, RoundResult, run_round
from lucid_cp.discovery.health.scheduler import CheckScheduler
from lucid_cp.discovery.health.state import DEGRADED, HealthMachine, Outcome
from lucid_cp.discovery.health.writer import StatusWriter, WriteOutcome
from lucid_cp.discovery.index import InstanceIndex
from lucid_cp.store.base import KeyWriter
from lucid_cp.tasks import cancel_and_wait

log = logging.getLogger("lucid_cp.discovery.health")

RESCAN_PERIOD = 0.1  # seconds: how often ownership changes are looked for without index changes
COALESCE = 0.05  # seconds: bursts of index changes are applied together


class HealthObserver(Protocol):
    def round_done(self, kind: str, outcome: str, seconds: float, lateness: float) -> None: ...

    def transition(self, before: int, after: int) -> None: ...


class _NoObserver:
    def round_done(self, kind: str, outcome: str, seconds: float, lateness: float) -> None:
        return None

    def transition(self, before: int, after: int) -> None:
        return None


@dataclass(eq=False, slots=True)
class Tracked:
    instance: pb.ServiceInstance  # latest from the index (never mutated)
    plan: CheckPlan
    machine: HealthMachine
    stored: pb.HealthStatus  # the health the store holds, as far as this replica knows
    epoch: int = 0  # bumped on adopt: rounds started before it are ignored


def checkable(instance: pb.ServiceInstance) -> bool:
    return not instance.endpoint.host.rstrip(".").lower().endswith(".onion")


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def describe_target(instance: pb.ServiceInstance, kind: CheckKind) -> str:
    ep = instance.endpoint
    authority = f"[{ep.host}]:{ep.port}" if ":" in ep.host else f"{ep.host}:{ep.port}"
    if kind is CheckKind.HTTP:
        scheme = "https" if ep.protocol == pb.PROTOCOL_HTTPS else "http"
        return f"{scheme}://{authority}{instance.health_check.endpoint}"
    if kind is CheckKind.GRPC:
        scheme = "grpcs" if ep.protocol == pb.PROTOCOL_GRPCS else "grpc"
        return f"{scheme}://{authority}/{instance.health_check.grpc_check.service}"
    return f"tcp://{authority}"


class HealthChecker:
    def __init__(
        self,
        store: KeyWriter,
        index: InstanceIndex,
        clock: Clock,
        prober: ProtocolProber,
        membership: Membership,
        *,
        observer: HealthObserver | None = None,
        max_concurrency: int = 1000,
        write_concurrency: int = 16,
        rescan_period: float = RESCAN_PERIOD,
        rng: random.Random | None = None,
    ) -> None:
        self._index = index
        self._clock = clock
        self._prober = prober
        self.membership = membership
        self._observer = observer or _NoObserver()
        self._rescan_period = rescan_period
        self._scheduler = CheckScheduler(max_concurrency, clock, rng=rng)
        self.writer = StatusWriter(store, self._written, clock, concurrency=write_concurrency)
        self._tracked: dict[str, Tracked] = {}
        self._owner_cache: dict[str, bool] = {}
        self._seen = (-1, -1)  # (index revision, membership generation) of the last scan
        self._task: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.membership.start()
        self.writer.start()
        self._task = asyncio.create_task(self._follow_index(), name="health-checker")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._scheduler.stop()
        await self.writer.stop()
        await asyncio.gather(*self._releases, return_exceptions=True)
        await self._prober.close()
        await self.membership.stop()
        self._tracked.clear()

    # -- introspection -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tracked)

    def checked(self) -> frozenset[str]:
        """serviceIds this replica is checking now."""
        return frozenset(self._tracked)

    # -- following the index -----------------------------------------------------------------

    async def _follow_index(self) -> None:
        while True:
            try:
                self.reconcile()
            except Exception:
                log.exception("health checker reconcile failed")
            await self._index.wait_for(self._index.revision + 1, self._rescan_period)
            await self._clock.sleep(COALESCE)

    def reconcile(self) -> None:
        """Brings the tracked set in line with the index and this replica's share: only the
        instances that changed since the last call, or everything after a membership change
        or when the index's history does not reach back (start, compaction)."""
        generation = self.membership.generation
        revision = self._index.revision
        if (revision, generation) == self._seen:
            return
        changes = None
        if generation == self._seen[1]:
            changes = self._index.changes_since(self._seen[0])
        if changes is None:
            self._owner_cache.clear()
            self._rescan()
        else:
            for service_id in dict.fromkeys(c.instance.service_id for c in changes):
                instance = self._index.get(service_id)
                if instance is None or not self._wanted(instance):
                    if service_id in self._tracked:
                        self._drop(service_id)
                else:
                    self._follow(instance)
        self._seen = (revision, generation)

    def _rescan(self) -> None:
        present: set[str] = set()
        for instance in self._index.ordered():
            if self._wanted(instance):
                present.add(instance.service_id)
                self._follow(instance)
        for service_id in [s for s in self._tracked if s not in present]:
            self._drop(service_id)

    def _wanted(self, instance: pb.ServiceInstance) -> bool:
        return checkable(instance) and self._owns(instance.service_id)

    def _follow(self, instance: pb.ServiceInstance) -> None:
        tracked = self._tracked.get(instance.service_id)
        if tracked is not None and tracked.instance.registered_at != instance.registered_at:
            self._drop(instance.service_id)  # re-registered: a new instance under the same id
            tracked = None
        if tracked is None:
            self._track(instance)
        elif tracked.instance.revision != instance.revision:
            self._observe(tracked, instance)

    def _owns(self, service_id: str) -> bool:
        owned = self._owner_cache.get(service_id)
        if owned is None:
            owned = self._owner_cache[service_id] = self.membership.owns(service_id)
        return owned

    def _track(self, instance: pb.ServiceInstance) -> None:
        plan = CheckPlan.of(instance)
        machine = HealthMachine(plan.thresholds, instance.health.status or instance.status)
        self._tracked[instance.service_id] = Tracked(instance, plan, machine, instance.health)
        job = functools.partial(self._round, instance.service_id)
        self._scheduler.schedule(instance.service_id, plan.interval, job)

    def _drop(self, service_id: str) -> None:
        tracked = self._tracked.pop(service_id, None)
        self._owner_cache.pop(service_id, None)
        self._scheduler.cancel(service_id)
        self.writer.discard(service_id)
        if tracked is not None and tracked.plan.kind is CheckKind.GRPC:
            task = asyncio.create_task(self._prober.for_kind(CheckKind.GRPC).release(service_id))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    def _observe(self, tracked: Tracked, instance: pb.ServiceInstance) -> None:
        tracked.instance = instance
        health = instance.health
        if health == tracked.stored or health == self.writer.inflight(instance.service_id):
            return  # unchanged, or the echo of this replica's own write
        self._adopt(tracked, health)

    def _adopt(self, tracked: Tracked, health: pb.HealthStatus) -> None:
        tracked.stored = health
        tracked.machine.adopt(health.status)
        tracked.epoch += 1
        self.writer.discard(tracked.instance.service_id)

    def _written(
        self, service_id: str, outcome: WriteOutcome, record: pb.ServiceInstance | None
    ) -> None:
        tracked = self._tracked.get(service_id)
        if tracked is None or record is None:
            return
        if outcome is WriteOutcome.WRITTEN:
            tracked.stored = record.health
        elif outcome is WriteOutcome.SUPERSEDED and record.health != tracked.stored:
            self._adopt(tracked, record.health)

    # -- one round ---------------------------------------------------------------------------

    async def _round(self, service_id: str, due: float) -> None:
        tracked = self._tracked.get(service_id)
        if tracked is None:
            return
        epoch, plan = tracked.epoch, tracked.plan
        result = await run_round(
            self._prober.for_kind(plan.kind),
            tracked.instance,
            plan,
            self._scheduler.slots,
            self._clock,
        )
        if self._tracked.get(service_id) is not tracked or tracked.epoch != epoch:
            return  # dropped, or its health was set from outside while this round ran
        if not result.ok:
            outcome = Outcome.FAIL
        elif result.last.seconds > plan.slow_after:
            outcome = Outcome.SLOW
        else:
            outcome = Outcome.PASS
        lateness = max(0.0, result.started - due)
        self._observer.round_done(plan.kind.value, outcome.value, result.last.seconds, lateness)
        before = tracked.machine.status
        after = tracked.machine.observe(outcome)
        if after is None:
            return
        self._observer.transition(before, after)
        health = self._status(tracked, result, outcome)
        self.writer.submit(service_id, health, tracked.stored)

    def _status(self, tracked: Tracked, result: RoundResult, outcome: Outcome) -> pb.HealthStatus:
        machine, plan, last = tracked.machine, tracked.plan, result.last
        now = _timestamp(self._clock.now())
        error = last.error
        if outcome is Outcome.SLOW and machine.status == DEGRADED:
            error = (
                f"slow response: {last.seconds * 1000:.0f} ms > "
                f"{plan.slow_after * 1000:.0f} ms (half the timeout)"
            )
        health = pb.HealthStatus(
            status=machine.status,
            consecutive_failures=machine.failures,
            consecutive_successes=machine.successes,
            response_time=round(last.seconds * 1000, 3),
            error=error,
            source=pb.HEALTH_SOURCE_ACTIVE,
        )
        health.timestamp.CopyFrom(now)
        health.last_check.CopyFrom(now)
        health.details.update(
            {
                "check": plan.kind.value,
                "target": describe_target(tracked.instance, plan.kind),
                "attempts": result.attempts,
                "replica": self.membership.replica_id,
                "slowThresholdMs": round(plan.slow_after * 1000, 3),
                **last.detail,
            }
        )
        return health
