"""The NATS reference side of the messaging roles (nats-py, only imported when the ``bench``
extra is installed): a publisher (JetStream publish awaiting its PubAck, or a core publish), a
JetStream push consumer acking every message (the Consume stream's counterpart), and fan-out
subscribers (core subscriptions, or JetStream ordered consumers: the StreamEvents stream's
counterpart). Each step has its own subject (``spec["subject"]``) and stream. Payloads start with the scheduled send time as 20 ASCII digits, padded to the size
of our SendMessage request."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import nats
from nats.js import api
from nats.js.errors import BadRequestError

from scripts.bench.common import monotonic_ns
from scripts.bench.messaging_common import request_bytes

if TYPE_CHECKING:
    from scripts.bench.messaging_roles import Arrivals, Closer, Op


def _payload(sched: int, size: int) -> bytes:
    stamp = b"%020d" % sched
    return stamp + b"x" * max(0, size - len(stamp))


async def _ensure_stream(js: Any, spec: dict[str, Any]) -> None:
    """The step's JetStream stream on its own subject (file storage, the server's default
    sync); several processes may race to create it: the same config again is fine."""
    with contextlib.suppress(BadRequestError):
        await js.add_stream(
            name=spec["stream"], subjects=[spec["subject"]], storage=api.StorageType.FILE
        )


async def nats_sender(spec: dict[str, Any]) -> tuple[Op, Closer]:
    nc = await nats.connect(spec["url"], max_reconnect_attempts=0)
    size = request_bytes()
    if spec["kind"] == "nats-js":
        js = nc.jetstream()
        await _ensure_stream(js, spec)

        async def op(sched: int) -> None:
            await js.publish(spec["subject"], _payload(sched, size), stream=spec["stream"])

    else:

        async def op(sched: int) -> None:
            await nc.publish(spec["subject"], _payload(sched, size))

    return op, nc.close


async def nats_consumer(spec: dict[str, Any], arrivals: Arrivals) -> Closer:
    """A durable JetStream push consumer, at most ``max_in_flight`` unacked, acking each message
    as it arrives."""
    nc = await nats.connect(spec["url"], max_reconnect_attempts=0)
    js = nc.jetstream()
    await _ensure_stream(js, spec)

    async def on_message(msg: Any) -> None:
        arrived = monotonic_ns()
        sched = int(msg.data[:20])
        arrivals.add(0, sched, arrived, str(sched))
        await msg.ack()

    config = api.ConsumerConfig(
        max_ack_pending=spec["max_in_flight"],
        ack_wait=30,
        deliver_policy=api.DeliverPolicy.NEW,
    )
    await js.subscribe(
        spec["subject"],
        durable="bench-consumer",
        stream=spec["stream"],
        manual_ack=True,
        cb=on_message,
        config=config,
    )
    await nc.flush()
    return nc.close


async def nats_subscribers(
    spec: dict[str, Any], arrivals: Arrivals
) -> Callable[[], Awaitable[None]]:
    """``count`` subscribers, one connection each: core subscriptions (``nats-core``) or
    JetStream ordered consumers from the next message on (``nats-js``)."""
    connections = []

    def recorder(i: int) -> Callable[[Any], Awaitable[None]]:
        async def on_message(msg: Any) -> None:
            arrivals.add(i, int(msg.data[:20]), monotonic_ns())

        return on_message

    for i in range(spec["count"]):
        nc = await nats.connect(spec["url"], max_reconnect_attempts=0)
        connections.append(nc)
        if spec["kind"] == "nats-js":
            js = nc.jetstream()
            if i == 0:
                await _ensure_stream(js, spec)
            await js.subscribe(
                spec["subject"],
                stream=spec["stream"],
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.NEW,
                cb=recorder(i),
            )
        else:
            await nc.subscribe(spec["subject"], cb=recorder(i))
        await nc.flush()

    async def close() -> None:
        for nc in connections:
            await nc.close()

    return close
