"""Several control-plane replicas on one real etcd share the checks; one is killed mid-way.
And an etcd outage: status writes pause and the latest status lands once etcd is back."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from pathlib import Path

import pytest
from etcd_server import EtcdProcess

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.app import ControlPlane, start_control_plane
from lucid_cp.clock import ScaledClock
from lucid_cp.config import Settings
from lucid_cp.discovery.health import rendezvous_owner
from lucid_cp.discovery.module import DiscoverySystem
from lucid_cp.discovery.settings import DiscoverySettings
from lucid_cp.store import MIN_LEASE_TTL

from .conftest import registration
from .harness import ADMIN
from .targets import HttpTarget, Request, wait_until

pytestmark = pytest.mark.etcd

SPEED = 10  # the replicas' clocks run 10x: 5 s intervals -> 0.5 s
INTERVAL = 5 / SPEED
TTL = MIN_LEASE_TTL  # replica lease, seconds (etcd's real time)
REPLICA_PROC = str(Path(__file__).with_name("replica_proc.py"))
N = 24


def settings(store_url: str, replica_id: str) -> Settings:
    return Settings(
        store_url=store_url,
        grpc_addr="127.0.0.1:0",
        jwt_secret=b"replica-tests-secret-0123456789abcdef",
        replica_ttl=TTL,
        sections=(DiscoverySettings(health_replica_id=replica_id),),
    )


def replica_of(request: Request) -> str:
    return request.headers["user-agent"].removeprefix("lucid-health-check/")


def spans(hits: list[Request], replica: str) -> list[tuple[float, float]]:
    """The stretches of time ``replica`` was checking: runs of its hits at most 1.5 intervals
    apart."""
    out: list[tuple[float, float]] = []
    for hit in (h for h in hits if replica_of(h) == replica):
        if out and hit.at - out[-1][1] <= 1.5 * INTERVAL:
            out[-1] = (out[-1][0], hit.at)
        else:
            out.append((hit.at, hit.at))
    return out


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(x1, y1) - max(x0, y0)) for x0, x1 in a for y0, y1 in b)


async def test_replicas_split_the_checks_and_survive_one_being_killed(
    etcd_server: EtcdProcess, http_target: HttpTarget
) -> None:
    await etcd_server.reset()
    a = await start_control_plane(settings(etcd_server.url, "replica-a"), clock=ScaledClock(SPEED))
    b = None
    try:
        paths: dict[str, str] = {}
        for n in range(N):
            reg = registration(http_target.port, path=f"/i/{n}")
            await a.system(DiscoverySystem).registry.register(ADMIN, reg)
            paths[reg.service_id] = f"/i/{n}"
        ids = set(paths)

        def all_healthy(plane: ControlPlane) -> bool:
            return all(
                (i := plane.system(DiscoverySystem).index.get(s)) is not None
                and i.status == pb.HEALTH_STATE_HEALTHY
                for s in ids
            )

        await wait_until(lambda: all_healthy(a), 10, "every instance healthy")
        assert (
            a.system(DiscoverySystem).checker is not None
            and a.system(DiscoverySystem).checker.checked() == ids
        )

        # A second replica joins: its share moves to it.
        b = await asyncio.create_subprocess_exec(
            sys.executable,
            REPLICA_PROC,
            etcd_server.url,
            "replica-b",
            str(SPEED),
            str(TTL),
            stdout=asyncio.subprocess.PIPE,
        )
        assert b.stdout is not None
        assert await asyncio.wait_for(b.stdout.readline(), 30) == b"ready\n"
        members = {"replica-a", "replica-b"}
        await wait_until(
            lambda: a.system(DiscoverySystem).checker.membership.members() == members,
            10,
            "b to join",
        )
        owner = {sid: rendezvous_owner(members, sid) for sid in ids}
        share_b = {sid for sid in ids if owner[sid] == "replica-b"}
        assert 0 < len(share_b) < N
        await wait_until(
            lambda: a.system(DiscoverySystem).checker.checked() == ids - share_b,
            5,
            "a to drop b's share",
        )
        joined = time.monotonic()

        def checked_by_b_since(since: float) -> bool:
            return all(
                any(replica_of(r) == "replica-b" for r in http_target.hits(paths[s], since))
                for s in share_b
            )

        await wait_until(lambda: checked_by_b_since(joined), 10, "b to check its share")
        steady = time.monotonic()
        await wait_until(
            lambda: all(len(http_target.hits(p, steady)) >= 3 for p in paths.values()),
            10,
            "three steady rounds",
        )
        for sid, path in paths.items():  # steady state: each instance checked by its owner only
            assert {replica_of(r) for r in http_target.hits(path, steady)} == {owner[sid]}

        # Replica b dies without a word: its share moves to a once b's lease expires.
        b.kill()
        await b.wait()
        killed = time.monotonic()
        await wait_until(
            lambda: a.system(DiscoverySystem).checker.checked() == ids, 10, "a to take b's share"
        )
        assert a.system(DiscoverySystem).checker.membership.members() == {"replica-a"}
        assert time.monotonic() - killed < TTL + 4 * INTERVAL
        after = time.monotonic()
        await wait_until(
            lambda: all(len(http_target.hits(p, after)) >= 2 for p in paths.values()),
            10,
            "every instance checked after the take-over",
        )
        assert all_healthy(a)  # a hand-over changes no status

        for sid, path in paths.items():
            hits = http_target.hits(path)
            gaps = [y.at - x.at for x, y in itertools.pairwise(hits)]
            assert max(gaps) < TTL + 4 * INTERVAL, (sid, max(gaps))  # never left unchecked
            both = overlap(spans(hits, "replica-a"), spans(hits, "replica-b"))
            assert both <= INTERVAL, (sid, both)  # never checked twice for over an interval
    finally:
        if b is not None and b.returncode is None:
            b.kill()
            await b.wait()
        await a.stop(grace=0.2)


async def test_an_etcd_outage_pauses_status_writes_and_the_latest_status_lands_after(
    fresh_etcd: EtcdProcess, http_target: HttpTarget
) -> None:
    plane = await start_control_plane(
        settings(fresh_etcd.url, "replica-a"), clock=ScaledClock(SPEED)
    )
    try:
        assert plane.system(DiscoverySystem).checker is not None
        reg = registration(http_target.port, failure_threshold=2)
        await plane.system(DiscoverySystem).registry.register(ADMIN, reg)
        sid = reg.service_id
        await wait_until(
            lambda: plane.system(DiscoverySystem).index.get(sid).status == pb.HEALTH_STATE_HEALTHY,  # type: ignore[union-attr]
            10,
            "healthy",
        )
        await asyncio.to_thread(fresh_etcd.stop)
        down = time.monotonic()
        http_target.behave("/health", status=503)

        def pending_unhealthy() -> bool:
            pending = plane.system(DiscoverySystem).checker.writer.pending(sid)  # type: ignore[union-attr]
            return pending is not None and pending.status == pb.HEALTH_STATE_UNHEALTHY

        await wait_until(pending_unhealthy, 10, "an unhealthy transition waiting for etcd")
        await wait_until(
            lambda: plane.system(DiscoverySystem).checker.writer.failures >= 1, 10, "a failed write"
        )  # type: ignore[union-attr]
        assert len(http_target.hits("/health", down)) >= 2  # checks go on during the outage

        await asyncio.to_thread(fresh_etcd.start)
        await wait_until(
            lambda: (
                plane.system(DiscoverySystem).index.get(sid).status == pb.HEALTH_STATE_UNHEALTHY
            ),  # type: ignore[union-attr]
            20,
            "the unhealthy status to land",
        )
        health = plane.system(DiscoverySystem).index.get(sid).health  # type: ignore[union-attr]
        assert health.error == "HTTP 503 (expected 200)" and health.consecutive_failures >= 2
        assert plane.system(DiscoverySystem).checker.writer.backlog == 0
    finally:
        await plane.stop(grace=0.2)
