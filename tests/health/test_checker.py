"""The checker end to end on one replica: real targets, real store writes, real index.

The checker's clock runs SPEED times faster: intervals are the proto minimum (5 s), 200 ms of
real time; every wait polls with a timeout. Durations in records are the clock's."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.discovery import keys
from lucid_cp.discovery.records import decode_record

from .conftest import SPEED, registration
from .harness import ADMIN, Harness, running_checker
from .targets import GrpcTarget, HttpTarget, wait_until

HEALTHY, UNHEALTHY, DEGRADED = (
    pb.HEALTH_STATE_HEALTHY,
    pb.HEALTH_STATE_UNHEALTHY,
    pb.HEALTH_STATE_DEGRADED,
)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with running_checker() as harness:
        yield harness


async def test_new_instance_turns_healthy_with_real_persisted_values(
    h: Harness, http_target: HttpTarget
) -> None:
    sid = await h.register(registration(http_target.port, success_threshold=2))
    health = await h.wait_status(sid, HEALTHY)
    assert health.source == pb.HEALTH_SOURCE_ACTIVE
    assert (health.consecutive_successes, health.consecutive_failures) == (2, 0)
    assert health.response_time > 0 and health.error == ""
    assert abs(health.last_check.ToNanoseconds() / 1e9 - h.clock.now()) < 5 * SPEED
    details = dict(health.details)
    assert details["check"] == "http" and details["replica"] == "test-replica"
    assert details["target"] == f"http://127.0.0.1:{http_target.port}/health"
    assert details["httpStatus"] == 200 and details["attempts"] == 1
    assert h.record(sid).last_health_check == health.last_check
    assert len(http_target.hits("/health")) >= 2


async def test_failures_below_the_threshold_change_nothing_and_write_nothing(
    h: Harness, http_target: HttpTarget
) -> None:
    http_target.behave("/health")
    sid = await h.register(registration(http_target.port, failure_threshold=3))
    await h.wait_status(sid, HEALTHY)
    revision = await h.store.inner.current_revision()
    txns = h.store.txns
    since = time.monotonic()
    http_target.behave("/health", fail_next=2)  # two failing rounds, then passes again
    await wait_until(lambda: len(http_target.hits("/health", since)) >= 6, 5, "six more rounds")
    assert h.record(sid).status == HEALTHY
    assert await h.store.inner.current_revision() == revision and h.store.txns == txns

    http_target.behave("/health", status=503)
    health = await h.wait_status(sid, UNHEALTHY)
    assert health.consecutive_failures == 3 and health.consecutive_successes == 0
    assert health.error == "HTTP 503 (expected 200)"
    assert dict(health.details)["httpStatus"] == 503


async def test_slow_answers_degrade_and_fast_ones_recover(
    h: Harness, http_target: HttpTarget
) -> None:
    sid = await h.register(registration(http_target.port, success_threshold=2))
    await h.wait_status(sid, HEALTHY)
    http_target.behave("/health", delay=0.12)  # timeout 4 s (160 ms), slow above 2 s (80 ms)
    health = await h.wait_status(sid, DEGRADED)
    assert health.error.startswith("slow response: ") and health.response_time >= 120 * SPEED
    assert health.consecutive_failures == 0 and dict(health.details)["slowThresholdMs"] == 2000
    http_target.behave("/health")
    health = await h.wait_status(sid, HEALTHY)
    assert health.error == ""


async def test_unreachable_instances_turn_unhealthy_with_the_error_and_others_carry_on(
    h: Harness, http_target: HttpTarget
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        refused = await h.register(registration(closed.getsockname()[1], failure_threshold=1))
        nowhere = await h.register(
            registration(80, host="lucid-test-target.invalid", failure_threshold=1)
        )
        fine = await h.register(registration(http_target.port))
        assert (await h.wait_status(refused, UNHEALTHY)).error == "connection refused"
        error = (await h.wait_status(nowhere, UNHEALTHY)).error
        assert "cannot resolve host 'lucid-test-target.invalid'" in error
        await h.wait_status(fine, HEALTHY)
        assert h.checker.checked() == {refused, nowhere, fine}


async def test_a_hanging_endpoint_is_cut_at_its_timeout(
    h: Harness, http_target: HttpTarget
) -> None:
    http_target.behave("/health", hang=True)
    other = HttpTarget()
    await other.start()
    try:
        sid = await h.register(registration(http_target.port, failure_threshold=2))
        fine = await h.register(registration(other.port))
        health = await h.wait_status(sid, UNHEALTHY)
        assert health.error == "timed out after 4s"
        assert 3900 <= health.response_time < 400 * SPEED
        await h.wait_status(fine, HEALTHY)
    finally:
        await other.stop()


async def test_a_store_outage_pauses_writes_and_the_latest_status_lands_after(
    h: Harness, http_target: HttpTarget
) -> None:
    sid = await h.register(registration(http_target.port, failure_threshold=1))
    await h.wait_status(sid, HEALTHY)
    h.store.down = True
    http_target.behave("/health", status=500)

    def pending_unhealthy() -> bool:
        pending = h.checker.writer.pending(sid)
        return pending is not None and pending.status == UNHEALTHY

    await wait_until(pending_unhealthy, 5, "a pending unhealthy write")
    kv = await h.store.inner.get(keys.instance_key(sid))
    assert kv is not None and decode_record(kv.value, kv.mod_revision)[0].status == HEALTHY
    since = time.monotonic()
    await wait_until(lambda: len(http_target.hits("/health", since)) >= 3, 5, "checks go on")
    assert h.checker.writer.failures >= 1

    h.store.down = False
    health = await h.wait_status(sid, UNHEALTHY)
    assert health.error == "HTTP 500 (expected 200)"
    assert h.checker.writer.backlog == 0


async def test_deregistration_stops_checks_and_a_pending_write_never_resurrects_it(
    h: Harness, http_target: HttpTarget
) -> None:
    sid = await h.register(registration(http_target.port, path="/gone", failure_threshold=1))
    await h.wait_status(sid, HEALTHY)
    lease = h.index.lease_of(sid)

    h.store.down = True  # this replica is cut off while the instance fails ...
    http_target.behave("/gone", status=500)
    await wait_until(lambda: h.checker.writer.pending(sid) is not None, 5, "a pending write")
    await h.store.inner.revoke_lease(lease)  # ... and it is deregistered meanwhile
    h.store.down = False

    await wait_until(lambda: sid not in h.checker.checked(), 5, "the checker to drop it")
    dropped = time.monotonic()
    await wait_until(lambda: h.checker.writer.backlog == 0, 5, "the pending write to go")
    assert await h.store.inner.get(keys.instance_key(sid)) is None
    other = await h.register(registration(http_target.port, name="other-service"))
    await wait_until(lambda: len(http_target.hits("/health", dropped)) >= 3, 5, "other's rounds")
    assert h.checker.checked() == {other}
    assert len(http_target.hits("/gone", dropped)) <= 1  # at most a round already in flight
    assert await h.store.inner.get(keys.instance_key(sid)) is None


async def test_reregistering_a_service_id_starts_a_fresh_status_machine(
    h: Harness, http_target: HttpTarget
) -> None:
    reg = registration(http_target.port, failure_threshold=1)
    sid = await h.register(reg)
    await h.wait_status(sid, HEALTHY)
    await h.registry.deregister(ADMIN, sid)
    await wait_until(lambda: sid not in h.checker.checked(), 5, "the checker to drop it")
    http_target.behave("/health", status=500)
    await h.register(reg)
    assert h.record(sid).status == pb.HEALTH_STATE_UNKNOWN
    await h.wait_status(sid, UNHEALTHY)


async def test_manual_update_holds_until_the_active_checks_reach_a_threshold_after_it(
    h: Harness, http_target: HttpTarget
) -> None:
    sid = await h.register(registration(http_target.port, success_threshold=3))
    await h.wait_status(sid, HEALTHY)

    since = time.monotonic()
    update = pb.HealthUpdate(status=UNHEALTHY, error="maintenance")
    await h.registry.update_health(ADMIN, sid, update)
    assert h.record(sid).health.source == pb.HEALTH_SOURCE_MANUAL
    health = await h.wait_status(sid, HEALTHY)
    assert health.source == pb.HEALTH_SOURCE_ACTIVE and health.consecutive_successes == 3
    assert len(http_target.hits("/health", since)) >= 3  # three passing rounds after the update

    http_target.behave("/health", status=500)
    await h.wait_status(sid, UNHEALTHY)
    await h.registry.update_health(ADMIN, sid, pb.HealthUpdate(status=HEALTHY))
    assert h.record(sid).status == HEALTHY
    health = await h.wait_status(sid, UNHEALTHY)
    assert health.consecutive_failures == 3 and health.source == pb.HEALTH_SOURCE_ACTIVE


async def test_grpc_instances_follow_their_health_service(
    h: Harness, grpc_target: GrpcTarget
) -> None:
    await grpc_target.set("session.v1.Sessions", serving=True)
    reg = registration(
        grpc_target.port,
        protocol=pb.PROTOCOL_GRPC,
        failure_threshold=1,
        grpc_check=pb.GrpcCheck(service="session.v1.Sessions"),
    )
    sid = await h.register(reg)
    health = await h.wait_status(sid, HEALTHY)
    assert dict(health.details)["grpcStatus"] == "SERVING"
    assert (
        dict(health.details)["target"] == f"grpc://127.0.0.1:{grpc_target.port}/session.v1.Sessions"
    )
    await grpc_target.set("session.v1.Sessions", serving=False)
    health = await h.wait_status(sid, UNHEALTHY)
    assert health.error == "service 'session.v1.Sessions' reports NOT_SERVING"
    await grpc_target.stop()
    await h.registry.deregister(ADMIN, sid)
    await wait_until(lambda: not h.checker.checked(), 5, "the checker to drop it")


async def test_onion_hosts_are_not_actively_checked(h: Harness, http_target: HttpTarget) -> None:
    onion = await h.register(registration(443, host="api-gateway.lucid.onion"))
    local = await h.register(registration(http_target.port))
    await h.wait_status(local, HEALTHY)
    assert onion not in h.checker.checked()
    assert h.record(onion).status == pb.HEALTH_STATE_UNKNOWN
