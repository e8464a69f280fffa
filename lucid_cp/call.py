"""One RPC as a servicer sees it: who called (already authenticated), the request id, and a
way to release what the call holds when it ends. The interceptor builds it and passes it to
the servicer explicitly, in place of the raw transport context; servicers need nothing else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lucid_cp.auth.tokens import Principal


@dataclass(frozen=True, slots=True)
class Call:
    principal: Principal
    request_id: str
    _on_done: Callable[[Callable[[], None]], None]

    def on_done(self, callback: Callable[[], None]) -> None:
        """Runs ``callback`` once the call ends, however it ends (completed, failed, cancelled
        by the client). Streams use it to close the subscription they opened."""
        self._on_done(callback)
