"""The status machine of one instance, with hysteresis. Pure: no I/O, no time.

Each check round ends in one :class:`Outcome`. The machine counts consecutive rounds and changes
status only when a threshold is reached, so one odd round never flips an instance:

* any status -> unhealthy after ``failure`` consecutive failing rounds;
* unknown / unhealthy -> healthy after ``success`` consecutive passing rounds (degraded instead
  when the round that reaches the threshold was slow);
* healthy -> degraded after ``failure`` consecutive slow rounds (a slow round is a pass: it
  resets the failure count and extends the success count);
* degraded -> healthy after ``success`` consecutive fast rounds.

``adopt`` takes a status set from outside (a manual update, another replica's write) and
restarts every count, so the new status holds until the same thresholds are met against it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb

State: TypeAlias = pb.HealthState.ValueType

HEALTHY = pb.HEALTH_STATE_HEALTHY
UNHEALTHY = pb.HEALTH_STATE_UNHEALTHY
DEGRADED = pb.HEALTH_STATE_DEGRADED
UNKNOWN = pb.HEALTH_STATE_UNKNOWN


class Outcome(enum.Enum):
    PASS = "pass"
    SLOW = "slow"  # passed, but slower than the plan's slow threshold
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Thresholds:
    success: int = 1
    failure: int = 3

    def __post_init__(self) -> None:
        if self.success < 1 or self.failure < 1:
            raise ValueError("health thresholds must be at least 1")


class HealthMachine:
    def __init__(self, thresholds: Thresholds, status: State = UNKNOWN) -> None:
        self.thresholds = thresholds
        self.status = _known(status)
        self.successes = 0  # consecutive passing rounds (fast or slow)
        self.failures = 0  # consecutive failing rounds
        self.slow = 0  # consecutive slow passes
        self.fast = 0  # consecutive fast passes

    def adopt(self, status: State) -> None:
        """Status set from outside: take it and count afresh from here."""
        self.status = _known(status)
        self.successes = self.failures = self.slow = self.fast = 0

    def observe(self, outcome: Outcome) -> State | None:
        """Counts one round; returns the new status on a transition, None otherwise."""
        if outcome is Outcome.FAIL:
            self.failures += 1
            self.successes = self.slow = self.fast = 0
        else:
            self.successes += 1
            self.failures = 0
            if outcome is Outcome.SLOW:
                self.slow, self.fast = self.slow + 1, 0
            else:
                self.slow, self.fast = 0, self.fast + 1
        new = self._target(outcome)
        if new is None or new == self.status:
            return None
        self.status = new
        return new

    def _target(self, outcome: Outcome) -> State | None:
        t = self.thresholds
        if outcome is Outcome.FAIL:
            return UNHEALTHY if self.failures >= t.failure else None
        if self.status in (UNKNOWN, UNHEALTHY):
            if self.successes < t.success:
                return None
            return DEGRADED if outcome is Outcome.SLOW else HEALTHY
        if self.status == HEALTHY and self.slow >= t.failure:
            return DEGRADED
        if self.status == DEGRADED and self.fast >= t.success:
            return HEALTHY
        return None


def _known(status: State) -> State:
    return status if status in (HEALTHY, UNHEALTHY, DEGRADED) else UNKNOWN
