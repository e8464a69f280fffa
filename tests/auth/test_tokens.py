"""TokenVerifier on a fake clock: caching verified tokens never extends their life."""

from __future__ import annotations

import pytest

from lucid_cp.auth.tokens import Role, TokenVerifier, mint_token
from lucid_cp.clock import FakeClock
from lucid_cp.errors import Unauthenticated

SECRET = b"k" * 32


def test_a_cached_token_still_expires() -> None:
    clock = FakeClock(now=1_800_000_000.0)
    verifier = TokenVerifier(SECRET, clock)
    header = f"Bearer {mint_token(SECRET, 'api-gateway', Role.SERVICE, clock, ttl=60)}"
    assert verifier.verify(header).subject == "api-gateway"
    clock.advance(60 + 4)  # within the 5 s leeway: still valid, served from the cache
    assert verifier.verify(header).role is Role.SERVICE
    clock.advance(2)
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(header)


def test_a_failed_token_is_not_cached_as_valid() -> None:
    clock = FakeClock(now=1_800_000_000.0)
    verifier = TokenVerifier(SECRET, clock)
    forged = mint_token(b"x" * 32, "api-gateway", Role.ADMIN, clock)
    for _ in range(2):
        with pytest.raises(Unauthenticated, match="invalid token"):
            verifier.verify(f"Bearer {forged}")


def test_the_cache_is_bounded() -> None:
    clock = FakeClock(now=1_800_000_000.0)
    verifier = TokenVerifier(SECRET, clock)
    verifier.CACHE_SIZE = 3
    for i in range(10):
        verifier.verify(f"Bearer {mint_token(SECRET, f'svc-{i}', Role.SERVICE, clock)}")
    assert len(verifier._cache) == 3


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenVerifier(b"short", FakeClock())
