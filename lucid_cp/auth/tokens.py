"""JWT verification and minting. HS256 only, explicit; exp, iat, iss, aud and sub required.

A token's claims: ``sub`` (the service name, or an admin's name), ``roles`` (["service"] or
["admin"]), ``iss`` and ``aud`` ("lucid-cp" by default), ``exp``, ``iat`` and optionally ``nbf``.
The time claims must be JSON numbers (NumericDate, RFC 7519 section 2); ``iat`` may not lie
further in the future than the leeway, ``nbf`` is honoured, ``exp`` is enforced.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from dataclasses import dataclass

import jwt

from lucid_cp.clock import Clock
from lucid_cp.errors import PermissionDenied, Unauthenticated

ALGORITHM = "HS256"
ISSUER = "lucid-cp"
AUDIENCE = "lucid-cp"
LEEWAY_SECONDS = 5
MIN_SECRET_BYTES = 32


class Role(enum.Enum):
    SERVICE = "service"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDenied("this operation requires an admin token")

    def require_acts_as(self, service_name: str) -> None:
        """A service token acts only as its own service; admins act as anyone."""
        if not self.is_admin and self.subject != service_name:
            raise PermissionDenied(
                f"token subject {self.subject!r} may not act for service {service_name!r}",
                details={"subject": self.subject, "serviceName": service_name},
            )


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    exp: float
    not_before: float  # the later of iat and nbf: the token is not valid before it


class TokenVerifier:
    """Verifies bearer tokens. Tokens whose signature and claims were verified once are kept in a
    small LRU keyed by the exact token text; a hit still re-checks exp, iat and nbf against the
    clock, so caching never extends a token's life nor starts it early. Signature verification
    dominated per-call CPU."""

    CACHE_SIZE = 10_000

    def __init__(
        self,
        secret: bytes,
        clock: Clock,
        *,
        issuer: str = ISSUER,
        audience: str = AUDIENCE,
        leeway: int = LEEWAY_SECONDS,
    ) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"JWT secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self._clock = clock
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._cache: OrderedDict[str, _Verified] = OrderedDict()

    def verify(self, authorization: str | None) -> Principal:
        """Verifies an ``authorization`` header value ("Bearer <jwt>")."""
        if not authorization:
            raise Unauthenticated("missing authorization: expected 'Bearer <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("malformed authorization: expected 'Bearer <token>'")
        verified = self._cache.get(token)
        if verified is None:
            verified = self._decode(token)
            self._cache[token] = verified
            if len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(token)
        now = self._clock.now()
        if now > verified.exp + self._leeway:
            raise Unauthenticated("token expired")
        if now + self._leeway < verified.not_before:
            raise Unauthenticated("token not yet valid")
        return verified.principal

    def _decode(self, token: str) -> _Verified:
        """Checks signature (HS256 only), iss, aud and the required claims."""
        try:
            # pyjwt checks exp/iat/nbf against the wall clock; we check them against the
            # injected clock instead, so verify_exp is off here and done in verify().
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "require": ["exp", "iat", "iss", "aud", "sub"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        exp = _numeric_date(claims, "exp")
        iat = _numeric_date(claims, "iat")
        nbf = _numeric_date(claims, "nbf") if "nbf" in claims else iat
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("token has no subject")
        principal = Principal(subject, _role_of(claims.get("roles")))
        return _Verified(principal, exp, max(iat, nbf))


def _numeric_date(claims: dict[str, object], name: str) -> float:
    """A time claim: a finite JSON number (bool is not one, nor is a numeric string)."""
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Unauthenticated(f"token '{name}' must be a number")
    return float(value)


def _role_of(roles: object) -> Role:
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Unauthenticated("token 'roles' must be a list of strings")
    if Role.ADMIN.value in roles:
        return Role.ADMIN
    if Role.SERVICE.value in roles:
        return Role.SERVICE
    raise Unauthenticated("token has neither the 'service' nor the 'admin' role")


def mint_token(
    secret: bytes,
    subject: str,
    role: Role,
    clock: Clock,
    *,
    ttl: int = 3600,
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
) -> str:
    now = int(clock.now())
    claims = {
        "sub": subject,
        "roles": [role.value],
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": now + ttl,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
