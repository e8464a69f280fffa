"""The child processes of a sidecar run (``python -m scripts.bench.sidecar --role ...``):

``sidecars``: a pool of Connect streams, each acting as one sidecar (Hello, then an ACK for every
snapshot on arrival), recording when each snapshot arrived (CLOCK_MONOTONIC), its version and
size. Driven by lines on stdin, answered with ``DONE {json}`` on stdout:
  ``wait VERSION SECONDS GROUP``  until every stream of GROUP ("*": all) has a snapshot of
                                  version >= VERSION (or the time is up); answers ``missing``;
  ``dump PATH``                   writes every stream's record to PATH.

``pushserver``: the raw baseline, a bare grpc.aio server speaking the same Connect method with
the same client: it answers the Hello with a small ConnectResponse and, on each unary Push
(8-byte version), queues one small ConnectResponse of that version to every open stream. Its
streams are structured like the control plane's (a reader task draining the receipts, the
handler yielding what is queued), without building, diffing or recording anything.

Both exit when their stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from scripts.bench.children import announce_ready, wait_for_stdin_eof
from scripts.bench.common import CHANNEL_OPTIONS, LOOPBACK, monotonic_ns
from scripts.bench.discovery_common import server_options
from scripts.bench.sidecar_common import CONNECT_METHOD, PUSH_METHOD

OPEN_CONCURRENCY = 100  # streams waiting for their first snapshot at once, per process
OPEN_TIMEOUT = 240.0


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def head(raw: bytes) -> tuple[int, str]:
    """``version`` and ``nonce`` of a serialized ConnectResponse without decoding the rest
    (fields 1 and 2 come first: protobuf serializes known fields in field-number order)."""
    if raw[:1] == b"\x08":
        version, pos = _varint(raw, 1)
        if raw[pos : pos + 1] == b"\x12":
            length, pos = _varint(raw, pos + 1)
            return version, raw[pos : pos + length].decode()
    message = pb.ConnectResponse.FromString(raw)
    return message.version, message.nonce


class _Wait:
    def __init__(self, version: int, group: str, remaining: int) -> None:
        self.version = version
        self.group = group
        self.remaining = remaining
        self.done = asyncio.Event()
        if remaining == 0:
            self.done.set()


async def role_sidecars(target: str, streams_file: str, channels: int) -> None:
    specs: list[dict[str, str]] = json.loads(await asyncio.to_thread(Path(streams_file).read_text))
    n = len(specs)
    k = channels or n
    # A local subchannel pool: each channel its own HTTP/2 connection (as separate sidecars).
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    chans = [grpc.aio.insecure_channel(target, options=options) for _ in range(k)]
    arrivals: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
    best = [0] * n
    failures: list[str] = []
    opened = [0]
    all_open = asyncio.Event()
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    waiting: list[_Wait] = []

    def arrived(i: int, version: int) -> None:
        for w in waiting:
            if best[i] < w.version <= version and w.group in ("*", specs[i]["group"]):
                w.remaining -= 1
                if w.remaining == 0:
                    w.done.set()
        best[i] = max(best[i], version)

    async def sidecar(i: int) -> None:
        spec = specs[i]
        md = (("authorization", f"Bearer {spec['token']}"),)
        hello = pb.ConnectRequest(hello=pb.Hello(service_id=spec["service_id"], build="bench"))
        mine = arrivals[i]
        first = True
        await gate.acquire()
        try:
            call: grpc.aio.StreamStreamCall[bytes, bytes] = chans[i % k].stream_stream(
                CONNECT_METHOD
            )(metadata=md)
            await call.write(hello.SerializeToString())
            while True:
                raw = await call.read()
                if not isinstance(raw, bytes):  # grpc.aio.EOF
                    failures.append(f"stream {i}: ended by the server")
                    break
                now = monotonic_ns()
                version, nonce = head(raw)
                mine.append((now, version, len(raw)))
                arrived(i, version)
                ack = pb.ConnectRequest(ack=pb.Ack(version=version, nonce=nonce))
                await call.write(ack.SerializeToString())
                if first:
                    first = False
                    gate.release()
                    opened[0] += 1
                    if opened[0] == n:
                        all_open.set()
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                failures.append(f"stream {i}: {exc.code().name} {exc.details()}")
        finally:
            if first:
                gate.release()

    started = time.monotonic()
    tasks = [asyncio.create_task(sidecar(i)) for i in range(n)]
    try:
        await asyncio.wait_for(all_open.wait(), OPEN_TIMEOUT)
    except TimeoutError:
        failures.append(f"only {opened[0]} of {n} streams got a snapshot in {OPEN_TIMEOUT} s")
    announce_ready(
        pid=os.getpid(), streams=n, open_s=time.monotonic() - started, failures=failures[:5]
    )

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        answer: dict[str, Any] = {}
        if line[0] == "wait":
            version, seconds, group = int(line[1]), float(line[2]), line[3]
            remaining = sum(
                1 for i in range(n) if best[i] < version and group in ("*", specs[i]["group"])
            )
            w = _Wait(version, group, remaining)
            waiting.append(w)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.done.wait(), seconds)
            waiting.remove(w)
            answer = {"missing": w.remaining}
        elif line[0] == "dump":
            streams = [{"group": specs[i]["group"], "arrivals": arrivals[i]} for i in range(n)]
            text = json.dumps({"streams": streams, "failures": failures})
            await asyncio.to_thread(Path(line[1]).write_text, text)
        sys.stdout.write("DONE " + json.dumps(answer) + "\n")
        sys.stdout.flush()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for chan in chans:
        await chan.close()


class _PushHandler(grpc.GenericRpcHandler):
    def __init__(self) -> None:
        self.streams: set[asyncio.Queue[bytes]] = set()

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method == CONNECT_METHOD:
            return grpc.stream_stream_rpc_method_handler(self.connect)
        if method == PUSH_METHOD:
            return grpc.unary_unary_rpc_method_handler(self.push)
        return None

    async def connect(self, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await anext(aiter(requests))  # the Hello
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.streams.add(queue)
        reader = asyncio.create_task(self._drain(requests))
        try:
            yield pb.ConnectResponse(version=1, nonce=secrets.token_hex(8)).SerializeToString()
            while True:
                yield await queue.get()
        finally:
            self.streams.discard(queue)
            reader.cancel()

    @staticmethod
    async def _drain(requests: Any) -> None:
        async for _ack in requests:
            pass

    async def push(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        version = int.from_bytes(request, "big")
        message = pb.ConnectResponse(version=version, nonce=secrets.token_hex(8))
        raw = message.SerializeToString()
        for queue in self.streams:
            queue.put_nowait(raw)
        return b""


async def role_push_server() -> None:
    server = grpc.aio.server(options=server_options())
    server.add_generic_rpc_handlers((_PushHandler(),))
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    await server.start()
    announce_ready(port=port, pid=os.getpid())
    await wait_for_stdin_eof()
    await server.stop(0)
