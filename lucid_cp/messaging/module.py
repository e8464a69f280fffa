"""The message queue as a module (see lucid_cp.system): declarations, and the build, start and
stop of its index, core, deliverers and sweeper. It builds on discovery (started before it):
push delivery resolves the destination's instances through discovery's index.

Start order: the index (it lists /lucid-messaging/), then the pusher and the sweeper; the
dispatcher starts a task per service when its first consumer connects. Stop in reverse: the
sweeper, the pusher (pushes in flight are cancelled: their messages are redelivered after their
ack deadline), open Consume streams end, then the index."""

from __future__ import annotations

import argparse
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import grpc
from google.protobuf.descriptor import FileDescriptor

from lucid_cp.api.lucid.messaging.v1 import messages_pb2, messages_pb2_grpc
from lucid_cp.config import RateLimit
from lucid_cp.discovery.module import DiscoverySystem
from lucid_cp.errors import InvalidArgument
from lucid_cp.messaging.claims import Claimer, Wakeups
from lucid_cp.messaging.dispatch import Dispatcher
from lucid_cp.messaging.errors import STATUS_ROWS, InvalidMessageRequest
from lucid_cp.messaging.index import QueueIndex
from lucid_cp.messaging.push import Pusher
from lucid_cp.messaging.queue import MessageQueue
from lucid_cp.messaging.service import MessageServicer
from lucid_cp.messaging.sweeper import Sweeper
from lucid_cp.rpc.metrics import count_from
from lucid_cp.system import Environment


@dataclass(frozen=True, slots=True)
class MessagingSettings:
    # Seconds between sweeps (ack deadlines, expiry, retention) of each replica's index.
    sweep_interval: float = 0.5
    # Seconds a final message (delivered, expired, failed and replayed... not dead-lettered)
    # stays readable before the sweeper deletes it.
    retention: float = 86_400.0


class MessagingSystem:
    name: ClassVar[str] = "messaging"
    files: ClassVar[tuple[FileDescriptor, ...]] = (messages_pb2.DESCRIPTOR,)
    # The seed's table (api-spec.md, "Rate Limiting"): messages 1000/min per principal. Every
    # method of the queue shares it; a Consume stream counts once, when it opens.
    rate_limits: ClassVar[Mapping[str, RateLimit]] = {"messages": RateLimit(1000)}
    status_rows: ClassVar[Mapping[type[Exception], int]] = STATUS_ROWS
    invalid_request: ClassVar[type[InvalidArgument]] = InvalidMessageRequest
    settings_type: ClassVar[type[MessagingSettings]] = MessagingSettings

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--message-retention",
            type=float,
            default=MessagingSettings().retention,
            metavar="SECONDS",
            help="how long delivered, expired and failed messages stay readable before they "
            "are deleted; dead letters stay until replayed (default %(default)s)",
        )

    @classmethod
    def settings_from(cls, args: argparse.Namespace) -> MessagingSettings:
        return MessagingSettings(retention=args.message_retention)

    def __init__(self, env: Environment) -> None:
        self._env = env
        settings = env.settings.section(MessagingSettings)
        discovery = env.system(DiscoverySystem)
        # Per process, as the sidecar's: only names who holds a claim.
        replica = f"{discovery.replica_id}-{secrets.token_hex(3)}"
        self.index = QueueIndex(env.store, clock=env.clock)
        self.queue = MessageQueue(env.store, self.index, env.clock, replica)
        self.wakeups = Wakeups(env.clock)
        self.index.listen(self.wakeups.on_change)
        self.claimer = Claimer(self.queue, self.index, env.clock)
        self.dispatcher = Dispatcher(
            self.claimer, self.index, self.wakeups, env.clock, replica, self.queue.consumer_config
        )
        self.queue.direct = self.dispatcher.reserve_direct
        self.pusher = Pusher(
            self.claimer,
            self.queue,
            self.index,
            discovery.index,
            self.wakeups,
            env.clock,
            user_agent=f"lucid-messaging/{replica}",
        )
        self.sweeper = Sweeper(
            self.queue,
            self.index,
            env.clock,
            interval=settings.sweep_interval,
            retention=settings.retention,
        )

    async def start(self) -> None:
        await self.index.start()
        await self.pusher.start()
        await self.sweeper.start()
        pusher, sweeper = self.pusher, self.sweeper
        metrics = self._env.metrics
        count_from(
            metrics,
            "lucid_messaging_pushed",
            "Messages pushed by this replica and answered 2xx.",
            lambda: pusher.pushed,
        )
        dispatcher, writes = self.dispatcher, self.queue.writes
        count_from(
            metrics,
            "lucid_messaging_store_txns",
            "Store txns the queue's group commit sent (joined or alone).",
            lambda: writes.txns,
        )
        count_from(
            metrics,
            "lucid_messaging_store_writes",
            "Message writes (sends, claims, acks...) those txns carried.",
            lambda: writes.members,
        )
        count_from(
            metrics,
            "lucid_messaging_direct_claims",
            "Messages claimed for a Consume stream of this replica as they were sent.",
            lambda: dispatcher.direct_claims,
        )
        count_from(
            metrics,
            "lucid_messaging_ack_timeouts",
            "Deliveries this replica's sweeper found past their ack deadline.",
            lambda: sweeper.timed_out,
        )
        count_from(
            metrics,
            "lucid_messaging_expired",
            "Queued messages this replica's sweeper found past their TTL.",
            lambda: sweeper.expired,
        )
        count_from(
            metrics,
            "lucid_messaging_retention_deletes",
            "Final messages this replica's sweeper deleted after the retention time.",
            lambda: sweeper.deleted,
        )

    def register(self, server: grpc.aio.Server) -> None:
        messages_pb2_grpc.add_MessageServiceServicer_to_server(
            MessageServicer(self.queue, self.dispatcher),  # type: ignore[arg-type]
            server,
        )

    async def stop(self) -> None:
        await self.sweeper.stop()
        await self.pusher.stop()
        await self.dispatcher.stop()
        await self.claimer.stop()
        await self.queue.writes.stop()
        await self.index.stop()
