"""The mesh's destination defaults (``lucid_cp.mesh.defaults.DestinationDefaults``) read from
the stored sidecar configurations, so that Explain decides as the sidecars will.

A service's defaults come from its most recently written configuration (the highest store
revision; configurations written in one transaction: the highest serviceId), whatever its
instances' other configurations say:

- deny-all: its ``security.authorization`` is enabled (absent ``enabled``: enabled) with policy
  deny-all;
- outbound (source -> destination): from the source's ``routing``, the first route whose
  destination is that service gives the retry (its own, else ``routing.retry``) and the timeout
  (``routing.timeout`` with ``request`` replaced by the route's ``timeout`` when it sets one); no
  such route: ``routing.retry`` and ``routing.timeout``. Each None when absent.

Reads only the in-memory index; the messages returned are the index's (shared: not changed).
"""

from __future__ import annotations

from collections.abc import Mapping

from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as mesh_pb
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.mesh.defaults import Outbound
from lucid_cp.sidecar.index import SidecarIndex


class SidecarDefaults:
    """``DestinationDefaults`` over a SidecarIndex, for MeshControl.use_destination_defaults."""

    def __init__(self, index: SidecarIndex) -> None:
        self._index = index

    @property
    def revision(self) -> int:
        return self._index.revision

    def deny_all(self) -> frozenset[str]:
        return frozenset(
            name
            for name in self._index.services()
            if (found := self.latest(name)) is not None and denies_all(found)
        )

    def outbound(self, source_service: str, destination_service: str) -> Outbound:
        return outbound(self.latest(source_service), destination_service)

    def latest(self, service_name: str) -> pb.SidecarConfiguration | None:
        """The service's most recently written configuration, None when it has none."""
        return latest(self._index.of_service(service_name))


def latest(
    records: Mapping[str, pb.SidecarConfigurationResponse],
) -> pb.SidecarConfiguration | None:
    """The most recently written of a service's configurations (serviceId -> record)."""
    if not records:
        return None
    newest = max(records.items(), key=lambda item: (item[1].revision, item[0]))
    return newest[1].configuration


def outbound(cfg: pb.SidecarConfiguration | None, destination: str) -> Outbound:
    """The retry and timeout a sidecar with configuration ``cfg`` applies to ``destination``."""
    if cfg is None:
        return None, None
    routing = cfg.routing
    retry = routing.retry if routing.HasField("retry") else None
    timeout = routing.timeout if routing.HasField("timeout") else None
    route = next((r for r in routing.routes if r.destination == destination), None)
    if route is None:
        return retry, timeout
    if route.HasField("retry"):
        retry = route.retry
    if route.HasField("timeout"):
        own = mesh_pb.TimeoutConfig()
        if timeout is not None:
            own.CopyFrom(timeout)
        own.request = route.timeout
        timeout = own
    return retry, timeout


def denies_all(cfg: pb.SidecarConfiguration) -> bool:
    """Its sidecars deny by default: authorization enabled (absent: enabled), policy deny-all."""
    authorization = cfg.security.authorization
    enabled = authorization.enabled if authorization.HasField("enabled") else True
    return enabled and authorization.policy == pb.AUTHORIZATION_POLICY_DENY_ALL
