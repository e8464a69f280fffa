"""POSTing a JSON body to a registered instance (message and event pushes), on the health checks'
HTTP client: one request per connection, status only, the same TLS contexts and error texts.
Never raises for what the network or the peer does: the answer is the HTTP status or a short,
stable description of what went wrong."""

from __future__ import annotations

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.clock import Clock
from lucid_cp.discovery.health import http_client
from lucid_cp.discovery.health.probes import TlsContexts, describe, unresolvable


class JsonPoster:
    def __init__(self, clock: Clock, user_agent: str) -> None:
        self._clock = clock
        self._user_agent = user_agent
        self._tls = TlsContexts()

    async def post(
        self,
        endpoint: pb.ServiceEndpoint,
        path: str,
        body: bytes,
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> int | str:
        """The status the instance answered, or what went wrong (a reserved host name, a refused
        or reset connection, TLS, no answer within ``timeout`` seconds, a malformed answer)."""
        failed = unresolvable(endpoint.host)
        if failed is not None:
            return failed.error
        sent = {"Content-Type": "application/json", "User-Agent": self._user_agent}
        sent.update(headers or {})
        started = self._clock.monotonic()
        try:
            request = http_client.build_request(
                "POST", endpoint.host, endpoint.port, path, sent, body
            )
            https = endpoint.protocol == pb.PROTOCOL_HTTPS
            tls = self._tls.for_endpoint(endpoint.tls) if https else None
            async with self._clock.timeout(timeout):
                return await http_client.request_status(
                    endpoint.host, endpoint.port, request, tls=tls, server_hostname=endpoint.host
                )
        except TimeoutError:
            return f"timed out after {timeout:.3g}s (no answer)"
        except Exception as exc:  # connection, TLS, a malformed answer: said, never raised
            waited = self._clock.monotonic() - started
            return f"{describe(exc, endpoint.host)} ({waited:.3g}s)"
