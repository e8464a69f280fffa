"""TokenVerifier on a fake clock: caching verified tokens never extends their life."""

from __future__ import annotations

import jwt
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


NOW = 1_800_000_000


def signed(**overrides: object) -> str:
    claims: dict[str, object] = {
        "sub": "api-gateway",
        "roles": ["service"],
        "iss": "lucid-cp",
        "aud": "lucid-cp",
        "iat": NOW,
        "exp": NOW + 60,
    }
    claims.update(overrides)
    return "Bearer " + jwt.encode({k: v for k, v in claims.items() if v is not None}, SECRET)


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", ["1800000000", "soon", True, [NOW], {"t": NOW}])
def test_time_claims_must_be_numbers(claim: str, value: object) -> None:
    verifier = TokenVerifier(SECRET, FakeClock(now=float(NOW)))
    with pytest.raises(Unauthenticated, match=f"'{claim}' must be a number"):
        verifier.verify(signed(**{claim: value}))


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_exp_and_iat_are_required(claim: str) -> None:
    verifier = TokenVerifier(SECRET, FakeClock(now=float(NOW)))
    with pytest.raises(Unauthenticated, match=claim):
        verifier.verify(signed(**{claim: None}))


def test_a_non_numeric_nbf_no_longer_hides_a_not_yet_valid_token() -> None:
    verifier = TokenVerifier(SECRET, FakeClock(now=float(NOW)))
    with pytest.raises(Unauthenticated):
        verifier.verify(signed(nbf=str(NOW + 3600)))
    with pytest.raises(Unauthenticated, match="not yet valid"):
        verifier.verify(signed(nbf=NOW + 3600))


def test_an_iat_beyond_the_leeway_in_the_future_is_refused_until_its_time_comes() -> None:
    clock = FakeClock(now=float(NOW))
    verifier = TokenVerifier(SECRET, clock)
    assert verifier.verify(signed(iat=NOW + 5)).subject == "api-gateway"  # within the leeway
    future = signed(iat=NOW + 30, exp=NOW + 90)
    for _ in range(2):  # the second time from the cache: still refused
        with pytest.raises(Unauthenticated, match="not yet valid"):
            verifier.verify(future)
    clock.advance(25)  # iat is now within the leeway: the cached verification serves it
    assert verifier.verify(future).subject == "api-gateway"
