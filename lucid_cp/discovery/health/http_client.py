"""A minimal asyncio HTTP/1.1 client for health checks: one request per connection, status only.

Like Consul's HTTP checks it never keeps connections alive. It reads the status line and the
headers, never the body, and closes with a TCP reset (SO_LINGER 0, as HAProxy does for its
checks) so thousands of checks per second leave no TIME_WAIT sockets behind. The caller bounds
the whole exchange with a timeout.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct

MAX_HEADER_BYTES = 16 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)


class HttpProtocolError(Exception):
    """The peer did not answer with a well-formed HTTP/1.x response head."""


def _has_control(text: str) -> bool:
    return any(c in text for c in "\r\n\0")


def build_request(
    method: str, host: str, port: int, path: str, headers: dict[str, str], body: bytes
) -> bytes:
    """The request bytes. Header names/values with CR, LF or NUL are refused (no injection)."""
    for name, value in headers.items():
        if _has_control(name) or _has_control(value) or ":" in name or not name.strip():
            raise ValueError(f"invalid health-check header {name!r}")
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"{method} {path} HTTP/1.1"]
    given = {name.lower() for name in headers}
    if "host" not in given:
        lines.append(f"Host: {authority}")
    if "user-agent" not in given:
        lines.append("User-Agent: lucid-health-check")
    lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "connection"]
    lines.append("Connection: close")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_status_line(line: bytes) -> int:
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpProtocolError(f"malformed status line {line[:80]!r}")
    status = int(parts[1])
    if not 100 <= status <= 599:
        raise HttpProtocolError(f"status code {status} out of range")
    return status


async def request_status(
    host: str,
    port: int,
    request: bytes,
    *,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> int:
    """Sends ``request`` and returns the final status code (1xx interim responses skipped)."""
    reader, writer = await asyncio.open_connection(
        host,
        port,
        ssl=tls,
        server_hostname=server_hostname if tls is not None else None,
        limit=MAX_HEADER_BYTES,
    )
    try:
        writer.write(request)
        while True:
            status = parse_status_line(await reader.readuntil(b"\r\n"))
            await _skip_headers(reader)
            if status >= 200 or status == 101:
                return status
    except asyncio.IncompleteReadError:
        raise HttpProtocolError("connection closed before a response") from None
    except asyncio.LimitOverrunError:
        raise HttpProtocolError("response head too large") from None
    finally:
        abort_with_reset(writer)


async def _skip_headers(reader: asyncio.StreamReader) -> None:
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        total += len(line)
        if total > MAX_HEADER_BYTES:
            raise HttpProtocolError("response head too large")
        if line == b"\r\n":
            return


def abort_with_reset(writer: asyncio.StreamWriter) -> None:
    """Closes the connection at once with a TCP reset (no TIME_WAIT on this side)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
    writer.transport.abort()
