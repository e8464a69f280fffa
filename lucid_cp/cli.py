"""lucid-cp command line: serve | gateway | token. The only module that reads the environment."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lucid_cp import logs
from lucid_cp.app import SYSTEMS
from lucid_cp.auth.tokens import MIN_SECRET_BYTES, Role, mint_token
from lucid_cp.clock import SystemClock
from lucid_cp.config import RateLimit, Settings

if TYPE_CHECKING:
    from gateway.limits import HttpLimits

DEV_SECRET_FILE = "dev-jwt-secret"
ENV_SECRET = "LUCID_JWT_SECRET"


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("LUCID_DATA_DIR") or ".lucid").resolve()


def _load_secret(
    args: argparse.Namespace, data_dir: Path, *, create_dev: bool
) -> tuple[bytes, bool]:
    """The JWT secret and whether it is the generated dev secret.

    Order: LUCID_JWT_SECRET, --jwt-secret-file, the dev secret in the data dir (created by
    `serve` when nothing else is configured)."""
    if os.environ.get(ENV_SECRET):
        secret = os.environ[ENV_SECRET].encode()
        dev = False
    elif getattr(args, "jwt_secret_file", None):
        secret = Path(args.jwt_secret_file).read_bytes().strip()
        dev = False
    else:
        path = data_dir / DEV_SECRET_FILE
        if not path.exists():
            if not create_dev:
                raise SystemExit(
                    f"no JWT secret: set {ENV_SECRET}, pass --jwt-secret-file, or run "
                    f"`lucid-cp serve --data-dir {data_dir}` once to create a dev secret"
                )
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
        secret = path.read_bytes().strip()
        dev = True
    if len(secret) < MIN_SECRET_BYTES:
        raise SystemExit(f"JWT secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret, dev


def _rate_limits(specs: list[str]) -> dict[str, RateLimit]:
    """``bucket=CAPACITY/PERIOD_SECONDS`` overrides, e.g. ``discovery=5000/60`` (a bucket no
    system declares is refused at start-up)."""
    limits: dict[str, RateLimit] = {}
    for spec in specs:
        bucket, _, rate = spec.partition("=")
        capacity, _, period = rate.partition("/")
        try:
            limit: RateLimit | None = RateLimit(int(capacity), float(period or 60))
        except ValueError:
            limit = None
        if not bucket.strip() or limit is None or limit.capacity < 1 or limit.period <= 0:
            raise SystemExit(
                f"--rate-limit {spec!r}: expected BUCKET=CAPACITY/SECONDS, both positive"
            )
        limits[bucket.strip()] = limit
    return limits


def _settings(args: argparse.Namespace) -> tuple[Settings, bool]:
    data_dir = _data_dir(args)
    data_dir.mkdir(parents=True, exist_ok=True)
    secret, dev = _load_secret(args, data_dir, create_dev=True)
    store_url = args.store or os.environ.get("LUCID_STORE") or f"sqlite:///{data_dir / 'state.db'}"
    settings = Settings(
        store_url=store_url,
        grpc_addr=args.grpc_addr,
        http_addr=args.http_addr,
        metrics_addr=args.metrics_addr,
        data_dir=data_dir,
        jwt_secret=secret,
        rate_limits=_rate_limits(args.rate_limit),
        rate_limits_enabled=not args.no_rate_limits,
        log_level=args.log_level,
        sections=tuple(kind.settings_from(args) for kind in SYSTEMS),
    )
    return settings, dev


def _add_http_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The REST gateway's slow-client and concurrency limits (gateway.limits.HttpLimits)."""
    parser.add_argument(
        "--http-header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close a connection whose request headers take longer (default 10)",
    )
    parser.add_argument(
        "--http-body-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="answer 408 to a request whose body takes longer (default 30)",
    )
    parser.add_argument(
        "--http-max-connections",
        type=int,
        default=1000,
        metavar="N",
        help="connections served at once; above it requests get 503 (default 1000)",
    )


def _http_limits(args: argparse.Namespace) -> HttpLimits:
    from gateway.limits import HttpLimits

    try:
        return HttpLimits(
            header_timeout=args.http_header_timeout,
            body_timeout=args.http_body_timeout,
            max_connections=args.http_max_connections,
        )
    except ValueError as exc:
        raise SystemExit(f"lucid-cp: {exc}") from None


