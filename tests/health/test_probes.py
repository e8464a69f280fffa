"""Probes against real targets on 127.0.0.1: HTTP(S), gRPC and TCP, and rounds with retries."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.clock import ScaledClock
from lucid_cp.discovery.health.grpc_probe import GrpcHealthProber
from lucid_cp.discovery.health.plan import CheckPlan
from lucid_cp.discovery.health.probes import HttpProber, TcpProber, run_round

from .conftest import SPEED, instance_of, registration
from .targets import GrpcTarget, HttpTarget

TIMEOUT = 0.5


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening) for the whole test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


async def test_http_probe_sends_method_headers_and_body_and_accepts_expected_status(
    http_target: HttpTarget,
) -> None:
    http_target.behave("/ready", status=204)
    reg = registration(
        http_target.port,
        path="/ready",
        http_check=pb.HttpCheck(
            method=pb.HTTP_METHOD_POST,
            headers={"X-Probe": "1"},
            body="ping",
            expected_status=[200, 204],
        ),
    )
    result = await HttpProber("ua-test").probe(instance_of(reg), TIMEOUT)
    assert result.ok and result.detail == {"httpStatus": 204} and result.seconds > 0
    [request] = http_target.hits("/ready")
    assert (request.method, request.body) == ("POST", b"ping")
    assert request.headers["x-probe"] == "1" and request.headers["user-agent"] == "ua-test"
    assert request.headers["host"] == f"127.0.0.1:{http_target.port}"


async def test_http_probe_fails_on_unexpected_status_with_the_status_recorded(
    http_target: HttpTarget,
) -> None:
    http_target.behave("/health", status=503)
    result = await HttpProber().probe(instance_of(registration(http_target.port)), TIMEOUT)
    assert not result.ok
    assert result.error == "HTTP 503 (expected 200)" and result.detail["httpStatus"] == 503


async def test_http_probe_default_method_is_get_with_status_200(http_target: HttpTarget) -> None:
    reg = registration(http_target.port, http_check=pb.HttpCheck(method=pb.HTTP_METHOD_HEAD))
    assert (await HttpProber().probe(instance_of(reg), TIMEOUT)).ok
    assert (await HttpProber().probe(instance_of(registration(http_target.port)), TIMEOUT)).ok
    assert [r.method for r in http_target.requests] == ["HEAD", "GET"]


async def test_http_probe_refuses_header_injection(http_target: HttpTarget) -> None:
    reg = registration(http_target.port, http_check=pb.HttpCheck(headers={"X": "a\r\nEvil: 1"}))
    result = await HttpProber().probe(instance_of(reg), TIMEOUT)
    assert not result.ok and "invalid health-check header" in result.error
    assert http_target.requests == []


async def test_refused_connection_fails_with_the_reason(refused_port: int) -> None:
    for prober in (HttpProber(), TcpProber()):
        result = await prober.probe(instance_of(registration(refused_port)), TIMEOUT)
        assert not result.ok and result.error == "connection refused"


@pytest.mark.parametrize("make", [HttpProber, TcpProber, GrpcHealthProber])
async def test_reserved_invalid_names_fail_without_any_lookup(make, monkeypatch) -> None:
    """Nothing may leave the machine: .invalid names are answered without a DNS query."""

    def no_lookup(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a name lookup was attempted: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_lookup)
    prober = make()
    try:
        reg = registration(80, host="no-such-host.invalid")
        result = await prober.probe(instance_of(reg), 2.0)
    finally:
        await prober.close()
    assert not result.ok and "cannot resolve host 'no-such-host.invalid'" in result.error


async def test_unresolvable_host_fails_with_the_reason() -> None:
    reg = registration(80, host="no-such-host.invalid")
    result = await HttpProber().probe(instance_of(reg), 2.0)
    assert not result.ok and "no-such-host.invalid" in result.error


async def test_hanging_endpoint_is_cut_at_the_timeout(http_target: HttpTarget) -> None:
    http_target.behave("/health", hang=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await HttpProber().probe(instance_of(registration(http_target.port)), 0.2)
    elapsed = loop.time() - started
    assert not result.ok and result.error == "timed out after 0.2s"
    assert 0.19 <= elapsed < 1.0  # the endpoint never answers: only the timeout ends it


async def test_tcp_probe_passes_when_the_port_accepts(http_target: HttpTarget) -> None:
    reg = registration(http_target.port, protocol=pb.PROTOCOL_UNSPECIFIED)
    assert (await TcpProber().probe(instance_of(reg), TIMEOUT)).ok


def _self_signed(tmp: Path, name: str) -> tuple[Path, Path, str]:
    x509 = pytest.importorskip("cryptography.x509")
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, pem.decode()


async def test_https_verifies_only_what_endpoint_tls_asks(tmp_path: Path) -> None:
    cert, key, pem = _self_signed(tmp_path, "target")
    _, _, other_pem = _self_signed(tmp_path, "other")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    target = await HttpTarget().start(ssl=server_ctx)
    try:
        reg = registration(target.port, protocol=pb.PROTOCOL_HTTPS)
        assert (await HttpProber().probe(instance_of(reg), 2.0)).ok  # no CA: nothing verified
        reg.endpoint.tls.cert_authority = pem
        assert (await HttpProber().probe(instance_of(reg), 2.0)).ok  # the right CA
        reg.endpoint.tls.cert_authority = other_pem
        result = await HttpProber().probe(instance_of(reg), 2.0)
        assert not result.ok and result.error.startswith("tls: ")
    finally:
        await target.stop()


async def test_grpc_probe_follows_the_serving_status(grpc_target: GrpcTarget) -> None:
    prober = GrpcHealthProber()
    reg = registration(
        grpc_target.port, protocol=pb.PROTOCOL_GRPC, grpc_check=pb.GrpcCheck(service="svc")
    )
    instance = instance_of(reg)
    try:
        result = await prober.probe(instance, TIMEOUT)
        assert not result.ok and result.detail == {"grpcCode": "NOT_FOUND"}
        await grpc_target.set("svc", serving=True)
        result = await prober.probe(instance, TIMEOUT)
        assert result.ok and result.detail == {"grpcStatus": "SERVING"}
        await grpc_target.set("svc", serving=False)
        result = await prober.probe(instance, TIMEOUT)
        assert not result.ok and result.error == "service 'svc' reports NOT_SERVING"
    finally:
        await prober.close()


async def test_grpc_probe_recovers_at_once_when_a_dead_server_returns(
    grpc_target: GrpcTarget,
) -> None:
    prober = GrpcHealthProber()
    instance = instance_of(registration(grpc_target.port, protocol=pb.PROTOCOL_GRPC))
    try:
        assert (await prober.probe(instance, TIMEOUT)).ok
        await grpc_target.stop()
        result = await prober.probe(instance, TIMEOUT)
        assert not result.ok and result.detail["grpcCode"] == "UNAVAILABLE"
        await grpc_target.start()  # same port
        assert (await prober.probe(instance, TIMEOUT)).ok  # a fresh channel, no backoff wait
        await prober.release(instance.service_id)
        assert prober._channels == {}
    finally:
        await prober.close()


async def test_round_retries_within_the_round_and_passes_on_a_later_attempt(
    http_target: HttpTarget,
) -> None:
    http_target.behave("/health", fail_next=2)
    plan = CheckPlan.of(instance_of(registration(http_target.port, retries=3)))
    clock = ScaledClock(SPEED)
    result = await run_round(
        HttpProber(clock=clock),
        instance_of(registration(http_target.port)),
        plan,
        asyncio.Semaphore(1),
        clock,
    )
    assert result.ok and result.attempts == 3 and len(http_target.requests) == 3


async def test_round_fails_after_all_attempts_and_never_outlasts_the_interval(
    http_target: HttpTarget,
) -> None:
    http_target.behave("/health", hang=True)
    reg = registration(http_target.port, retries=10, timeout=4)
    plan = CheckPlan.of(instance_of(reg))  # 5 s interval, 4 s per attempt (200 ms, 160 ms real)
    clock = ScaledClock(SPEED)
    started = clock.monotonic()
    result = await run_round(
        HttpProber(clock=clock), instance_of(reg), plan, asyncio.Semaphore(1), clock
    )
    assert not result.ok and result.last.error.startswith("timed out after")
    assert 1 <= result.attempts < 10
    # Unbounded, 10 hanging attempts would take 1.6 s; the slack only absorbs a loaded machine.
    assert clock.monotonic() - started <= plan.interval * 1.5


async def test_probe_exceptions_fail_the_attempt_and_nothing_else() -> None:
    class Broken:
        async def probe(self, instance: pb.ServiceInstance, timeout: float) -> object:
            raise RuntimeError("boom")

    reg = registration(1)
    plan = CheckPlan.of(instance_of(reg))
    clock = ScaledClock(SPEED)
    result = await run_round(Broken(), instance_of(reg), plan, asyncio.Semaphore(1), clock)  # type: ignore[arg-type]
    assert not result.ok and result.last.error == "boom"
