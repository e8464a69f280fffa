"""The event stream system as a module (see lucid_cp.system): declarations, and the build, start
and stop of its log, tail, subscription index, push delivery, retention sweeper and the feeds of
the control plane's own events. It builds on discovery (push resolves subscribers through its
index; deregistrations and instance changes become events), started before it.

Start order: the log's appender, the tail, the subscription index, the owner keys (under the
process's replica lease), then push, retention and the feeds (their checkpoint, publisher, then
the feeds). Stop in reverse: the feeds stop publishing, their publisher appends what it still
holds and the checkpoint is written, push loops and the sweeper end, the owner keys are deleted
(another replica takes over at once), the tail and index stop, the appender last.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

import grpc
from google.protobuf.descriptor import FileDescriptor

from lucid_cp.api.lucid.messaging.v1 import events_pb2, events_pb2_grpc
from lucid_cp.config import RateLimit, positive_int
from lucid_cp.discovery.module import DiscoverySystem
from lucid_cp.errors import InvalidArgument
from lucid_cp.events.checkpoint import Checkpoint
from lucid_cp.events.control import EventControl
from lucid_cp.events.errors import STATUS_ROWS, InvalidEventRequest
from lucid_cp.events.feed import EXPIRY_GRACE, MeshFeed, Publisher, ServiceFeed
from lucid_cp.events.log import EventLog
from lucid_cp.events.owners import Owners
from lucid_cp.events.push import PUSH_TIMEOUT, PushClient, Pusher
from lucid_cp.events.reader import EventReader
from lucid_cp.events.retention import Sweeper
from lucid_cp.events.service import EventServicer
from lucid_cp.events.subscriptions import SubscriptionIndex, SubscriptionWriter
from lucid_cp.events.tail import RING, RING_BYTES, LogTail
from lucid_cp.rpc.metrics import count_from
from lucid_cp.system import Environment


@dataclass(frozen=True, slots=True)
class EventSettings:
    # Events are kept this long after their append (seconds) ...
    retention_seconds: int = 7 * 24 * 3600
    # ... and at most this many (the newest).
    retention_count: int = 1_000_000
    # Seconds between retention sweeps.
    retention_interval: float = 10.0
    # Seconds before a lease that went away unexplained is published as service.expired.
    expiry_grace: float = EXPIRY_GRACE
    # Newest events this replica keeps in memory for followers at the head.
    tail_ring: int = RING
    tail_ring_bytes: int = RING_BYTES
    # Seconds one push POST may take.
    push_timeout: float = PUSH_TIMEOUT
    # Publish the registry's and the mesh's changes as events (source "lucid-cp").
    own_events: bool = True


class _Stoppable(Protocol):
    async def stop(self) -> None: ...


class EventSystem:
    name: ClassVar[str] = "events"
    files: ClassVar[tuple[FileDescriptor, ...]] = (events_pb2.DESCRIPTOR,)
    # The seed's table (api-spec.md, "Rate Limiting"), per principal.
    rate_limits: ClassVar[Mapping[str, RateLimit]] = {
        "events": RateLimit(500),
        "subscriptions": RateLimit(100),
    }
    status_rows: ClassVar[Mapping[type[Exception], int]] = STATUS_ROWS
    invalid_request: ClassVar[type[InvalidArgument]] = InvalidEventRequest
    settings_type: ClassVar[type[EventSettings]] = EventSettings

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        defaults = EventSettings()
        parser.add_argument(
            "--event-retention-seconds",
            type=positive_int,
            default=defaults.retention_seconds,
            metavar="S",
            help="keep events this long after their append (default %(default)s: 7 days)",
        )
        parser.add_argument(
            "--event-retention-count",
            type=positive_int,
            default=defaults.retention_count,
            metavar="N",
            help="keep at most this many events, the newest (default %(default)s)",
        )

    @classmethod
    def settings_from(cls, args: argparse.Namespace) -> EventSettings:
        return EventSettings(
            retention_seconds=args.event_retention_seconds,
            retention_count=args.event_retention_count,
        )

    def __init__(self, env: Environment) -> None:
        self._env = env
        self.settings = settings = env.settings.section(EventSettings)
        discovery = env.system(DiscoverySystem)
        store, clock = env.store, env.clock
        self.log = EventLog(store, clock)
        self.tail = LogTail(
            store, clock, ring=settings.tail_ring, ring_bytes=settings.tail_ring_bytes
        )
        self.reader = EventReader(self.log, self.tail)
        self.index = SubscriptionIndex(store, clock=clock)
        self.writer = SubscriptionWriter(store)
        self.control = EventControl(self.log, self.reader, self.index, self.writer, clock)
        self.owners = Owners(store, clock, discovery.replica_id, lease=env.lease)
        self.pusher = Pusher(
            index=self.index,
            writer=self.writer,
            reader=self.reader,
            owners=self.owners,
            instances=discovery.index,
            client=PushClient(
                clock,
                timeout=settings.push_timeout,
                user_agent=f"lucid-events/{discovery.replica_id}",
            ),
            clock=clock,
        )
        self.sweeper = Sweeper(
            store,
            self.owners,
            clock,
            count=settings.retention_count,
            seconds=settings.retention_seconds,
            interval=settings.retention_interval,
        )
        self.publisher = Publisher(lambda e: self.log.append(e, internal=True), clock)
        self.checkpoint = Checkpoint(store, clock)
        self.service_feed = ServiceFeed(
            discovery.index,
            self.publisher,
            clock,
            grace=settings.expiry_grace,
            checkpoint=self.checkpoint,
        )
        self.mesh_feed = MeshFeed(store, self.publisher, clock)
        self._registry = discovery.registry
        self._started: list[_Stoppable] = []

    async def start(self) -> None:
        await self.log.start()
        self._started.append(self.log)
        await self.tail.start()
        self._started.append(self.tail)
        await self.index.start()
        self._started.append(self.index)
        await self.owners.start()
        self._started.append(self.owners)
        await self.pusher.start()
        self._started.append(self.pusher)
        await self.sweeper.start()
        self._started.append(self.sweeper)
        if self.settings.own_events:
            await self.checkpoint.start()  # stopped after the publisher: the last write
            self._started.append(self.checkpoint)
            self.publisher.start()
            self._started.append(self.publisher)
            self.service_feed.start()
            self._started.append(self.service_feed)
            self._registry.on_deregistered(self.service_feed.on_deregistered)
            await self.mesh_feed.start()
            self._started.append(self.mesh_feed)
        self._metrics()

    def _metrics(self) -> None:
        registry, pusher, log, tail = self._env.metrics, self.pusher, self.log, self.tail
        index = self.index
        count_from(
            registry,
            "lucid_events_read_your_writes_timeouts",
            "Subscription writes answered before this replica's index had applied them.",
            lambda: index.read_your_writes_timeouts,
        )
        count_from(
            registry, "lucid_events_append_txns", "Event append txns committed.", lambda: log.txns
        )
        count_from(
            registry,
            "lucid_events_push_batches_delivered",
            "Push batches answered 2xx.",
            lambda: pusher.delivered,
        )
        count_from(
            registry,
            "lucid_events_push_batches_dead",
            "Push batches dead-lettered after every retry.",
            lambda: pusher.dead,
        )
        count_from(
            registry,
            "lucid_events_tail_resyncs",
            "Times the log tail started over at the head (start, compaction).",
            lambda: tail.resyncs,
        )

    def register(self, server: grpc.aio.Server) -> None:
        events_pb2_grpc.add_EventServiceServicer_to_server(
            EventServicer(self.control),  # type: ignore[arg-type]
            server,
        )

    async def stop(self) -> None:
        while self._started:
            part = self._started.pop()
            await part.stop()
