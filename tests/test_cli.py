"""The README's commands, as a user runs them: `lucid-cp serve` and `lucid-cp token`, as real
processes on loopback."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from cli_proc import ROOT, cli, cli_env, wait_for

from lucid_cp import cli as cli_module
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.auth.tokens import TokenVerifier
from lucid_cp.cli import build_parser
from lucid_cp.clock import SystemClock
from lucid_cp.errors import Unauthenticated


@pytest.fixture
def served(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "LUCID_JWT_SECRET"}
    proc = subprocess.Popen(
        cli(
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path),
        ),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        grpc_match, _ = wait_for(proc, r"gRPC on (127\.0\.0\.1:\d+)")
        http_match, _ = wait_for(proc, r"REST gateway on (http://127\.0\.0\.1:\d+)")
        _, text = wait_for(proc, r"^eyJ[\w-]+\.[\w-]+\.[\w-]+$")
        token = text.strip().splitlines()[-1]
        assert "DEV ONLY" in text
        yield proc, grpc_match.group(1), http_match.group(1), token
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_prints_a_working_dev_token_and_shuts_down_cleanly(served, tmp_path: Path) -> None:
    proc, target, http_base, admin_token = served
    assert (tmp_path / "dev-jwt-secret").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state.db").exists()  # the embedded sqlite store is the default

    service_token = subprocess.run(
        cli("token", "--subject", "api-gateway", "--role", "service", "--data-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.strip()

    with grpc.insecure_channel(target) as channel:
        stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
        found = stub.Discover(
            pb.DiscoverRequest(), metadata=(("authorization", f"Bearer {admin_token}"),)
        )
        assert found.total == 0

    body = {
        "serviceId": str(uuid.uuid4()),
        "serviceName": "api-gateway",
        "cluster": "api-gateway",
        "plane": "ops",
        "version": "1.0.0",
        "endpoint": {
            "host": "api-gateway.lucid.onion",
            "port": 8080,
            "protocol": "https",
            "path": "/api/v1",
        },
        "healthCheck": {"endpoint": "/health", "interval": 30, "timeout": 10},
    }
    response = httpx.post(
        f"{http_base}/api/v1/service-discovery/services",
        json=body,
        headers={"authorization": f"Bearer {service_token}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "registered"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_token_without_any_secret_explains_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LUCID_JWT_SECRET"}
    result = subprocess.run(
        cli("token", "--subject", "x", "--data-dir", str(tmp_path / "empty")),
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode != 0
    assert "LUCID_JWT_SECRET" in result.stderr and "Traceback" not in result.stderr


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- a first-time user gets clear answers (issue 8) -----------------------------------------------

SECRET = "cli-tests-secret-0123456789abcdef0123"


def run_cli(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(*args),
        capture_output=True,
        text=True,
        env=cli_env(**env),
        cwd=cwd,
        timeout=60,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 1, and the last stderr line is the error; no traceback anywhere."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lucid-cp: error: "), result.stderr
    for needle in needles:
        assert needle in last, result.stderr
    # Every other line is a JSON log line (no library's own error output), and nothing claims
    # the server is up.
    others = result.stderr.strip().splitlines()[:-1]
    assert all(line.startswith("{") for line in others), result.stderr
    assert "lucid-cp: gRPC on" not in result.stderr and "REST gateway on" not in result.stderr
    return last


def serve_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path),
        "--no-health-checks",
        *extra,
    ]


@pytest.fixture
def busy_port():
    """A port on 127.0.0.1 with a socket listening on it for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_data_dir_in_use_by_another_lucid_cp_is_one_line(served, tmp_path: Path) -> None:
    result = run_cli(*serve_args(tmp_path), LUCID_JWT_SECRET=SECRET)
    assert_one_line_error(result, "in use by another process", str(tmp_path / "state.db"))


@pytest.mark.parametrize("flag", ["--grpc-addr", "--http-addr", "--metrics-addr"])
def test_a_port_in_use_is_one_line(flag: str, busy_port: int, tmp_path: Path) -> None:
    addr = f"127.0.0.1:{busy_port}"
    result = run_cli(*serve_args(tmp_path, flag, addr), LUCID_JWT_SECRET=SECRET)
    assert_one_line_error(result, "cannot listen for", addr, flag)
    assert "control plane serving" not in result.stderr


def test_gateway_with_its_port_in_use_is_one_line(busy_port: int) -> None:
    result = run_cli("gateway", "--http-addr", f"127.0.0.1:{busy_port}")
    assert_one_line_error(result, f"127.0.0.1:{busy_port}", "--http-addr")


