"""RateLimiter: per-(bucket, principal) token buckets on a FakeClock."""

from __future__ import annotations

import pytest

from lucid_cp.auth.ratelimit import RateLimiter
from lucid_cp.clock import FakeClock
from lucid_cp.config import RateLimit
from lucid_cp.errors import RateLimited


def limiter(clock: FakeClock, *, max_principals: int = 100_000, **limits: RateLimit) -> RateLimiter:
    return RateLimiter(
        limits or {"registration": RateLimit(3, 60.0)}, clock, max_principals=max_principals
    )


def drain(rl: RateLimiter, bucket: str, subject: str, n: int) -> None:
    for _ in range(n):
        rl.acquire(bucket, subject)


def test_capacity_requests_pass_then_the_next_is_refused() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    drain(rl, "registration", "alice", 3)
    with pytest.raises(RateLimited) as err:
        rl.acquire("registration", "alice")
    assert err.value.bucket == "registration"


def test_retry_after_is_the_time_to_the_next_token() -> None:
    clock = FakeClock()
    rl = limiter(clock)  # 3 per 60 s: one token every 20 s
    drain(rl, "registration", "alice", 3)
    with pytest.raises(RateLimited) as err:
        rl.acquire("registration", "alice")
    assert err.value.retry_after == pytest.approx(20.0)
    assert err.value.details == {"bucket": "registration", "retryAfterSeconds": 20.0}
    clock.advance(5.0)
    with pytest.raises(RateLimited) as err:
        rl.acquire("registration", "alice")
    assert err.value.retry_after == pytest.approx(15.0)


def test_waiting_retry_after_is_enough_and_just_less_is_not() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    drain(rl, "registration", "alice", 3)
    clock.advance(19.9)
    with pytest.raises(RateLimited) as err:
        rl.acquire("registration", "alice")
    clock.advance(err.value.retry_after)
    rl.acquire("registration", "alice")
    with pytest.raises(RateLimited):  # that refill was exactly one token
        rl.acquire("registration", "alice")


def test_a_refused_request_does_not_consume_a_token() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    drain(rl, "registration", "alice", 3)
    for _ in range(5):
        with pytest.raises(RateLimited):
            rl.acquire("registration", "alice")
    clock.advance(20.0)
    rl.acquire("registration", "alice")


def test_refill_is_capped_at_capacity() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    drain(rl, "registration", "alice", 3)
    clock.advance(3600.0)  # worth 180 tokens, but the bucket holds 3
    drain(rl, "registration", "alice", 3)
    with pytest.raises(RateLimited):
        rl.acquire("registration", "alice")


def test_refill_is_proportional_to_elapsed_time() -> None:
    clock = FakeClock()
    rl = limiter(clock, api=RateLimit(10, 1.0))  # 10 per second
    drain(rl, "api", "alice", 10)
    clock.advance(0.5)
    drain(rl, "api", "alice", 5)
    with pytest.raises(RateLimited) as err:
        rl.acquire("api", "alice")
    assert err.value.retry_after == pytest.approx(0.1)


def test_the_limiter_reads_the_monotonic_clock_not_the_wall_clock() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    drain(rl, "registration", "alice", 3)
    clock.set_now(clock.now() + 86_400.0)  # a wall-clock jump refills nothing
    with pytest.raises(RateLimited):
        rl.acquire("registration", "alice")


def test_principals_have_separate_buckets() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    drain(rl, "registration", "alice", 3)
    drain(rl, "registration", "bob", 3)
    for subject in ("alice", "bob"):
        with pytest.raises(RateLimited):
            rl.acquire("registration", subject)


def test_buckets_are_separate_for_one_principal() -> None:
    clock = FakeClock()
    rl = limiter(clock, registration=RateLimit(1), discovery=RateLimit(2))
    rl.acquire("registration", "alice")
    with pytest.raises(RateLimited) as err:
        rl.acquire("registration", "alice")
    assert err.value.bucket == "registration"
    drain(rl, "discovery", "alice", 2)
    with pytest.raises(RateLimited) as err:
        rl.acquire("discovery", "alice")
    assert err.value.bucket == "discovery"


def test_default_period_is_a_minute() -> None:
    clock = FakeClock()
    rl = limiter(clock, health=RateLimit(2))
    drain(rl, "health", "alice", 2)
    with pytest.raises(RateLimited) as err:
        rl.acquire("health", "alice")
    assert err.value.retry_after == pytest.approx(30.0)


def test_the_least_recently_used_principal_is_forgotten_and_restarts_full() -> None:
    clock = FakeClock()
    rl = limiter(clock, max_principals=2)
    drain(rl, "registration", "alice", 3)
    drain(rl, "registration", "bob", 3)
    with pytest.raises(RateLimited):
        rl.acquire("registration", "alice")  # alice is now the most recently used
    rl.acquire("registration", "carol")  # evicts bob, the least recently used
    with pytest.raises(RateLimited):
        rl.acquire("registration", "alice")
    drain(rl, "registration", "bob", 3)  # forgotten: a full bucket again


def test_unknown_bucket_is_refused() -> None:
    rl = limiter(FakeClock())
    with pytest.raises((LookupError, ValueError)):  # KeyError is a LookupError
        rl.acquire("no-such-bucket", "alice")


def test_a_cost_takes_that_many_tokens_and_one_above_capacity_takes_the_bucket() -> None:
    clock = FakeClock()
    rl = limiter(clock)  # 3 per 60 s
    rl.acquire("registration", "alice", 2)
    with pytest.raises(RateLimited) as err:
        rl.acquire("registration", "alice", 2)  # 1 left: none taken
    assert err.value.retry_after == pytest.approx(20.0)
    rl.acquire("registration", "alice", 1)
    clock.advance(60.0)
    rl.acquire("registration", "alice", 50)  # a batch larger than the bucket: all of it
    with pytest.raises(RateLimited):
        rl.acquire("registration", "alice")
