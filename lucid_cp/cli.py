"""lucid-cp command line: serve | gateway | token. The only module that reads the environment.

A start-up the user can fix (:class:`~lucid_cp.startup.StartupError`, a
:class:`~lucid_cp.rpc.policy.PolicyError` from the start-up checks) ends with one line on
stderr and exit status 1; anything else is a bug and keeps its traceback (exit status 70).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import secrets
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from lucid_cp import logs
from lucid_cp.app import SYSTEMS
from lucid_cp.auth.tokens import MIN_SECRET_BYTES, Role, mint_token
from lucid_cp.clock import SystemClock
from lucid_cp.config import RateLimit, Settings, positive_int
from lucid_cp.rpc.policy import PolicyError
from lucid_cp.startup import StartupError

if TYPE_CHECKING:
    from gateway.limits import HttpLimits

DEV_SECRET_FILE = "dev-jwt-secret"
ENV_SECRET = "LUCID_JWT_SECRET"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EXIT_STARTUP = 1  # a start-up failure the user can fix (one line on stderr)
EXIT_BUG = 70  # EX_SOFTWARE: an unexpected exception (traceback on stderr)


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("LUCID_DATA_DIR") or ".lucid").resolve()


def _load_secret(
    args: argparse.Namespace, data_dir: Path, *, create_dev: bool
) -> tuple[bytes, bool]:
    """The JWT secret and whether it is the generated dev secret.

    Order: --jwt-secret-file (the command line wins), LUCID_JWT_SECRET, the dev secret in the
    data dir (created by `serve` when nothing else is configured)."""
    if args.jwt_secret_file:
        secret = _read_file(Path(args.jwt_secret_file), "--jwt-secret-file")
        dev = False
    elif os.environ.get(ENV_SECRET):
        secret = os.environ[ENV_SECRET].encode()
        dev = False
    else:
        path = data_dir / DEV_SECRET_FILE
        if not path.exists():
            if not create_dev:
                raise StartupError(
                    f"no JWT secret: pass --jwt-secret-file, set {ENV_SECRET}, or run "
                    f"`lucid-cp serve --data-dir {data_dir}` once to create a dev secret"
                )
            _make_dir(data_dir)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
        secret = _read_file(path, "the dev JWT secret")
        dev = True
    if len(secret) < MIN_SECRET_BYTES:
        raise StartupError(f"JWT secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret, dev


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes().strip()
    except OSError as e:
        raise StartupError(f"{what} {path}: {e.strerror or e}") from e


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"data dir {path}: {e.strerror or e}") from e


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
            raise StartupError(
                f"--rate-limit {spec!r}: expected BUCKET=CAPACITY/SECONDS, both positive"
            )
        limits[bucket.strip()] = limit
    return limits


def _settings(args: argparse.Namespace) -> tuple[Settings, bool]:
    data_dir = _data_dir(args)
    _make_dir(data_dir)
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


def _bind_http(addr: str) -> socket.socket:
    """The gateway's listening socket, bound before anything starts so a busy port fails first."""
    from gateway.server import bind_socket

    try:
        return bind_socket(addr)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise StartupError(
            f"cannot listen for HTTP on {addr}: {reason} (choose another with --http-addr)"
        ) from e


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _add_http_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The REST gateway's slow-client and concurrency limits (gateway.limits.HttpLimits)."""
    parser.add_argument(
        "--http-header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close a connection whose request headers take longer",
    )
    parser.add_argument(
        "--http-body-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="answer 408 to a request whose body takes longer",
    )
    parser.add_argument(
        "--http-write-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="close a connection whose client stops reading a response (or Watch stream) longer",
    )
    parser.add_argument(
        "--http-max-connections",
        type=int,
        default=1000,
        metavar="N",
        help="connections open at once; one more is answered 503 and closed at once",
    )


def _http_limits(args: argparse.Namespace) -> HttpLimits:
    from gateway.limits import HttpLimits

    try:
        return HttpLimits(
            header_timeout=args.http_header_timeout,
            body_timeout=args.http_body_timeout,
            write_timeout=args.http_write_timeout,
            max_connections=args.http_max_connections,
        )
    except ValueError as exc:
        raise StartupError(str(exc)) from None


