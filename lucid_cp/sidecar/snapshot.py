"""What one sidecar receives: its complete effective configuration, assembled from the three
watch-fed indexes (discovery, mesh, sidecar configurations). Pure reads of in-memory caches: no
I/O, no grpc.

A snapshot holds (ConnectResponse in sidecar.proto):
- the sidecar's workload (its instance's service, cluster and plane) and stored configuration;
- the enabled traffic and security policies whose source or destination selects its workload;
- its destinations: the services its routes and default route name, and the single services
  that traffic policies selecting it as source name as destination or as redirect, mirror or
  split target. Each comes with its circuit breaker (mesh), the retry and timeout this sidecar
  applies to it (``defaults.outbound``), whether its sidecars' authorization is deny-all
  (``defaults.denies_all`` of the service's newest configuration), and its endpoints: the
  instances Resolve may pick (``discovery.balancer.eligible``);
- the mesh-wide mTLS settings.

Its ``digest`` covers everything but version, nonce and time: two snapshots with one digest are
the same configuration, so nothing is sent. ``destinations`` is what the dependency index keeps
(destination service -> sidecars): an endpoint or circuit-breaker change of a service reaches
only the sidecars that route to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as mpb
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.discovery.balancer import eligible
from lucid_cp.mesh.engine import plain
from lucid_cp.mesh.selectors import SelectorError, Workload, parse, single_service
from lucid_cp.sidecar.defaults import denies_all, latest, outbound

_TARGET_ACTIONS = frozenset(
    {mpb.TRAFFIC_ACTION_REDIRECT, mpb.TRAFFIC_ACTION_MIRROR, mpb.TRAFFIC_ACTION_WEIGHTED_SPLIT}
)


class InstanceView(Protocol):
    def get(self, service_id: str) -> dpb.ServiceInstance | None: ...

    def of_service(self, service_name: str) -> Mapping[str, dpb.ServiceInstance]: ...


class ConfigView(Protocol):
    def get(self, service_id: str) -> pb.SidecarConfigurationResponse | None: ...

    def of_service(self, service_name: str) -> Mapping[str, pb.SidecarConfigurationResponse]: ...


class MeshView(Protocol):
    def traffic_policies(self) -> list[mpb.TrafficPolicyResponse]: ...

    def security_policies(self) -> list[mpb.SecurityPolicyResponse]: ...

    def circuit_breaker(self, service_name: str) -> mpb.CircuitBreakerResponse | None: ...

    def mtls(self) -> mpb.MTLSConfigResponse | None: ...


@dataclass(frozen=True, slots=True)
class Built:
    """A snapshot without version, nonce and time, with what it depends on."""

    response: pb.ConnectResponse
    digest: bytes
    workload: Workload
    destinations: frozenset[str]


def workload_of(instance: dpb.ServiceInstance) -> Workload:
    return Workload.from_proto(
        mpb.Workload(name=instance.service_name, cluster=instance.cluster, plane=instance.plane)
    )


def selects(text: str, workload: Workload) -> bool:
    """Whether selector ``text`` matches the workload (an unparsable one, which validation keeps
    out of the store, matches nothing)."""
    try:
        return parse(text).matches(workload)
    except SelectorError:
        return False


def _route_services(cfg: pb.SidecarConfiguration) -> set[str]:
    named = {r.destination for r in cfg.routing.routes}
    if cfg.routing.default_route:
        named.add(cfg.routing.default_route)
    return {d for d in named if ":" not in d}  # "host:port" is a fixed endpoint, not a service


def _policy_services(policy: mpb.TrafficPolicy) -> set[str]:
    found: set[str] = set()
    try:
        selector = parse(policy.destination)
    except SelectorError:
        return found
    if selector.name is not None and not selector.labels:
        found.add(selector.name)
    for rule in policy.rules:
        if rule.action not in _TARGET_ACTIONS:
            continue
        target = plain(rule.parameters).get("destination") if rule.HasField("parameters") else None
        if isinstance(target, str):
            try:
                found.add(single_service(target))
            except SelectorError:
                continue
    return found


def _enabled(policy: mpb.TrafficPolicy | mpb.SecurityPolicy) -> bool:
    return policy.enabled if policy.HasField("enabled") else True


class SnapshotBuilder:
    """Builds snapshots from the indexes. ``endpoints(service)`` is computed once per service
    and reused until ``forget(service)`` (the distributor calls it when discovery changes it)."""

    def __init__(self, instances: InstanceView, configs: ConfigView, mesh: MeshView) -> None:
        self._instances = instances
        self._configs = configs
        self._mesh = mesh
        self._endpoints: dict[str, tuple[list[pb.Endpoint], bytes]] = {}

    def instance(self, service_id: str) -> dpb.ServiceInstance | None:
        return self._instances.get(service_id)

    def forget(self, service: str) -> None:
        self._endpoints.pop(service, None)

    def endpoints(self, service: str) -> tuple[list[pb.Endpoint], bytes]:
        """The service's endpoints as sidecars get them, and their digest."""
        cached = self._endpoints.get(service)
        if cached is None:
            chosen = eligible(self._instances.of_service(service).values())
            endpoints = [
                pb.Endpoint(
                    service_id=i.service_id,
                    host=i.endpoint.host,
                    port=i.endpoint.port,
                    protocol=i.endpoint.protocol,
                    weight=i.weight,
                    version=i.version,
                )
                for i in chosen
            ]
            labels = self._labels(service)
            digest = hashlib.sha256(
                b"".join(e.SerializeToString(deterministic=True) for e in endpoints)
                + f"|{labels[0]}|{labels[1]}".encode()
            ).digest()
            cached = self._endpoints[service] = (endpoints, digest)
        return cached

    def _labels(self, service: str) -> tuple[int, int]:
        """(cluster, plane) of a service: its instance with the lowest serviceId's, so every
        replica says the same."""
        instances = self._instances.of_service(service)
        if not instances:
            return 0, 0
        first = instances[min(instances)]
        return first.cluster, first.plane

    def deny_all(self, service: str) -> bool:
        found = latest(self._configs.of_service(service))
        return found is not None and denies_all(found)

    def build(self, service_id: str) -> Built | None:
        """The snapshot of instance ``service_id``'s sidecar; None when it is not registered."""
        instance = self._instances.get(service_id)
        if instance is None:
            return None
        workload = workload_of(instance)
        stored = self._configs.get(service_id)
        cfg = stored.configuration if stored is not None else None
        out = pb.ConnectResponse(
            workload=mpb.Workload(
                name=instance.service_name, cluster=instance.cluster, plane=instance.plane
            )
        )
        if cfg is not None:
            out.configuration.CopyFrom(cfg)
        services = _route_services(cfg) if cfg is not None else set()
        for record in self._mesh.traffic_policies():
            policy = record.policy
            if not _enabled(policy):
                continue
            as_source = selects(policy.source, workload)
            if as_source or selects(policy.destination, workload):
                out.traffic_policies.append(policy)
            if as_source:
                services |= _policy_services(policy)
        for security in self._mesh.security_policies():
            policy_s = security.policy
            if _enabled(policy_s) and (
                selects(policy_s.source, workload) or selects(policy_s.destination, workload)
            ):
                out.security_policies.append(policy_s)
        for service in sorted(services):
            out.destinations.append(self._destination(service, cfg))
        mtls = self._mesh.mtls()
        if mtls is not None:
            out.mtls.CopyFrom(mtls.config)
        digest = hashlib.sha256(out.SerializeToString(deterministic=True)).digest()
        return Built(out, digest, workload, frozenset(services))

    def _destination(self, service: str, cfg: pb.SidecarConfiguration | None) -> pb.Destination:
        endpoints, _ = self.endpoints(service)
        out = pb.Destination(service=service, deny_all=self.deny_all(service))
        out.cluster, out.plane = self._labels(service)  # type: ignore[assignment]
        breaker = self._mesh.circuit_breaker(service)
        if breaker is not None:
            out.settings.circuit_breaker.CopyFrom(breaker.config)
        retry, timeout = outbound(cfg, service)
        if retry is not None:
            out.settings.retry.CopyFrom(retry)
        if timeout is not None:
            out.settings.timeout.CopyFrom(timeout)
        out.endpoints.extend(endpoints)
        return out
