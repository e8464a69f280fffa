"""Server streaming as NDJSON: lines as they arrive, errors, disconnect cancels the gRPC call."""

from __future__ import annotations

import asyncio
import json

import httpx
from google.rpc import code_pb2
from gw_fake_backend import FAKE_AUTH, FakeBackend, status

from gateway.server import GatewayHandle
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb

WATCH = "/api/v1/service-discovery/watch"
WAIT = 5.0


def event(kind: pb.WatchEventType.ValueType, name: str, revision: int) -> pb.WatchResponse:
    instance = pb.ServiceInstance(service_name=name, cluster=pb.CLUSTER_API_GATEWAY)
    return pb.WatchResponse(type=kind, instance=instance, revision=revision)


async def next_line(lines: object) -> dict[str, object]:
    line = await asyncio.wait_for(lines.__anext__(), WAIT)  # type: ignore[attr-defined]
    return dict(json.loads(line))


async def test_each_message_is_one_line_flushed_as_it_arrives(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    queue = backend.script.watch_queue
    queue.put_nowait(
        pb.WatchResponse(type=pb.WATCH_EVENT_TYPE_SNAPSHOT, snapshot=pb.WatchSnapshot(), revision=1)
    )
    async with client.stream("GET", f"{WATCH}?serviceName=api-gateway&cluster=api-gateway") as rsp:
        assert rsp.status_code == 200
        assert rsp.headers["content-type"] == "application/x-ndjson"
        assert rsp.headers["x-request-id"]
        lines = rsp.aiter_lines()
        assert await next_line(lines) == {
            "type": "snapshot",
            "snapshot": {"instances": []},
            "revision": 1,
        }
        # The next event is only produced after the first line was received: it was flushed.
        queue.put_nowait(event(pb.WATCH_EVENT_TYPE_ADDED, "api-gateway", 2))
        added = await next_line(lines)
        assert added["type"] == "added" and added["revision"] == 2
        assert added["instance"]["serviceName"] == "api-gateway"  # type: ignore[index]
        queue.put_nowait(None)  # the server ends the stream
        rest = [line async for line in lines]
        assert rest == []
    seen = backend.script.last("Watch").request
    assert (seen.service_name, seen.cluster) == ("api-gateway", pb.CLUSTER_API_GATEWAY)


async def test_client_disconnect_cancels_the_grpc_call(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.script.watch_queue.put_nowait(pb.WatchResponse(type=pb.WATCH_EVENT_TYPE_SNAPSHOT))
    async with client.stream("GET", WATCH) as rsp:
        await next_line(rsp.aiter_lines())
    # Leaving the block closed the HTTP connection; the backend must see the call cancelled.
    await asyncio.wait_for(backend.script.watch_cancelled.wait(), WAIT)


async def test_mid_stream_error_is_a_final_error_line(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    queue = backend.script.watch_queue
    queue.put_nowait(pb.WatchResponse(type=pb.WATCH_EVENT_TYPE_SNAPSHOT, revision=1))
    queue.put_nowait(
        status(code_pb2.UNAVAILABLE, "store went away", "LUCID_ERR_1906", retry_seconds=1)
    )
    async with client.stream("GET", WATCH) as rsp:
        assert rsp.status_code == 200
        lines = [json.loads(line) async for line in rsp.aiter_lines()]
    assert lines[0]["type"] == "snapshot"
    error = lines[1]["error"]
    assert error["code"] == "LUCID_ERR_1906"
    assert error["message"] == "store went away"
    assert error["request_id"] == rsp.headers["x-request-id"]
    assert error["details"]["retryAfterSeconds"] == 1
    assert len(lines) == 2


async def test_failure_before_the_first_message_is_a_plain_http_error(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.script.errors["Watch"] = status(code_pb2.UNAUTHENTICATED, "no token", "LUCID_ERR_1901")
    response = await client.get(WATCH)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "LUCID_ERR_1901"


async def test_bad_watch_query_is_400_before_any_call(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    response = await client.get(f"{WATCH}?startRevision=-x")
    assert response.status_code == 400
    assert not [c for c in backend.script.calls if c.method == "Watch"]


async def test_gateway_shutdown_ends_open_streams(
    gateway: GatewayHandle, backend: FakeBackend
) -> None:
    backend.script.watch_queue.put_nowait(pb.WatchResponse(type=pb.WATCH_EVENT_TYPE_SNAPSHOT))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=WAIT, headers=FAKE_AUTH) as http:
        async with http.stream("GET", WATCH) as rsp:
            lines = rsp.aiter_lines()
            await next_line(lines)
            stopping = asyncio.create_task(gateway.stop())
            final = await next_line(lines)
            assert final["error"]["code"] == "LUCID_ERR_1909"  # type: ignore[index]
            assert [line async for line in lines] == []
        await asyncio.wait_for(stopping, WAIT)
    await asyncio.wait_for(backend.script.watch_cancelled.wait(), WAIT)
