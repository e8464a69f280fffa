"""One Connect stream: the Hello, then the sidecar's receipts and reports read in the background
while snapshots are relayed out. Whatever ends the stream (the sidecar hanging up, a bad
message, the instance deregistered, a newer stream of the same sidecar) ends both directions and
forgets the session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.auth.tokens import Principal
from lucid_cp.errors import FieldViolation
from lucid_cp.sidecar.distributor import Distributor
from lucid_cp.sidecar.session import InvalidConnectMessage, Session
from lucid_cp.tasks import cancel


async def connect(
    distributor: Distributor,
    principal: Principal,
    requests: AsyncIterator[pb.ConnectRequest],
    on_done: Callable[[Callable[[], None]], None],
) -> AsyncIterator[pb.ConnectResponse]:
    first = await anext(requests, None)
    if first is None:
        return  # hung up before saying hello
    if first.WhichOneof("kind") != "hello":
        raise InvalidConnectMessage(
            "hello: the first message of a Connect stream must be a hello",
            [FieldViolation("hello", "the first message of the stream must be a hello")],
        )
    session = await distributor.open(principal, first.hello)
    on_done(lambda: distributor.close(session))
    reader = asyncio.create_task(_read(session, requests), name="sidecar-connect-reader")
    on_done(lambda: cancel(reader))
    try:
        while (snapshot := await session.next_snapshot()) is not None:
            yield snapshot
        if session.error is not None:
            raise session.error
    finally:
        reader.cancel()
        distributor.close(session)


async def _read(session: Session, requests: AsyncIterator[pb.ConnectRequest]) -> None:
    try:
        async for message in requests:
            session.receive(message)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bad message: the stream ends with its error
        session.close(exc)
        return
    session.close()  # the sidecar half-closed: the stream is over