async def _serve(
    settings: Settings, dev_secret: bool, with_gateway: bool, limits: HttpLimits | None = None
) -> None:
    from lucid_cp.app import start_control_plane
    from lucid_cp.rpc.runtime import tune_gc

    plane = await start_control_plane(settings)
    tune_gc()
    gateway = None
    if with_gateway:
        from gateway.server import start_gateway

        gateway = await start_gateway(plane.grpc_target, settings.http_addr, limits=limits)
    print(f"lucid-cp: gRPC on {plane.grpc_target}, store {settings.store_url}", file=sys.stderr)
    if gateway is not None:
        print(
            f"lucid-cp: REST gateway on http://{settings.http_addr.rsplit(':', 1)[0]}:{gateway.port}/api/v1",
            file=sys.stderr,
        )
    if dev_secret:
        token = mint_token(settings.jwt_secret, "admin", Role.ADMIN, SystemClock(), ttl=24 * 3600)
        print(
            "lucid-cp: DEV ONLY - no JWT secret configured, using the generated one in "
            f"{settings.data_dir / DEV_SECRET_FILE}.\nlucid-cp: DEV ONLY admin token (24 h):\n{token}",
            file=sys.stderr,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("lucid-cp: shutting down", file=sys.stderr)
    if gateway is not None:
        await gateway.stop()
    await plane.stop()


def _cmd_serve(args: argparse.Namespace) -> int:
    settings, dev = _settings(args)
    logs.configure(settings.log_level)
    limits = None if args.no_gateway else _http_limits(args)
    asyncio.run(_serve(settings, dev, with_gateway=not args.no_gateway, limits=limits))
    return 0


def _cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.server import run_gateway

    logs.configure(args.log_level)
    run_gateway(args.grpc_target, args.http_addr, _http_limits(args))
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    secret, _ = _load_secret(args, _data_dir(args), create_dev=False)
    print(mint_token(secret, args.subject, Role(args.role), SystemClock(), ttl=args.ttl))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lucid-cp", description="Lucid service-mesh control plane"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the control plane (gRPC) and the REST gateway")
    serve.add_argument(
        "--store",
        help="sqlite:///PATH | memory:// | etcd://HOST:PORT[,HOST:PORT] "
        "(default: sqlite under --data-dir)",
    )
    serve.add_argument("--grpc-addr", default="127.0.0.1:50051")
    serve.add_argument("--http-addr", default="127.0.0.1:8080")
    serve.add_argument(
        "--metrics-addr", default="", help="Prometheus listener, e.g. 127.0.0.1:9464"
    )
    serve.add_argument(
        "--data-dir", help="state and dev secret (default: ./.lucid or $LUCID_DATA_DIR)"
    )
    serve.add_argument(
        "--jwt-secret-file", help="file holding the HS256 secret (or $LUCID_JWT_SECRET)"
    )
    serve.add_argument("--no-gateway", action="store_true", help="gRPC only")
    _add_http_limit_arguments(serve)
    serve.add_argument(
        "--no-rate-limits", action="store_true", help="disable per-principal rate limits"
    )
    serve.add_argument(
        "--rate-limit",
        action="append",
        default=[],
        metavar="BUCKET=N/SECONDS",
        help="override a rate-limit bucket, e.g. discovery=5000/60 (buckets: "
        + ", ".join(sorted(b for kind in SYSTEMS for b in kind.rate_limits))
        + ")",
    )
    for kind in SYSTEMS:
        kind.add_arguments(serve)
    serve.add_argument("--log-level", default="INFO")
    serve.set_defaults(func=_cmd_serve)

    gw = sub.add_parser("gateway", help="run only the REST gateway in front of a control plane")
    gw.add_argument("--grpc-target", default="127.0.0.1:50051")
    gw.add_argument("--http-addr", default="127.0.0.1:8080")
    _add_http_limit_arguments(gw)
    gw.add_argument("--log-level", default="INFO")
    gw.set_defaults(func=_cmd_gateway)

    token = sub.add_parser("token", help="print a JWT signed with the configured secret")
    token.add_argument("--subject", required=True, help="service name (service role) or admin name")
    token.add_argument("--role", choices=[r.value for r in Role], default=Role.SERVICE.value)
    token.add_argument("--ttl", type=int, default=3600, help="seconds")
    token.add_argument("--data-dir")
    token.add_argument("--jwt-secret-file")
    token.set_defaults(func=_cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
