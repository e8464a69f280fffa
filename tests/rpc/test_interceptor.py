"""PolicyInterceptor over the wire, for all four call arities: authentication, the principal
handed to the servicer, validation of every request message, rate limits, error mapping,
metrics, and deny-by-default for methods without a policy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lucid_cp.auth.tokens import Role
from tests.watchcache.fakes import eventually

from .rpc_echo import ARITIES, SERVICE, EchoServer, bearer, message, start_echo_server

Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = await start_echo_server()
    try:
        yield server
    finally:
        await server.server.stop(0)


@pytest.fixture
async def channel(echo: EchoServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(echo.target) as ch:
        yield ch


def _request(name: str) -> bytes:
    return bytes(message("EchoRequest")(name=name).SerializeToString())


def _decode(raw: bytes) -> Any:
    return message("EchoResponse").FromString(raw)


async def invoke(
    channel: grpc.aio.Channel,
    method: str,
    names: Iterable[str] = ("ann",),
    metadata: Metadata | None = None,
    *,
    raw: bytes | None = None,
) -> list[Any]:
    """Calls ``method`` with its arity; returns every response message."""
    path = f"/{SERVICE}/{method}"
    payloads = [raw] if raw is not None else [_request(n) for n in names]
    ident = {"request_serializer": lambda b: b, "response_deserializer": _decode}
    if method in ("Unary", "AdminOnly", "Boom", "NoPolicy", "Hang"):
        return [await channel.unary_unary(path, **ident)(payloads[0], metadata=metadata)]
    if method in ("ServerStream", "FailAfterOne"):
        return [
            r async for r in channel.unary_stream(path, **ident)(payloads[0], metadata=metadata)
        ]

    async def requests() -> AsyncIterator[bytes]:
        for p in payloads:
            yield p

    if method == "ClientStream":
        return [await channel.stream_unary(path, **ident)(requests(), metadata=metadata)]
    return [r async for r in channel.stream_stream(path, **ident)(requests(), metadata=metadata)]


def _reason(exc: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None, "the error carries no google.rpc.Status"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    raise AssertionError("no ErrorInfo in the status")


async def _fails(coro: Any, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await coro
    assert caught.value.code() == code, caught.value.details()
    assert _reason(caught.value) == reason
    return caught.value


@pytest.mark.parametrize("method", ARITIES)
async def test_every_arity_authenticates_and_hands_the_principal_to_the_servicer(
    channel: grpc.aio.Channel, echo: EchoServer, method: str
) -> None:
    responses = await invoke(channel, method, ["ann", "bob"], bearer("orders"))
    assert responses, "no response"
    assert {r.subject for r in responses} == {"orders"}
    assert all(r.request_id for r in responses)  # the same request id the servicer saw
    assert echo.servicer.calls and echo.servicer.calls[-1].principal.subject == "orders"
    ok = echo.metrics.requests.labels(f"/{SERVICE}/{method}", "OK")._value.get()
    assert ok == 1


@pytest.mark.parametrize("method", ARITIES)
async def test_every_arity_refuses_a_call_without_a_token(
    channel: grpc.aio.Channel, echo: EchoServer, method: str
) -> None:
    await _fails(
        invoke(channel, method, ["ann"]), grpc.StatusCode.UNAUTHENTICATED, "LUCID_ERR_1901"
    )
    assert not echo.servicer.calls  # the servicer never ran
    refused = echo.metrics.requests.labels(f"/{SERVICE}/{method}", "UNAUTHENTICATED")
    assert refused._value.get() == 1


@pytest.mark.parametrize("method", ARITIES)
async def test_every_arity_validates_every_request_message(
    channel: grpc.aio.Channel, method: str
) -> None:
    # The second message breaks max_len (8): streams must check each message, not the first.
    names = ["far-too-long"] if method in ("Unary", "ServerStream") else ["ok", "far-too-long"]
    error = await _fails(
        invoke(channel, method, names, bearer()), grpc.StatusCode.INVALID_ARGUMENT, "LUCID_ERR_1904"
    )
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details if d.Is(bad.DESCRIPTOR))
    assert [v.field for v in bad.field_violations] == ["name"]


@pytest.mark.parametrize("method", ARITIES)
async def test_every_arity_refuses_undecodable_bytes(
    channel: grpc.aio.Channel, method: str
) -> None:
    await _fails(
        invoke(channel, method, metadata=bearer(), raw=b"\xff\xff\xff"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "LUCID_ERR_1904",
    )


@pytest.mark.parametrize("method", ["NoPolicy", "NoPolicyBidi"])
async def test_a_method_without_a_policy_is_refused_even_to_an_admin(
    channel: grpc.aio.Channel, echo: EchoServer, method: str
) -> None:
    error = await _fails(
        invoke(channel, method, ["ann"], bearer("root", Role.ADMIN)),
        grpc.StatusCode.PERMISSION_DENIED,
        "LUCID_ERR_1912",
    )
    assert "declares no policy" in (error.details() or "")
    assert not echo.servicer.calls


async def test_admin_only_refuses_a_service_token(channel: grpc.aio.Channel) -> None:
    await _fails(
        invoke(channel, "AdminOnly", ["ann"], bearer("orders")),
        grpc.StatusCode.PERMISSION_DENIED,
        "LUCID_ERR_1902",
    )
    [response] = await invoke(channel, "AdminOnly", ["ann"], bearer("root", Role.ADMIN))
    assert response.subject == "root"


async def test_an_unexpected_error_is_internal_without_internals(channel: grpc.aio.Channel) -> None:
    error = await _fails(
        invoke(channel, "Boom", ["ann"], bearer()), grpc.StatusCode.INTERNAL, "LUCID_ERR_1999"
    )
    assert "secret internals" not in (error.details() or "")
    assert "request id" in (error.details() or "")


@pytest.mark.parametrize("method", ARITIES)
async def test_every_arity_draws_from_its_rate_limit_bucket(method: str) -> None:
    server = await start_echo_server(capacity=2)
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            for _ in range(2):
                await invoke(channel, method, ["ann"], bearer("orders"))
            error = await _fails(
                invoke(channel, method, ["ann"], bearer("orders")),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "LUCID_ERR_1903",
            )
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            assert status is not None
            assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
            # Buckets are per principal: another service still gets through.
            assert await invoke(channel, method, ["ann"], bearer("billing"))
    finally:
        await server.server.stop(0)


async def test_a_stream_cancelled_by_the_client_runs_the_servicers_on_done(
    channel: grpc.aio.Channel, echo: EchoServer
) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def requests() -> AsyncIterator[bytes]:
        while True:
            yield await queue.get()

    call = channel.stream_stream(
        f"/{SERVICE}/Bidi", request_serializer=lambda b: b, response_deserializer=_decode
    )(requests(), metadata=bearer())
    await queue.put(_request("one"))
    first = await asyncio.wait_for(call.read(), 5)
    assert first.name == "one"
    assert echo.servicer.done == 0
    call.cancel()
    await asyncio.wait_for(echo.servicer.closed.wait(), 5)
    assert echo.servicer.done == 1


def _count(echo: EchoServer, method: str, code: str) -> float:
    return float(echo.metrics.requests.labels(f"/{SERVICE}/{method}", code)._value.get())


async def test_a_stream_that_fails_after_its_first_message_counts_the_failure(
    channel: grpc.aio.Channel, echo: EchoServer
) -> None:
    call = channel.unary_stream(
        f"/{SERVICE}/FailAfterOne", request_serializer=lambda b: b, response_deserializer=_decode
    )(_request("ann"), metadata=bearer())
    assert (await asyncio.wait_for(call.read(), 5)).name == "ann"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 5)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert (_count(echo, "FailAfterOne", "OK"), _count(echo, "FailAfterOne", "INTERNAL")) == (0, 1)


async def test_a_unary_call_cancelled_by_the_client_is_counted_cancelled(
    channel: grpc.aio.Channel, echo: EchoServer
) -> None:
    call = channel.unary_unary(
        f"/{SERVICE}/Hang", request_serializer=lambda b: b, response_deserializer=_decode
    )(_request("ann"), metadata=bearer())
    await eventually(lambda: bool(echo.servicer.calls))
    call.cancel()
    await eventually(lambda: _count(echo, "Hang", "CANCELLED") == 1)
    assert _count(echo, "Hang", "OK") == 0
