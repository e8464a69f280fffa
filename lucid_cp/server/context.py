"""Per-call context (principal, request id) set by the interceptor, read by servicers."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from lucid_cp.auth.tokens import Principal


@dataclass(frozen=True, slots=True)
class CallContext:
    principal: Principal
    request_id: str


_current: ContextVar[CallContext] = ContextVar("lucid_call_context")


def set_call(ctx: CallContext) -> None:
    _current.set(ctx)


def current_principal() -> Principal:
    return _current.get().principal
