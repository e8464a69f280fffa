"""What to check for one instance and how often: derived from its registration, once.

Interpretation of the seed's HealthCheckConfig (the defaults are the seed's):

* ``interval`` seconds between the starts of two rounds; a round never outlasts one interval.
* ``timeout`` seconds per attempt (for gRPC checks also at most ``grpcCheck.timeout``), never
  more than the interval.
* ``retries`` is the number of attempts in one round: the round passes at the first passing
  attempt and fails only when all attempts failed (retries=1: a single attempt). Attempts are
  spaced by a tenth of the interval and cut short so the round ends within its interval.
* ``successThreshold`` / ``failureThreshold`` count consecutive rounds (see ``state``).
* A passing round is *slow* when its passing attempt took more than half the attempt timeout.

Durations are in the checker's clock's seconds: tests run them faster with a
:class:`~lucid_cp.clock.ScaledClock` instead of a setting in the product.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.discovery.health.state import Thresholds

DEFAULT_INTERVAL = 30
DEFAULT_TIMEOUT = 10
DEFAULT_RETRIES = 3
DEFAULT_SUCCESS_THRESHOLD = 1
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_GRPC_TIMEOUT = 5
SLOW_FRACTION = 0.5  # of the attempt timeout
PAUSE_FRACTION = 0.1  # of the interval, between attempts of one round


class CheckKind(enum.Enum):
    HTTP = "http"
    GRPC = "grpc"
    TCP = "tcp"


_KIND_BY_PROTOCOL = {
    pb.PROTOCOL_HTTP: CheckKind.HTTP,
    pb.PROTOCOL_HTTPS: CheckKind.HTTP,
    pb.PROTOCOL_GRPC: CheckKind.GRPC,
    pb.PROTOCOL_GRPCS: CheckKind.GRPC,
}


@dataclass(frozen=True, slots=True)
class CheckPlan:
    kind: CheckKind
    interval: float  # seconds
    timeout: float  # seconds per attempt
    attempts: int
    pause: float  # seconds between attempts
    thresholds: Thresholds

    @property
    def slow_after(self) -> float:
        """A passing attempt slower than this (seconds) makes the round slow."""
        return self.timeout * SLOW_FRACTION

    @classmethod
    def of(cls, instance: pb.ServiceInstance) -> CheckPlan:
        hc = instance.health_check
        kind = _KIND_BY_PROTOCOL.get(instance.endpoint.protocol, CheckKind.TCP)
        timeout = float(hc.timeout if hc.HasField("timeout") else DEFAULT_TIMEOUT)
        if kind is CheckKind.GRPC and hc.HasField("grpc_check"):
            grpc_timeout = hc.grpc_check.timeout if hc.grpc_check.HasField("timeout") else None
            timeout = min(timeout, float(grpc_timeout or DEFAULT_GRPC_TIMEOUT))
        interval = float(hc.interval if hc.HasField("interval") else DEFAULT_INTERVAL)
        return cls(
            kind=kind,
            interval=interval,
            timeout=min(timeout, interval),
            attempts=max(1, hc.retries if hc.HasField("retries") else DEFAULT_RETRIES),
            pause=interval * PAUSE_FRACTION,
            thresholds=Thresholds(
                success=max(1, _or(hc, "success_threshold", DEFAULT_SUCCESS_THRESHOLD)),
                failure=max(1, _or(hc, "failure_threshold", DEFAULT_FAILURE_THRESHOLD)),
            ),
        )


def _or(hc: pb.HealthCheckConfig, field: str, default: int) -> int:
    return int(getattr(hc, field)) if hc.HasField(field) else default  # type: ignore[arg-type]
