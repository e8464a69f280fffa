"""The one error type for a start-up the user can fix: a port in use, a data dir held by another
process, a store that does not answer, a missing secret file, a bad setting. Its message is one
line saying what is wrong and, where it helps, what to do; ``lucid-cp`` prints it without a
traceback. Anything else that escapes start-up is a bug and keeps its traceback."""

from __future__ import annotations

import socket


class StartupError(Exception):
    """Start-up failed for a reason the user can fix; ``str(e)`` is one line."""


def ensure_bindable(addr: str, what: str, flag: str) -> None:
    """Raises StartupError if ``addr`` ("host:port") cannot be listened on now: in use, or not
    an address of this machine. Checked with a throwaway socket just before the real listener
    binds, so the common mistake gets one line instead of a library's own error output; port 0
    is always free."""
    host, _, port_text = addr.rpartition(":")
    host = host.strip("[]")
    problem = f"cannot listen for {what} on {addr}"
    try:
        port = int(port_text)
    except ValueError:
        raise StartupError(f"{problem}: expected HOST:PORT (set {flag})") from None
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise StartupError(f"{problem}: {e.strerror} (set {flag})") from e
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners do
            try:
                probe.bind(sockaddr)
            except OSError as e:
                raise StartupError(
                    f"{problem}: {e.strerror or e} (choose another with {flag})"
                ) from e
