"""The client processes of a messaging run (``python -m scripts.bench.messaging --role ROLE
--spec FILE``). Each prints ``READY {json}`` once connected, then answers command lines on stdin
with ``DONE {json}``, and exits when stdin closes:

- ``send``: ``run N`` sends N messages (SendMessage), events (PublishEvent), raw etcd puts or
  NATS publishes, closed loop on ``concurrency`` tasks or open loop paced at ``rate`` per second;
  each carries its scheduled send time (CLOCK_MONOTONIC ns, system-wide: comparable across
  processes).
- ``consume``: one Consume stream (or a NATS JetStream consumer) acking every delivery at once.
- ``subscribe``: one StreamEvents stream per subscription (or NATS subscribers), one connection
  each.

``consume`` and ``subscribe`` record (scheduled send time, arrival) for every message from the
start; ``wait K SECONDS`` answers once every stream holds K (or the time is up), ``dump`` writes
everything to the spec's ``out`` file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from lucid_cp.api.lucid.messaging.v1 import events_pb2 as epb
from lucid_cp.api.lucid.messaging.v1 import events_pb2_grpc, messages_pb2_grpc
from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as mpb
from scripts.bench.children import announce_ready, answer_done
from scripts.bench.common import CHANNEL_OPTIONS, LOOPBACK, latency_summary, monotonic_ns
from scripts.bench.messaging_common import RPC_TIMEOUT, make_event, make_message, request_bytes

# Open loop: sends in flight at most; beyond it the pacer waits (and reports it fell behind).
MAX_OUTSTANDING = 5000
Op = Callable[[int], Awaitable[None]]  # one send, given its scheduled time (ns)
Closer = Callable[[], Awaitable[Any]]


# -- the load loops ----------------------------------------------------------------------------


async def drive(n: int, op: Op, *, concurrency: int = 0, rate: float = 0.0) -> dict[str, Any]:
    """n sends: closed loop on ``concurrency`` tasks, or open loop paced at ``rate``/s (each
    send scheduled at start + i/rate and timed from that schedule, so a sender that falls
    behind shows in the latency rather than hiding it)."""
    latencies: list[float] = []
    errors: list[str] = []
    stalls = 0

    async def one(sched: int) -> None:
        try:
            await op(sched)
        except Exception as exc:
            detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            errors.append(f"{type(exc).__name__}: {detail}")
            return
        latencies.append((monotonic_ns() - sched) / 1e9)

    start = monotonic_ns()
    lag = 0  # open loop: how late the pacer started a send, at worst (ns)
    if rate > 0:
        period = 1e9 / rate
        pending: set[asyncio.Task[None]] = set()
        for i in range(n):
            sched = start + int(i * period)
            delay = (sched - monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(lag, monotonic_ns() - sched)
            task = asyncio.create_task(one(sched))
            pending.add(task)
            task.add_done_callback(pending.discard)
            if len(pending) >= MAX_OUTSTANDING:
                stalls += 1
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*pending)
    else:
        indices = iter(range(n))

        async def worker() -> None:
            for _ in indices:
                await one(monotonic_ns())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    end = monotonic_ns()
    return {
        "start_ns": start,
        "end_ns": end,
        "seconds": (end - start) / 1e9,
        "done": len(latencies),
        "per_s": len(latencies) / ((end - start) / 1e9),
        "errors": len(errors),
        "first_errors": errors[:3],
        "stalls": stalls,
        "max_pacer_lag_ms": lag / 1e6,
        **latency_summary(latencies),
    }


class Arrivals:
    """(scheduled send time, arrival) per stream, and redeliveries seen."""

    def __init__(self, streams: int) -> None:
        self.pairs: list[list[tuple[int, int]]] = [[] for _ in range(streams)]
        self.seen: set[str] = set()
        self.duplicates = 0
        self.errors: list[str] = []

    def add(self, stream: int, sched_ns: int, arrived_ns: int, key: str | None = None) -> None:
        if key is not None:
            if key in self.seen:
                self.duplicates += 1
                return
            self.seen.add(key)
        self.pairs[stream].append((sched_ns, arrived_ns))

    def fewest(self) -> int:
        return min(len(p) for p in self.pairs)

    async def wait(self, count: int, seconds: float) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        # Polled: the readers only append; when this returns does not touch the timings.
        while self.fewest() < count and time.monotonic() < deadline and not self.errors:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return {
            "fewest": self.fewest(),
            "received": sum(len(p) for p in self.pairs),
            "duplicates": self.duplicates,
            "last_arrival_ns": max((p[-1][1] for p in self.pairs if p), default=0),
            "errors": self.errors[:3],
        }

    def dump(self, path: str) -> dict[str, Any]:
        record = {"pairs": self.pairs, "duplicates": self.duplicates, "errors": self.errors[:20]}
        Path(path).write_text(json.dumps(record))
        return {"path": path}


async def commands(handlers: dict[str, Callable[..., Awaitable[dict[str, Any]]]]) -> None:
    """Answers command lines on stdin (``NAME ARGS...``) until it closes."""
    while line := await asyncio.to_thread(sys.stdin.readline):
        name, *args = line.split()
        answer_done(**await handlers[name](*args))


# -- the roles ---------------------------------------------------------------------------------


async def role_send(spec: dict[str, Any]) -> None:
    sent = SentIds()
    if spec["kind"] in ("message", "event"):
        op, close = _ours_sender(spec, sent)
    elif spec["kind"] == "etcd":
        op, close = await _etcd_putter(spec)
    else:
        from scripts.bench.messaging_nats import nats_sender

        op, close = await nats_sender(spec)

    batch = spec.get("batch", 1)

    async def run(n: str) -> dict[str, Any]:
        load = {"concurrency": spec.get("concurrency", 0), "rate": spec.get("rate", 0.0)}
        result = await drive(int(n) // batch, op, **load)
        # With batches, an op is a call of ``batch`` messages: counts and rates in messages.
        result["calls"] = result["done"]
        result["done"] *= batch
        result["per_s"] *= batch
        out = {**result, "sample_ids": sent.last[-20:], "refused_ids": sent.refused[:]}
        sent.refused.clear()
        return out

    announce_ready(kind=spec["kind"])
    try:
        await commands({"run": run})
    finally:
        await close()


@dataclass
class SentIds:
    last: list[str] = field(default_factory=list)  # the last messages sent (20)
    refused: list[str] = field(default_factory=list)  # whose SendMessage failed (the first 100)

    def accept(self, *ids: str) -> None:
        self.last.extend(ids)
        del self.last[:-20]

    def refuse(self, *ids: str) -> None:
        self.refused.extend(ids[: max(0, 100 - len(self.refused))])


def _ours_sender(spec: dict[str, Any], sent: SentIds) -> tuple[Op, Closer]:
    """SendMessage (``message``) or PublishEvent (``event``) on one channel."""
    channel = grpc.aio.insecure_channel(spec["target"], options=CHANNEL_OPTIONS)
    md = (("authorization", f"Bearer {spec['token']}"),)
    if spec["kind"] == "event":
        publish = events_pb2_grpc.EventServiceStub(channel).PublishEvent

        async def publish_one(sched: int) -> None:
            request = epb.PublishEventRequest(event=make_event(sched))
            await publish(request, metadata=md, timeout=RPC_TIMEOUT)

        return publish_one, channel.close
    if spec.get("publish"):
        return _ours_publisher(spec, sent)
    batch = spec.get("batch", 1)
    if batch > 1:
        send_many = messages_pb2_grpc.MessageServiceStub(channel).SendMessages

        async def send_batch(sched: int) -> None:
            messages = [make_message(sched, spec["destination"]) for _ in range(batch)]
            request = mpb.SendMessagesRequest(messages=messages)
            try:
                answer = await send_many(request, metadata=md, timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError:
                sent.refuse(*(m.message_id for m in messages))
                raise
            refused = [r.message_id for r in answer.results if not r.HasField("accepted")]
            if refused:
                raise RuntimeError(f"{len(refused)} of a batch refused: {refused[:3]}")
            sent.accept(*(m.message_id for m in messages))

        return send_batch, channel.close
    send = messages_pb2_grpc.MessageServiceStub(channel).SendMessage

    async def send_one(sched: int) -> None:
        message = make_message(sched, spec["destination"])
        try:
            await send(mpb.SendMessageRequest(message=message), metadata=md, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError:
            sent.refuse(message.message_id)
            raise
        sent.accept(message.message_id)

    return send_one, channel.close


def _ours_publisher(spec: dict[str, Any], sent: SentIds) -> tuple[Op, Closer]:
    """Sends pipelined on one PublishMessages stream: each op writes its message and waits for
    its answer (matched by messageId)."""
    channel = grpc.aio.insecure_channel(spec["target"], options=CHANNEL_OPTIONS)
    md = (("authorization", f"Bearer {spec['token']}"),)
    outbox: asyncio.Queue[mpb.SendMessageRequest | None] = asyncio.Queue()
    waiting: dict[str, asyncio.Future[mpb.SendResult]] = {}

    async def requests() -> AsyncIterator[mpb.SendMessageRequest]:
        while (request := await outbox.get()) is not None:
            yield request

    call = messages_pb2_grpc.MessageServiceStub(channel).PublishMessages(requests(), metadata=md)

    async def read() -> None:
        ended: BaseException = RuntimeError("the PublishMessages stream ended")
        try:
            async for answer in call:
                future = waiting.pop(answer.message_id, None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except BaseException as exc:
            ended = exc
            raise
        finally:
            for future in waiting.values():  # no answer will come
                if future.done():
                    continue
                if isinstance(ended, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(ended)

    reader = asyncio.create_task(read())

    async def publish_one(sched: int) -> None:
        message = make_message(sched, spec["destination"])
        future: asyncio.Future[mpb.SendResult] = asyncio.get_running_loop().create_future()
        waiting[message.message_id] = future
        outbox.put_nowait(mpb.SendMessageRequest(message=message))
        answer = await asyncio.wait_for(future, RPC_TIMEOUT)
        if not answer.HasField("accepted"):
            sent.refuse(message.message_id)
            raise RuntimeError(f"{answer.code}: {answer.error}")
        sent.accept(message.message_id)

    async def close() -> None:
        outbox.put_nowait(None)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await channel.close()

    return publish_one, close


async def _etcd_putter(spec: dict[str, Any]) -> tuple[Op, Closer]:
    """Raw aetcd puts of a value the size of our SendMessage request, each to a new key."""
    import aetcd

    client = aetcd.Client(
        LOOPBACK, spec["port"], timeout=RPC_TIMEOUT, options=dict(CHANNEL_OPTIONS)
    )
    await client.connect()
    value = b"v" * request_bytes()
    counter = iter(range(10**9))
    batch = spec.get("batch", 1)

    async def put(sched: int) -> None:
        await client.put(f"/bench/raw/{next(counter):010d}".encode(), value)

    async def put_batch(sched: int) -> None:
        puts = [
            client.transactions.put(f"/bench/raw/{next(counter):010d}".encode(), value)
            for _ in range(batch)
        ]
        await client.transaction(compare=[], success=puts, failure=[])

    return (put_batch if batch > 1 else put), client.close


async def role_consume(spec: dict[str, Any]) -> None:
    arrivals = Arrivals(1)
    if spec["kind"] == "ours":
        close = await _consume_ours(spec, arrivals)
    else:
        from scripts.bench.messaging_nats import nats_consumer

        close = await nats_consumer(spec, arrivals)
    await _serve(arrivals, close, spec)


async def role_subscribe(spec: dict[str, Any]) -> None:
    arrivals = Arrivals(len(spec["subscriptions"]) if spec["kind"] == "ours" else spec["count"])
    if spec["kind"] == "ours":
        close = await _subscribe_ours(spec, arrivals)
    else:
        from scripts.bench.messaging_nats import nats_subscribers

        close = await nats_subscribers(spec, arrivals)
    await _serve(arrivals, close, spec)


async def _serve(arrivals: Arrivals, close: Closer, spec: dict[str, Any]) -> None:
    async def wait(count: str, seconds: str) -> dict[str, Any]:
        return await arrivals.wait(int(count), float(seconds))

    async def dump() -> dict[str, Any]:
        return arrivals.dump(spec["out"])

    announce_ready(streams=len(arrivals.pairs), errors=arrivals.errors[:3])
    try:
        await commands({"wait": wait, "dump": dump})
    finally:
        await close()


async def _consume_ours(spec: dict[str, Any], arrivals: Arrivals) -> Closer:
    """One Consume stream: ``start`` with maxInFlight, then an ack for every delivery as soon as
    it arrives (written on the same stream)."""
    channel = grpc.aio.insecure_channel(spec["target"], options=CHANNEL_OPTIONS)
    md = (("authorization", f"Bearer {spec['token']}"),)
    call = messages_pb2_grpc.MessageServiceStub(channel).Consume(metadata=md)
    start = mpb.ConsumeStart(service_name=spec["service"], max_in_flight=spec["max_in_flight"])
    max_batch = spec.get("max_batch", 1)
    if max_batch > 1:
        start.max_batch = max_batch
    await call.write(mpb.ConsumeRequest(start=start))
    await call.wait_for_connection()

    async def read() -> None:
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                arrived = monotonic_ns()
                assert isinstance(response, mpb.ConsumeResponse)
                acks = []
                for delivery in response.deliveries or [response.delivery]:
                    message = delivery.message
                    arrivals.add(0, int(message.headers["t"]), arrived, message.message_id)
                    acks.append(
                        mpb.AckMessageRequest(
                            message_id=message.message_id, attempt=delivery.attempt
                        )
                    )
                if max_batch > 1:
                    await call.write(mpb.ConsumeRequest(acks=mpb.AckBatch(acks=acks)))
                else:
                    await call.write(mpb.ConsumeRequest(ack=acks[0]))
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                arrivals.errors.append(f"{exc.code().name}: {exc.details()}")

    task = asyncio.create_task(read())

    async def close() -> None:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await channel.close()

    return close


async def _subscribe_ours(spec: dict[str, Any], arrivals: Arrivals) -> Closer:
    """One StreamEvents stream per subscription, each on its own connection."""
    md = (("authorization", f"Bearer {spec['token']}"),)
    channels = [
        grpc.aio.insecure_channel(spec["target"], options=CHANNEL_OPTIONS)
        for _ in spec["subscriptions"]
    ]
    calls = [
        events_pb2_grpc.EventServiceStub(channel).StreamEvents(
            epb.StreamEventsRequest(subscription_id=sid), metadata=md
        )
        for channel, sid in zip(channels, spec["subscriptions"], strict=True)
    ]

    async def read(i: int, call: Any) -> None:
        try:
            async for event in call:
                arrivals.add(i, int(event.tags["t"]), monotonic_ns())
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                arrivals.errors.append(f"stream {i}: {exc.code().name}: {exc.details()}")

    await asyncio.gather(*(call.wait_for_connection() for call in calls))
    tasks = [asyncio.create_task(read(i, call)) for i, call in enumerate(calls)]

    async def close() -> None:
        for call in calls:
            call.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()

    return close


ROLES = {"send": role_send, "consume": role_consume, "subscribe": role_subscribe}


def run_role(role: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    asyncio.run(ROLES[role](spec))
