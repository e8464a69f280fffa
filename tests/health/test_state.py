"""The status machine: thresholds honoured exactly, hysteresis, degraded, adopt."""

from __future__ import annotations

import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.discovery.health.plan import CheckKind, CheckPlan
from lucid_cp.discovery.health.state import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    UNKNOWN,
    HealthMachine,
    Outcome,
    Thresholds,
)

P, S, F = Outcome.PASS, Outcome.SLOW, Outcome.FAIL


def run(machine: HealthMachine, outcomes: list[Outcome]) -> list[int | None]:
    return [machine.observe(o) for o in outcomes]


@pytest.mark.parametrize("success", [1, 2, 5])
def test_unknown_becomes_healthy_after_exactly_success_threshold_passes(success: int) -> None:
    machine = HealthMachine(Thresholds(success=success, failure=3))
    changes = run(machine, [P] * success)
    assert changes == [None] * (success - 1) + [HEALTHY]
    assert machine.successes == success and machine.failures == 0


@pytest.mark.parametrize("failure", [1, 3, 10])
def test_healthy_becomes_unhealthy_after_exactly_failure_threshold_failures(failure: int) -> None:
    machine = HealthMachine(Thresholds(success=1, failure=failure), HEALTHY)
    changes = run(machine, [F] * failure)
    assert changes == [None] * (failure - 1) + [UNHEALTHY]
    assert machine.failures == failure


def test_a_pass_between_failures_restarts_the_count_no_flapping() -> None:
    machine = HealthMachine(Thresholds(success=2, failure=3), HEALTHY)
    assert run(machine, [F, F, P, F, F, P, F, F]) == [None] * 8
    assert machine.status == HEALTHY
    assert run(machine, [F]) == [UNHEALTHY]
    # and back: one pass is not enough with successThreshold 2, a failure restarts the count
    assert run(machine, [P, F, P]) == [None, None, None]
    assert run(machine, [P]) == [HEALTHY]


def test_unknown_goes_unhealthy_only_after_failure_threshold() -> None:
    machine = HealthMachine(Thresholds(success=1, failure=2))
    assert run(machine, [F, F]) == [None, UNHEALTHY]


def test_steady_state_reports_no_transition() -> None:
    machine = HealthMachine(Thresholds(success=1, failure=3), HEALTHY)
    assert run(machine, [P] * 50) == [None] * 50
    machine = HealthMachine(Thresholds(success=1, failure=3), UNHEALTHY)
    assert run(machine, [F] * 50) == [None] * 50


def test_slow_passes_degrade_after_failure_threshold_and_fast_ones_recover() -> None:
    machine = HealthMachine(Thresholds(success=2, failure=3), HEALTHY)
    assert run(machine, [S, S, P, S, S]) == [None] * 5  # a fast pass breaks the slow run
    assert run(machine, [S]) == [DEGRADED]
    assert machine.failures == 0  # slow is still a pass
    assert run(machine, [P, S, P]) == [None, None, None]
    assert run(machine, [P]) == [HEALTHY]


def test_degraded_instance_fails_like_any_other() -> None:
    machine = HealthMachine(Thresholds(success=1, failure=2), DEGRADED)
    assert run(machine, [S, F, F]) == [None, None, UNHEALTHY]


def test_recovery_with_a_slow_pass_lands_in_degraded() -> None:
    machine = HealthMachine(Thresholds(success=2, failure=3), UNHEALTHY)
    assert run(machine, [P, S]) == [None, DEGRADED]


def test_adopt_takes_the_status_and_restarts_every_count() -> None:
    machine = HealthMachine(Thresholds(success=2, failure=3), HEALTHY)
    run(machine, [F, F])
    machine.adopt(UNHEALTHY)
    assert machine.status == UNHEALTHY and machine.failures == 0
    assert run(machine, [P]) == [None]  # the manual status holds for successThreshold rounds
    assert run(machine, [P]) == [HEALTHY]
    machine.adopt(pb.HEALTH_STATE_UNSPECIFIED)
    assert machine.status == UNKNOWN


def test_thresholds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Thresholds(success=0)


def _instance(protocol: int, **hc: object) -> pb.ServiceInstance:
    instance = pb.ServiceInstance(service_id="s")
    instance.endpoint.protocol = protocol  # type: ignore[assignment]
    instance.health_check.MergeFrom(pb.HealthCheckConfig(endpoint="/health", **hc))  # type: ignore[arg-type]
    return instance


def test_plan_takes_the_seed_defaults() -> None:
    plan = CheckPlan.of(_instance(pb.PROTOCOL_HTTPS))
    assert plan.kind is CheckKind.HTTP
    assert (plan.interval, plan.timeout, plan.attempts, plan.pause) == (30.0, 10.0, 3, 3.0)
    assert plan.thresholds == Thresholds(success=1, failure=3)
    assert plan.slow_after == 5.0


def test_plan_caps_timeouts_by_grpc_timeout_and_interval() -> None:
    grpc_check = pb.GrpcCheck(service="x", timeout=2)
    plan = CheckPlan.of(_instance(pb.PROTOCOL_GRPCS, interval=5, timeout=9, grpc_check=grpc_check))
    assert plan.kind is CheckKind.GRPC and plan.timeout == 2
    plan = CheckPlan.of(_instance(pb.PROTOCOL_HTTP, interval=5, timeout=60, retries=1))
    assert plan.timeout == 5 and plan.attempts == 1
    assert CheckPlan.of(_instance(pb.PROTOCOL_UNSPECIFIED)).kind is CheckKind.TCP