async def _serve(
    settings: Settings, dev_secret: bool, with_gateway: bool, limits: HttpLimits | None = None
) -> None:
    from lucid_cp.app import start_control_plane
    from lucid_cp.rpc.runtime import tune_gc

    sock = _bind_http(settings.http_addr) if with_gateway else None
    try:
        plane = await start_control_plane(settings)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    tune_gc()
    gateway = None
    if sock is not None:
        from gateway.server import start_gateway

        http_url = _url(sock)
        try:
            gateway = await start_gateway(plane.grpc_target, sock, limits=limits)
        except BaseException:
            await plane.stop(0)
            raise
    # Handlers before the banner: whoever reads "gRPC on" may signal at once.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"lucid-cp: gRPC on {plane.grpc_target}, store {settings.store_url}", file=sys.stderr)
    if gateway is not None:
        print(f"lucid-cp: REST gateway on {http_url}/api/v1", file=sys.stderr)
    if dev_secret:
        token = mint_token(settings.jwt_secret, "admin", Role.ADMIN, SystemClock(), ttl=24 * 3600)
        print(
            "lucid-cp: DEV ONLY - no JWT secret configured, using the generated one in "
            f"{settings.data_dir / DEV_SECRET_FILE}.\nlucid-cp: DEV ONLY admin token (24 h):\n{token}",
            file=sys.stderr,
        )
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
    limits = _http_limits(args)
    sock = _bind_http(args.http_addr)
    banner = f"lucid-cp: REST gateway on {_url(sock)}/api/v1, for the control plane at {args.grpc_target}"
    run_gateway(
        args.grpc_target,
        sock,
        limits=limits,
        on_signals_handled=lambda: print(banner, file=sys.stderr, flush=True),
    )
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    secret, _ = _load_secret(args, _data_dir(args), create_dev=False)
    print(mint_token(secret, args.subject, Role(args.role), SystemClock(), ttl=args.ttl))
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to every flag's help, except where the help already says its
    default or there is nothing to say (no value, or an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _version() -> str:
    return f"lucid-cp {importlib.metadata.version('lucid-cp')}"


def _add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="log threshold for the JSON log lines on stderr",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lucid-cp",
        description="Lucid service-mesh control plane",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the control plane (gRPC) and the REST gateway",
        description="Run the control plane (gRPC) and, unless --no-gateway, the REST gateway.",
        formatter_class=_HelpFormatter,
    )
    serve.add_argument(
        "--store",
        metavar="URL",
        help="state store: sqlite:///REL/PATH (relative to the working directory), "
        "sqlite:////ABS/PATH (four slashes: an absolute path, as in SQLAlchemy), memory:// or "
        "etcd://HOST:PORT[,HOST:PORT] (default: $LUCID_STORE, else sqlite:////<data-dir>/state.db)",
    )
    serve.add_argument(
        "--grpc-addr",
        default="127.0.0.1:50051",
        metavar="HOST:PORT",
        help="gRPC listen address (port 0: any free port)",
    )
    serve.add_argument(
        "--http-addr",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="REST gateway listen address (port 0: any free port)",
    )
    serve.add_argument(
        "--metrics-addr",
        default="",
        metavar="HOST:PORT",
        help="Prometheus /metrics listener, e.g. 127.0.0.1:9464 (default: off)",
    )
    serve.add_argument(
        "--data-dir",
        metavar="DIR",
        help="holds the sqlite state and the dev secret (default: $LUCID_DATA_DIR, else ./.lucid)",
    )
    serve.add_argument(
        "--jwt-secret-file",
        metavar="FILE",
        help="file holding the HS256 secret, at least 32 bytes; wins over $LUCID_JWT_SECRET "
        "(default: $LUCID_JWT_SECRET, else a generated dev secret in the data dir)",
    )
    serve.add_argument("--no-gateway", action="store_true", help="serve gRPC only, no REST gateway")
    serve.add_argument(
        "--no-rate-limits", action="store_true", help="disable per-principal rate limits"
    )
    serve.add_argument(
        "--rate-limit",
        action="append",
        default=[],
        metavar="BUCKET=N/SECONDS",
        help="override a rate-limit bucket, repeatable, e.g. discovery=5000/60 (buckets and "
        "defaults: "
        + ", ".join(
            f"{bucket}={limit.capacity}/{limit.period:g}"
            for kind in SYSTEMS
            for bucket, limit in sorted(kind.rate_limits.items())
        )
        + ")",
    )
    for kind in SYSTEMS:
        kind.add_arguments(serve)
    _add_http_limit_arguments(serve)
    _add_log_level(serve)
    serve.set_defaults(func=_cmd_serve)

    gw = sub.add_parser(
        "gateway",
        help="run only the REST gateway in front of a control plane",
        description="Run only the REST gateway, as its own process, in front of a control plane.",
        formatter_class=_HelpFormatter,
    )
    gw.add_argument(
        "--grpc-target",
        default="127.0.0.1:50051",
        metavar="HOST:PORT",
        help="the control plane's gRPC address",
    )
    gw.add_argument(
        "--http-addr",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="listen address (port 0: any free port; the bound one is printed)",
    )
    _add_http_limit_arguments(gw)
    _add_log_level(gw)
    gw.set_defaults(func=_cmd_gateway)

    token = sub.add_parser(
        "token",
        help="print a JWT signed with the configured secret",
        description="Print a JWT signed with the configured secret.",
        formatter_class=_HelpFormatter,
    )
    token.add_argument("--subject", required=True, help="service name (service role) or admin name")
    token.add_argument(
        "--role",
        choices=[r.value for r in Role],
        default=Role.SERVICE.value,
        help="service: may act only for the service named --subject; admin: anything",
    )
    token.add_argument(
        "--ttl",
        type=positive_int,
        default=3600,
        metavar="SECONDS",
        help="lifetime in seconds, at least 1",
    )
    token.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where `serve` keeps the dev secret (default: $LUCID_DATA_DIR, else ./.lucid)",
    )
    token.add_argument(
        "--jwt-secret-file",
        metavar="FILE",
        help="file holding the HS256 secret; wins over $LUCID_JWT_SECRET "
        "(default: $LUCID_JWT_SECRET, else the dev secret in the data dir)",
    )
    token.set_defaults(func=_cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (StartupError, PolicyError) as e:
        print(f"lucid-cp: error: {e}", file=sys.stderr)
        return EXIT_STARTUP
    except Exception:
        traceback.print_exc()
        print(
            f"lucid-cp: unexpected error (a bug in {_version()}); please report it to the Lucid "
            "issue tracker with the traceback above and the command you ran",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":
    raise SystemExit(main())
