"""The child processes of a discovery run (``python -m scripts.bench.discovery --role ...``):
a control plane, and a pool of Watch streams that records when each event arrives."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from typing import Any

import grpc

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.config import Settings
from scripts.bench.children import announce_ready, wait_for_stdin_eof
from scripts.bench.common import CHANNEL_OPTIONS, LOOPBACK, monotonic_ns
from scripts.bench.discovery_common import SECRET_ENV, TOKEN_ENV, WATCH_METHOD


async def role_control_plane(store_url: str, profile: str | None, health_checks: bool) -> None:
    from lucid_cp.app import start_control_plane
    from lucid_cp.discovery.settings import DiscoverySettings

    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    settings = Settings(
        store_url=store_url,
        grpc_addr=f"{LOOPBACK}:0",
        jwt_secret=bytes.fromhex(os.environ[SECRET_ENV]),
        rate_limits_enabled=False,
        log_level="WARNING",
        # The benchmark's instances point at addresses nothing listens on; active checks would
        # mark them unhealthy and add probe load unrelated to what is measured (--health-checks).
        sections=(DiscoverySettings(health_checks_enabled=health_checks),),
    )
    plane = await start_control_plane(settings)
    from lucid_cp.rpc.runtime import tune_gc

    tune_gc()  # as `lucid-cp serve` does
    announce_ready(port=plane.grpc_port, pid=os.getpid())
    try:
        await wait_for_stdin_eof()
    finally:
        await plane.stop(0)
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)


async def role_watchers(
    target: str, count: int, channels: int, service: str
) -> dict[str, Any] | None:
    """Opens ``count`` Watch streams of ``service``; after each stream's snapshot, records the
    arrival time (CLOCK_MONOTONIC) and raw bytes of every message. On "collect K SECONDS" from
    stdin, waits until every stream has K events (or the time is up), decodes them and returns
    [[seq, arrival_ns], ...] (seq = the write's health.response_time) for the caller to write
    out; None if the orchestrator went away first."""
    md = (("authorization", f"Bearer {os.environ[TOKEN_ENV]}"),)
    request = pb.WatchRequest(service_name=service).SerializeToString()
    chans = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(channels)]
    arrivals: list[list[tuple[int, bytes]]] = [[] for _ in range(count)]
    snapshots = [0]
    all_ready = asyncio.Event()
    expected: list[int] = []  # K, once "collect K SECONDS" has come
    complete = [0]  # streams holding K events
    all_in = asyncio.Event()
    failures: list[str] = []

    def count_complete(events: int) -> None:
        if expected and events == expected[0]:
            complete[0] += 1
            if complete[0] == count:
                all_in.set()

    async def watch(i: int) -> None:
        stream = chans[i % channels].unary_stream(WATCH_METHOD)(request, metadata=md)
        mine = arrivals[i]
        first = True
        try:
            async for raw in stream:
                if first:
                    first = False
                    if pb.WatchResponse.FromString(raw).type != pb.WATCH_EVENT_TYPE_SNAPSHOT:
                        failures.append(f"stream {i}: first message is not a snapshot")
                    snapshots[0] += 1
                    if snapshots[0] == count:
                        all_ready.set()
                    continue
                mine.append((monotonic_ns(), raw))
                count_complete(len(mine))
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                failures.append(f"stream {i}: {exc.code().name} {exc.details()}")

    started = time.monotonic()
    tasks = [asyncio.create_task(watch(i)) for i in range(count)]
    try:
        await asyncio.wait_for(all_ready.wait(), 120)
    except TimeoutError:
        failures.append(f"only {snapshots[0]} of {count} streams got their snapshot in 120 s")
    announce_ready(
        pid=os.getpid(), streams=count, open_s=time.monotonic() - started, failures=failures[:5]
    )

    line = await asyncio.to_thread(sys.stdin.readline)
    if not line:  # the orchestrator is gone
        return None
    _, expected_text, seconds_text = line.split()
    expected.append(int(expected_text))
    complete[0] = sum(len(a) >= expected[0] for a in arrivals)
    if complete[0] == count:
        all_in.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_in.wait(), float(seconds_text))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for chan in chans:
        await chan.close()

    pairs: list[list[int]] = []
    other = 0
    for stream_arrivals in arrivals:
        for arrived, raw in stream_arrivals:
            event = pb.WatchResponse.FromString(raw)
            if event.type == pb.WATCH_EVENT_TYPE_UPDATED and event.instance.service_name == service:
                pairs.append([int(event.instance.health.response_time), arrived])
            else:
                other += 1
    return {"pairs": pairs, "other_events": other, "failures": failures[:20]}
