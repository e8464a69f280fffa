"""The module contract: what one of Lucid's systems (discovery, mesh, sidecar, messaging,
events) declares and does, so that adding a system touches its own package and one list in
``lucid_cp.app`` and nothing else.

A system declares, as class attributes:

* ``name`` and ``files``: the proto files whose services it serves (policies, reflection,
  health status and the REST gateway's routes all derive from them);
* ``rate_limits``: its default per-principal buckets (every bucket its methods' policies name);
* ``status_rows``: ``{error subclass: ErrorReason}`` for its own errors, added to the one status
  table (the gRPC code comes from the generic base class);
* ``invalid_request``: the InvalidArgument subclass raised when a request breaks its field rules;
  optionally ``invalid_requests``, ``{method full name: subclass or (message, violations) ->
  error}`` for methods whose invalid requests take another error (mesh: a reason per resource;
  sidecar: a reason chosen from the violation paths); the others use ``invalid_request``;
* ``settings_type``: its settings section (a default-constructible frozen dataclass), plus
  ``add_arguments``/``settings_from`` for its command-line flags.

and, as an instance built from an :class:`Environment`: ``start`` (build its core, index and
background tasks), ``register`` (add its servicers to the gRPC server) and ``stop`` (release
everything, also after a partial start). Optionally ``end_streams()`` (synchronous): called at
shutdown before the server drains, to end the long-lived streams the system holds so their
clients reconnect elsewhere rather than wait out the grace period (sidecar: Connect). The
composition root starts systems in list order, stops them in reverse, and unwinds what already
started when a later step fails.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import grpc
from google.protobuf.descriptor import FileDescriptor
from prometheus_client import CollectorRegistry

from lucid_cp.clock import Clock
from lucid_cp.config import RateLimit, Settings
from lucid_cp.errors import InvalidArgument
from lucid_cp.replica_lease import ReplicaLease
from lucid_cp.store.base import Store

S = TypeVar("S", bound="System")


@dataclass
class Environment:
    """What the composition root hands each system: shared, already built dependencies."""

    settings: Settings
    store: Store
    clock: Clock
    metrics: CollectorRegistry
    # This process's store lease, started before the systems and revoked after they stopped:
    # what a system holds only while the replica lives goes under it.
    lease: ReplicaLease
    # The systems started before this one, by name (a system may build on an earlier one).
    systems: dict[str, System] = field(default_factory=dict)

    def system(self, kind: type[S]) -> S:
        found = self.systems.get(kind.name)
        if not isinstance(found, kind):
            raise LookupError(f"system {kind.name!r} must be started before the one needing it")
        return found


class System(Protocol):
    name: ClassVar[str]
    files: ClassVar[tuple[FileDescriptor, ...]]
    rate_limits: ClassVar[Mapping[str, RateLimit]]
    status_rows: ClassVar[Mapping[type[Exception], int]]
    invalid_request: ClassVar[type[InvalidArgument]]
    settings_type: ClassVar[type[Any]]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Adds this system's flags to ``lucid-cp serve``."""
        ...

    @classmethod
    def settings_from(cls, args: argparse.Namespace) -> object:
        """This system's settings section from the parsed flags."""
        ...

    def __init__(self, env: Environment) -> None: ...

    async def start(self) -> None: ...

    def register(self, server: grpc.aio.Server) -> None: ...

    async def stop(self) -> None: ...
