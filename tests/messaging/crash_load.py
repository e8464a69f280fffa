"""The kill -9 tests' moving parts: `lucid-cp serve` as a child process, and the clients that
load it over gRPC (senders, a Consume consumer, event publishers and subscribers), each keeping
the record the tests check after the crash: what got a 202, what was delivered with which
attempt, which acks and cursors the server confirmed.

Every worker runs until it is cancelled or its server goes away; an RPC error ends it and is kept
with the time it happened, so a test can tell errors caused by the kill from any other."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from cli_proc import cli, cli_env, wait_for

from lucid_cp.api.lucid.messaging.v1 import events_pb2 as epb
from lucid_cp.api.lucid.messaging.v1 import events_pb2_grpc, messages_pb2_grpc
from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.auth.tokens import Role, mint_token
from lucid_cp.clock import SystemClock
from tests.events.conftest import event, subscription

from .conftest import message
from .fake_consumer import FakeConsumer

SECRET = "crash-tests-secret-0123456789abcdef0123"
SOURCE, DESTINATION, SUBSCRIBER = "api-gateway", "tron-node", "audit-log"
RPC_TIMEOUT = 10.0
# What grpc's client reports itself when a call's connection dies under an operation in flight
# (a write on the Consume stream): set in grpc/_cython/_cygrpc/aio/call.pyx.pxi
# (set_internal_error), never sent by a server.
CORE_ERROR = (grpc.StatusCode.INTERNAL, "Internal error from Core")
# Redeliveries come quickly (100 ms after a missed deadline) and never run out in a test.
RETRY = {"initialDelay": 100, "maxAttempts": 10}
T = TypeVar("T")


def md(subject: str) -> tuple[tuple[str, str], ...]:
    token = mint_token(SECRET.encode(), subject, Role.SERVICE, SystemClock(), ttl=3600)
    return (("authorization", f"Bearer {token}"),)


async def poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Until ``check()`` holds (every 10 ms), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


# -- the server ---------------------------------------------------------------------------------


class Server:
    """`lucid-cp serve` (gRPC only, rate limits off) in a child process; ``start`` again after
    ``kill`` runs a new process on the same data dir and store."""

    def __init__(self, data_dir: Path, store: str | None = None) -> None:
        self.data_dir = data_dir
        self.store = store
        self.proc: subprocess.Popen[str] | None = None
        self.target = ""
        self.output: list[str] = []  # its stderr, for a failing test's report
        self.killed_at: float | None = None

    async def start(self) -> str:
        self.target = await asyncio.to_thread(self._start)
        return self.target

    def _start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = ["serve", "--grpc-addr", "127.0.0.1:0", "--no-gateway", "--no-rate-limits"]
        args += ["--data-dir", str(self.data_dir), "--log-level", "WARNING"]
        if self.store:
            args += ["--store", self.store]
        self.proc = proc = subprocess.Popen(
            cli(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(LUCID_JWT_SECRET=SECRET),
            cwd=self.data_dir,
        )
        match, seen = wait_for(proc, r"gRPC on (127\.0\.0\.1:\d+)", 30)
        self.output.append(seen)
        # Keep reading: a full stderr pipe would block the server's logging.
        threading.Thread(target=self._drain, args=(proc,), daemon=True).start()
        return match.group(1)

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with proc.stderr:  # until the process is gone
            for line in proc.stderr:
                self.output.append(line)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.proc is not None and self.proc.poll() is None, "the server is not running"
        self.killed_at = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return "".join(self.output)[-4000:]


@dataclass
class Client:
    """Stubs on one channel to one server."""

    channel: grpc.aio.Channel
    messages: messages_pb2_grpc.MessageServiceStub
    events: events_pb2_grpc.EventServiceStub

    @staticmethod
    def of(target: str) -> Client:
        channel = grpc.aio.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
        return Client(
            channel,
            messages_pb2_grpc.MessageServiceStub(channel),
            events_pb2_grpc.EventServiceStub(channel),
        )

    async def close(self) -> None:
        await self.channel.close()


# -- the workers --------------------------------------------------------------------------------


@dataclass
class Errors:
    """RPC errors that ended a worker: (code, details, when)."""

    seen: list[tuple[grpc.StatusCode, str, float]] = field(default_factory=list)

    def add(self, exc: grpc.aio.AioRpcError) -> None:
        self.seen.append((exc.code(), str(exc.details()), time.monotonic()))

    def assert_only_from(self, server: Server) -> None:
        """Every error came after ``server`` was killed and says it is unreachable."""
        killed = server.killed_at
        for code, details, at in self.seen:
            assert killed is not None and at >= killed, f"{code} before the kill: {details}"
            assert code == grpc.StatusCode.UNAVAILABLE or (code, details) == CORE_ERROR, (
                f"{code} at the kill: {details}"
            )


@dataclass
class Producer(Generic[T]):
    """Sends new items back to back: ``sent`` holds every one it tried (by id), ``accepted`` the
    ids answered 202 with the number the answer gave (a message's revision, an event's
    sequence)."""

    errors: Errors
    sent: dict[str, T] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)

    def new(self) -> tuple[str, T]:
        raise NotImplementedError

    async def call(self, client: Client, item: T) -> int:
        raise NotImplementedError

    async def run(self, client: Client, limit: int | None = None) -> None:
        while limit is None or len(self.accepted) < limit:
            key, item = self.new()
            self.sent[key] = item
            if not await self.submit(client, key, item):
                return

    async def submit(self, client: Client, key: str, item: T) -> bool:
        try:
            self.accepted[key] = await self.call(client, item)
        except grpc.aio.AioRpcError as exc:
            self.errors.add(exc)
            return False
        return True

    async def retry_unanswered(self, client: Client) -> None:
        """What was in flight at a kill, sent again with the same content (a client's retry):
        202 whether or not the first one was stored."""
        for key, item in list(self.sent.items()):
            if key not in self.accepted:
                assert await self.submit(client, key, item), self.errors.seen[-1]


class Sender(Producer[pb.InterServiceMessage]):
    """Messages to DESTINATION."""

    def new(self) -> tuple[str, pb.InterServiceMessage]:
        msg = message(SOURCE, DESTINATION, retryPolicy=RETRY)
        return msg.message_id, msg

    async def call(self, client: Client, item: pb.InterServiceMessage) -> int:
        answer = await client.messages.SendMessage(
            pb.SendMessageRequest(message=item), metadata=md(SOURCE), timeout=RPC_TIMEOUT
        )
        assert answer.message_id == item.message_id and answer.status == pb.MESSAGE_STATE_QUEUED
        return answer.revision


@dataclass
class Deliveries:
    """Every delivery any consumer got, ``(message id, attempt)`` -> the consumer's name, and
    the acks sent: message id -> the attempts acked."""

    got: dict[tuple[str, int], str] = field(default_factory=dict)
    acked: dict[str, set[int]] = field(default_factory=dict)
    acked_order: list[str] = field(default_factory=list)

    def record(self, delivery: pb.Delivery, consumer: str) -> None:
        key = (delivery.message.message_id, delivery.attempt)
        assert key not in self.got, f"attempt {key} delivered twice ({self.got[key]}, {consumer})"
        self.got[key] = consumer

    def ids(self, consumer: str | None = None) -> set[str]:
        return {m for (m, _), c in self.got.items() if consumer is None or c == consumer}


class Consumer:
    """A Consume stream on DESTINATION that acks every delivery at once, except those ``hold``
    picks: those it keeps unacked until its server goes away (they come back after their ack
    deadline)."""

    def __init__(
        self,
        client: Client,
        name: str,
        deliveries: Deliveries,
        errors: Errors,
        hold: Callable[[pb.Delivery], bool] = lambda d: False,
    ) -> None:
        self.name = name
        self.held: dict[str, int] = {}  # message id -> the attempt held unacked
        self._deliveries = deliveries
        self._errors = errors
        self._hold = hold
        self._stream = FakeConsumer(
            client.messages, DESTINATION, md(DESTINATION), max_in_flight=1000
        )
        self.task = asyncio.create_task(self._run())

    @property
    def count(self) -> int:
        return len(self._stream.deliveries)

    async def _run(self) -> None:
        seen = 0
        stream = self._stream
        while not stream.task.done() or seen < len(stream.deliveries):
            try:
                await stream.wait(seen + 1, timeout=0.2)
            except TimeoutError:
                continue
            for delivery in stream.deliveries[seen:]:
                self._deliveries.record(delivery, self.name)
                message_id = delivery.message.message_id
                if self._hold(delivery):
                    self.held[message_id] = delivery.attempt
                    continue
                self.held.pop(message_id, None)
                stream.ack(delivery)
                self._deliveries.acked.setdefault(message_id, set()).add(delivery.attempt)
                self._deliveries.acked_order.append(message_id)
            seen = len(stream.deliveries)
        if stream.error is not None:
            self._errors.add(stream.error)

    async def close(self) -> None:
        await cancel(self.task)
        await self._stream.close()


async def confirm_delivered(client: Client, deliveries: Deliveries, confirmed: set[str]) -> None:
    """Reads the status of acked messages (oldest ack first) and adds those the server says are
    delivered to ``confirmed``; one not delivered yet is read again later. Runs until cancelled
    or its server goes away."""
    done = 0
    later: list[str] = []
    while True:
        if done < len(deliveries.acked_order):
            message_id = deliveries.acked_order[done]
            done += 1
        elif later:
            message_id = later.pop(0)
        else:
            await asyncio.sleep(0.01)
            continue
        if message_id in confirmed:
            continue
        try:
            status = await status_of(client, message_id)
        except grpc.aio.AioRpcError:
            return
        if status.status == pb.MESSAGE_STATE_DELIVERED:
            confirmed.add(message_id)
        else:
            later.append(message_id)
            await asyncio.sleep(0.005)


async def status_of(client: Client, message_id: str) -> pb.MessageStatus:
    return await client.messages.GetMessageStatus(
        pb.GetMessageStatusRequest(message_id=message_id),
        metadata=md(DESTINATION),
        timeout=RPC_TIMEOUT,
    )


async def statuses(client: Client, ids: Iterable[str]) -> dict[str, pb.MessageStatus]:
    wanted = sorted(ids)
    out: dict[str, pb.MessageStatus] = {}
    for start in range(0, len(wanted), 64):
        chunk = wanted[start : start + 64]
        found = await asyncio.gather(*(status_of(client, m) for m in chunk))
        out.update(zip(chunk, found, strict=True))
    return out


async def put_consumer(client: Client, ack_wait_ms: int) -> None:
    await client.messages.PutConsumer(
        pb.PutConsumerRequest(
            service_name=DESTINATION, config=pb.ConsumerConfig(ack_wait_ms=ack_wait_ms)
        ),
        metadata=md(DESTINATION),
        timeout=RPC_TIMEOUT,
    )


# -- events ---------------------------------------------------------------------------------------


class Publisher(Producer[epb.ServiceEvent]):
    """Events of one type from SOURCE."""

    def new(self) -> tuple[str, epb.ServiceEvent]:
        ev = event("crash.tick", SOURCE, data={"n": len(self.sent)})
        return ev.event_id, ev

    async def call(self, client: Client, item: epb.ServiceEvent) -> int:
        answer = await client.events.PublishEvent(
            epb.PublishEventRequest(event=item), metadata=md(SOURCE), timeout=RPC_TIMEOUT
        )
        assert answer.event_id == item.event_id and answer.sequence > 0
        return answer.sequence

    def by_sequence(self) -> dict[int, str]:
        out = {seq: event_id for event_id, seq in self.accepted.items()}
        assert len(out) == len(self.accepted), "two events answered with one sequence"
        return out


async def subscribe(client: Client) -> epb.EventSubscriptionResponse:
    """A pull subscription of SUBSCRIBER to every event (``>``), from the head."""
    return await client.events.Subscribe(
        epb.SubscribeRequest(subscription=subscription(">")),
        metadata=md(SUBSCRIBER),
        timeout=RPC_TIMEOUT,
    )


async def stored_cursor(client: Client, subscription_id: str) -> int:
    found = await client.events.GetSubscription(
        epb.GetSubscriptionRequest(subscription_id=subscription_id),
        metadata=md(SUBSCRIBER),
        timeout=RPC_TIMEOUT,
    )
    return found.cursor


@dataclass
class Subscriber:
    """Reads one subscription and acks what it read: ``pull`` pulls a batch and acks its cursor;
    ``stream`` streams and acks every ``ack_every`` events. ``runs`` holds the sequences each run
    (connection) received, in order; ``confirmed`` the highest cursor an ack was answered for,
    ``acking`` the highest one sent."""

    subscription_id: str
    mode: str
    errors: Errors
    ack_every: int = 10
    runs: list[list[int]] = field(default_factory=list)
    ids: dict[int, str] = field(default_factory=dict)  # sequence -> the event id received
    confirmed: int = 0
    acking: int = 0

    @property
    def last(self) -> int:
        return self.runs[-1][-1] if self.runs and self.runs[-1] else 0

    def received(self) -> int:
        return sum(len(r) for r in self.runs)

    async def run(self, client: Client) -> None:
        self.runs.append([])
        try:
            if self.mode == "pull":
                await self._pull(client)
            else:
                await self._stream(client)
        except grpc.aio.AioRpcError as exc:
            self.errors.add(exc)

    def _got(self, ev: epb.ServiceEvent) -> None:
        assert self.ids.setdefault(ev.sequence, ev.event_id) == ev.event_id, ev.sequence
        self.runs[-1].append(ev.sequence)

    async def _ack(self, client: Client, cursor: int) -> None:
        self.acking = max(self.acking, cursor)
        answer = await client.events.AckEvents(
            epb.AckEventsRequest(subscription_id=self.subscription_id, cursor=cursor),
            metadata=md(SUBSCRIBER),
            timeout=RPC_TIMEOUT,
        )
        assert answer.cursor >= cursor
        self.confirmed = max(self.confirmed, answer.cursor)

    async def _pull(self, client: Client) -> None:
        while True:
            batch = await client.events.PullEvents(
                epb.PullEventsRequest(
                    subscription_id=self.subscription_id, max_events=25, wait_ms=500
                ),
                metadata=md(SUBSCRIBER),
                timeout=RPC_TIMEOUT,
            )
            for ev in batch.events:
                self._got(ev)
            if batch.events:
                await self._ack(client, batch.cursor)

    async def _stream(self, client: Client) -> None:
        call = client.events.StreamEvents(
            epb.StreamEventsRequest(subscription_id=self.subscription_id),
            metadata=md(SUBSCRIBER),
        )
        try:
            unacked = 0
            async for ev in call:
                self._got(ev)
                unacked += 1
                if unacked >= self.ack_every:
                    await self._ack(client, ev.sequence)
                    unacked = 0
        finally:
            call.cancel()


async def cancel(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Crew:
    """What a test started: servers, worker tasks and consumers, all ended by ``end`` whatever
    happened."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self.servers: list[Server] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._consumers: list[Consumer] = []

    def server(self, name: str, store: str | None = None) -> Server:
        self.servers.append(Server(self._root / name, store))
        return self.servers[-1]

    def task(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        self._tasks.append(asyncio.create_task(work))
        return self._tasks[-1]

    def consumer(self, *args: Any, **kw: Any) -> Consumer:
        self._consumers.append(Consumer(*args, **kw))
        return self._consumers[-1]

    def report(self) -> str:
        return "\n".join(f"--- {s.data_dir.name}:\n{s.log()}" for s in self.servers)

    async def end(self) -> None:
        for consumer in self._consumers:
            await consumer.close()
        await cancel(*self._tasks)
        for server in self.servers:
            server.stop()
