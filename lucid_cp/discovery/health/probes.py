"""Probes: one attempt against one instance, and a round of attempts with retries.

* HTTP (protocol http/https): ``httpCheck.method`` with its headers and body to
  ``endpoint.host:port`` + ``healthCheck.endpoint``; passes when the status is in
  ``httpCheck.expectedStatus`` (default [200]).
  TLS (https): the only verification is what ``endpoint.tls`` asks for. With a ``certAuthority``
  the server chain must lead to it and the certificate must name ``endpoint.host``; without one
  nothing is verified (a health check asks "are you up", not "who are you"). No client
  certificate is presented: the control plane never keeps clients' private keys readable.
* gRPC (protocol grpc/grpcs): grpc.health.v1 Check, in ``grpc_probe`` (the one module of the
  checker that imports grpc), injected by the wiring.
* TCP for any other protocol: a connection that opens passes.

Every probe is bounded by the attempt timeout here, whatever the probe does inside. Timeouts,
pauses and measured durations are the injected clock's (a ScaledClock runs them faster).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
from dataclasses import dataclass, field
from typing import Protocol

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.clock import Clock, SystemClock
from lucid_cp.discovery.health import http_client
from lucid_cp.discovery.health.plan import CheckKind, CheckPlan

log = logging.getLogger("lucid_cp.discovery.health")

Detail = dict[str, str | int | float]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    seconds: float
    error: str = ""
    detail: Detail = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RoundResult:
    """The last attempt of a round (the passing one, if any) and how many attempts were made."""

    last: ProbeResult
    attempts: int
    started: float  # clock.monotonic() when the first attempt got its concurrency slot

    @property
    def ok(self) -> bool:
        return self.last.ok


class Prober(Protocol):
    async def probe(self, instance: pb.ServiceInstance, timeout: float) -> ProbeResult: ...

    async def release(self, service_id: str) -> None:
        """Forgets anything cached for the instance (it is gone or no longer ours)."""
        ...

    async def close(self) -> None: ...


# RFC 6761 section 6.4: names under .invalid never resolve, and resolvers should answer that at
# once rather than ask a name server. glibc does ask; we answer here, so no query leaves the host.
_NEVER_RESOLVES = (".invalid",)


def unresolvable(host: str) -> ProbeResult | None:
    """A failed result for special-use names that must not be looked up, else None."""
    name = host.rstrip(".").lower()
    if any(name.endswith(suffix) or name == suffix[1:] for suffix in _NEVER_RESOLVES):
        return ProbeResult(False, 0.0, f"cannot resolve host {host!r}: reserved name (RFC 6761)")
    return None


def describe(exc: BaseException, host: str) -> str:
    """A short, stable error text for a failed attempt (recorded in HealthStatus.error)."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {host!r}: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc}"
    if isinstance(exc, http_client.HttpProtocolError):
        return f"bad http response: {exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


class TlsContexts:
    """Client TLS contexts for HTTPS checks, built on first use and reused: one that verifies
    nothing, and one per certAuthority (bounded; the oldest is dropped first)."""

    def __init__(self, max_authorities: int = 256) -> None:
        self._insecure: ssl.SSLContext | None = None
        self._by_authority: dict[str, ssl.SSLContext] = {}
        self._max = max_authorities

    def for_endpoint(self, tls: pb.TlsConfig) -> ssl.SSLContext:
        if not tls.cert_authority:
            if self._insecure is None:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                self._insecure = ctx
            return self._insecure
        known = self._by_authority.get(tls.cert_authority)
        if known is not None:
            return known
        verifying = ssl.create_default_context(cadata=tls.cert_authority)
        if len(self._by_authority) >= self._max:
            del self._by_authority[next(iter(self._by_authority))]
        self._by_authority[tls.cert_authority] = verifying
        return verifying


_METHODS = {pb.HTTP_METHOD_GET: "GET", pb.HTTP_METHOD_POST: "POST", pb.HTTP_METHOD_HEAD: "HEAD"}


