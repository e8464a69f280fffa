"""Per-principal token buckets (the seed's rate-limit table), on the injected clock."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from lucid_cp.clock import Clock
from lucid_cp.config import RateLimit
from lucid_cp.errors import RateLimited


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``acquire(bucket, subject, cost)`` takes ``cost`` tokens (one by default) or raises
    RateLimited with the wait time (none taken). A cost above the bucket's capacity takes the
    whole bucket (it could never be met otherwise).

    Buckets are kept per (bucket name, subject); the least recently used are forgotten past
    ``max_principals`` (a forgotten bucket restarts full, which only ever errs on the lenient side).
    """

    def __init__(
        self, limits: dict[str, RateLimit], clock: Clock, *, max_principals: int = 100_000
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._max = max_principals
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()

    def acquire(self, bucket: str, subject: str, cost: int = 1) -> None:
        limit = self._limits.get(bucket)
        if limit is None:  # start-up checks every policy's bucket; never "unknown = unlimited"
            raise LookupError(f"rate-limit bucket {bucket!r} is not configured")
        now = self._clock.monotonic()
        rate = limit.capacity / limit.period
        key = (bucket, subject)
        state = self._buckets.get(key)
        if state is None:
            state = _Bucket(float(limit.capacity), now)
            self._buckets[key] = state
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            state.tokens = min(limit.capacity, state.tokens + (now - state.updated) * rate)
            state.updated = now
        cost = min(cost, limit.capacity)  # a batch larger than the bucket takes all of it
        if state.tokens < cost:
            raise RateLimited(bucket, (cost - state.tokens) / rate)
        state.tokens -= cost