def test_an_unreachable_etcd_says_which_endpoints_and_how_long(fresh_etcd, tmp_path: Path) -> None:
    from etcd_server import free_port

    fresh_etcd.stop()
    endpoints = f"{fresh_etcd.endpoint},127.0.0.1:{free_port()}"
    result = run_cli(
        *serve_args(tmp_path, "--store", f"etcd://{endpoints}", "--no-gateway"),
        LUCID_JWT_SECRET=SECRET,
    )
    last = assert_one_line_error(result, fresh_etcd.endpoint, endpoints.split(",")[1])
    assert re.search(r"tried for \d+\.\ds", last), last

    # Control: with etcd back, the same command serves.
    fresh_etcd.start()
    proc = subprocess.Popen(
        cli(*serve_args(tmp_path, "--store", f"etcd://{endpoints}", "--no-gateway")),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=cli_env(LUCID_JWT_SECRET=SECRET),
    )
    try:
        wait_for(proc, r"gRPC on 127\.0\.0\.1:\d+")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--jwt-secret-file", "/nope"], ["--jwt-secret-file /nope", "No such file"]),
        (["--rate-limit", "nosuch=5/60"], ["unknown bucket", "nosuch"]),
        (["--rate-limit", "discovery=lots"], ["--rate-limit 'discovery=lots'"]),
        (["--store", "redis://x"], ["unsupported store URL 'redis://x'"]),
        (["--http-write-timeout", "nan"], ["write_timeout must be a positive number"]),
    ],
    ids=["missing-secret-file", "unknown-bucket", "bad-rate", "bad-store-url", "nan-timeout"],
)
def test_configuration_errors_are_one_line(
    args: list[str], needles: list[str], tmp_path: Path
) -> None:
    env = {} if "--jwt-secret-file" in args else {"LUCID_JWT_SECRET": SECRET}
    assert_one_line_error(run_cli(*serve_args(tmp_path, *args), **env), *needles)


def test_sqlite_url_with_three_slashes_is_relative_and_the_error_says_so(tmp_path: Path) -> None:
    result = run_cli(
        *serve_args(tmp_path, "--store", "sqlite:///nodir/x.db"),
        cwd=tmp_path,
        LUCID_JWT_SECRET=SECRET,
    )
    assert_one_line_error(result, "relative path 'nodir/x.db'", "sqlite:////nodir/x.db")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["serve", "--log-level", "LOUD"], "invalid choice: 'LOUD'"),
        (["gateway", "--log-level", "LOUD"], "invalid choice: 'LOUD'"),
        (["token", "--subject", "x", "--ttl", "0"], "--ttl: must be at least 1, got 0"),
        (["token", "--subject", "x", "--ttl", "-60"], "--ttl: must be at least 1, got -60"),
    ],
)
def test_bad_flag_values_are_usage_errors(args: list[str], needle: str) -> None:
    result = run_cli(*args, LUCID_JWT_SECRET=SECRET)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--log-level", "debug"])
    assert args.log_level == "DEBUG"


def test_an_unexpected_error_keeps_its_traceback_and_says_how_to_report_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> str:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli_module, "mint_token", broken)
    monkeypatch.setenv("LUCID_JWT_SECRET", SECRET)
    assert cli_module.main(["token", "--subject", "x"]) == cli_module.EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert "unexpected error" in err.splitlines()[-1] and "report" in err.splitlines()[-1]


def test_jwt_secret_file_on_the_command_line_wins_over_the_environment(tmp_path: Path) -> None:
    file_secret = "from-the-file-0123456789abcdef0123456789"
    (tmp_path / "secret").write_text(file_secret + "\n")
    result = run_cli(
        "token",
        "--subject",
        "api-gateway",
        "--jwt-secret-file",
        str(tmp_path / "secret"),
        LUCID_JWT_SECRET=SECRET,
    )
    assert result.returncode == 0, result.stderr
    verifier = TokenVerifier(file_secret.encode(), SystemClock())
    bearer = f"Bearer {result.stdout.strip()}"
    assert verifier.verify(bearer).subject == "api-gateway"
    with pytest.raises(Unauthenticated):  # control: the environment's secret did not sign it
        TokenVerifier(SECRET.encode(), SystemClock()).verify(bearer)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"lucid-cp {importlib.metadata.version('lucid-cp')}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_flag_of_every_command_has_help_and_shows_its_default() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {"serve", "gateway", "token"}
    for name, sub in commands.items():
        text = " ".join(sub.format_help().split())  # unwrap
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[0]
            assert action.help, f"{name} {flag} has no help"
            if action.default not in (None, False, []):
                assert (
                    f"default: {action.default}" in text or f"default {action.default}" in text
                ), f"{name} {flag}: default {action.default!r} not shown"
            else:
                assert action.required or action.default is False or "default" in action.help, (
                    f"{name} {flag}: says nothing about its default"
                )


def test_help_names_the_sqlite_url_rule() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "sqlite:////ABS/PATH (four slashes: an absolute path" in text
    assert "(default: 127.0.0.1:50051)" in text


def test_gateway_prints_the_port_it_listens_on() -> None:
    proc = subprocess.Popen(
        cli("gateway", "--http-addr", "127.0.0.1:0", "--grpc-target", "127.0.0.1:1"),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=cli_env(),
    )
    try:
        match, _ = wait_for(proc, r"REST gateway on (http://127\.0\.0\.1:(\d+))/api/v1")
        assert int(match.group(2)) != 0
        assert httpx.get(f"{match.group(1)}/healthz", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