class HttpProber:
    def __init__(
        self, user_agent: str = "lucid-health-check", *, clock: Clock | None = None
    ) -> None:
        self._user_agent = user_agent
        self._clock: Clock = clock or SystemClock()
        self._tls = TlsContexts()

    async def probe(self, instance: pb.ServiceInstance, timeout: float) -> ProbeResult:
        if (reserved := unresolvable(instance.endpoint.host)) is not None:
            return reserved
        ep, check = instance.endpoint, instance.health_check.http_check
        expected = list(check.expected_status) or [200]
        headers = {"User-Agent": self._user_agent, **dict(check.headers)}
        clock = self._clock
        started = clock.monotonic()
        try:
            request = http_client.build_request(
                _METHODS.get(check.method, "GET"),
                ep.host,
                ep.port,
                instance.health_check.endpoint or "/",
                headers,
                check.body.encode(),
            )
            tls = self._tls.for_endpoint(ep.tls) if ep.protocol == pb.PROTOCOL_HTTPS else None
            async with clock.timeout(timeout):
                status = await http_client.request_status(
                    ep.host, ep.port, request, tls=tls, server_hostname=ep.host
                )
        except TimeoutError:
            return ProbeResult(False, clock.monotonic() - started, f"timed out after {timeout:g}s")
        except (OSError, ValueError, http_client.HttpProtocolError) as exc:
            return ProbeResult(False, clock.monotonic() - started, describe(exc, ep.host))
        elapsed = clock.monotonic() - started
        if status in expected:
            return ProbeResult(True, elapsed, detail={"httpStatus": status})
        wanted = ", ".join(str(s) for s in expected)
        return ProbeResult(
            False, elapsed, f"HTTP {status} (expected {wanted})", {"httpStatus": status}
        )

    async def release(self, service_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


class TcpProber:
    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()

    async def probe(self, instance: pb.ServiceInstance, timeout: float) -> ProbeResult:
        if (reserved := unresolvable(instance.endpoint.host)) is not None:
            return reserved
        ep = instance.endpoint
        clock = self._clock
        started = clock.monotonic()
        try:
            async with clock.timeout(timeout):
                _, writer = await asyncio.open_connection(ep.host, ep.port)
        except TimeoutError:
            return ProbeResult(False, clock.monotonic() - started, f"timed out after {timeout:g}s")
        except OSError as exc:
            return ProbeResult(False, clock.monotonic() - started, describe(exc, ep.host))
        elapsed = clock.monotonic() - started
        http_client.abort_with_reset(writer)
        return ProbeResult(True, elapsed)

    async def release(self, service_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


class ProtocolProber:
    """Picks the probe by the plan's kind. Without a gRPC prober, gRPC targets get TCP checks."""

    def __init__(self, http: Prober, tcp: Prober, grpc: Prober | None = None) -> None:
        self._by_kind: dict[CheckKind, Prober] = {
            CheckKind.HTTP: http,
            CheckKind.TCP: tcp,
            CheckKind.GRPC: grpc or tcp,
        }

    def for_kind(self, kind: CheckKind) -> Prober:
        return self._by_kind[kind]

    async def release(self, service_id: str) -> None:
        for prober in set(self._by_kind.values()):
            await prober.release(service_id)

    async def close(self) -> None:
        for prober in set(self._by_kind.values()):
            await prober.close()


async def run_round(
    prober: Prober,
    instance: pb.ServiceInstance,
    plan: CheckPlan,
    slots: asyncio.Semaphore,
    clock: Clock,
) -> RoundResult:
    """Up to ``plan.attempts`` attempts, each holding one concurrency slot and bounded by the
    plan's timeout; the round ends at the first pass and never outlasts one interval."""
    deadline = clock.monotonic() + plan.interval
    started = 0.0
    attempts = 0
    last = ProbeResult(False, 0.0, "no attempt fitted in the interval")
    while attempts < plan.attempts:
        if attempts:
            if clock.monotonic() + plan.pause >= deadline:
                break
            await clock.sleep(plan.pause)
        async with slots:
            if not attempts:
                started = clock.monotonic()
            timeout = min(plan.timeout, deadline - clock.monotonic())
            if timeout <= 0:
                break
            attempts += 1
            last = await _attempt(prober, instance, timeout, clock)
        if last.ok:
            break
    return RoundResult(last, attempts, started)


async def _attempt(
    prober: Prober, instance: pb.ServiceInstance, timeout: float, clock: Clock
) -> ProbeResult:
    started = clock.monotonic()
    try:
        async with clock.timeout(timeout):
            result = await prober.probe(instance, timeout)
        # The round's clock times the attempt, whichever clock the prober keeps (the plan's
        # slow threshold is in this clock's seconds).
        return dataclasses.replace(result, seconds=clock.monotonic() - started)
    except TimeoutError:
        return ProbeResult(False, clock.monotonic() - started, f"timed out after {timeout:g}s")
    except Exception as exc:
        log.warning("probe of %s raised", instance.service_id, exc_info=exc)
        return ProbeResult(
            False, clock.monotonic() - started, describe(exc, instance.endpoint.host)
        )
