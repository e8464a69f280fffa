"""Write-time checks of sidecar configurations and policies, beyond the declared field rules
(which ``lucid_cp.validation.normalize`` enforces first, applying defaults). Pure functions.

Errors (the write is refused, nothing stored) are ``FieldViolation``s named by JSON path with
``prefix`` prepended ("configuration." for a ConfigureSidecarRequest, "policy." for an
UpdateSidecarPolicyRequest): duplicate policyIds, consecutive routes with the same match whose
weights (absent: 100) do not sum to 100, rules of one policy with the same match and a weight
whose weights do not sum to 100, a fixed endpoint's port outside 1..65535, a selector in
``conditions`` outside the mesh grammar, rule ``parameters`` of the wrong shape for their action
(circuit-break, retry and timeout parameters are checked as the mesh messages they hold, with
their rules), loadBalancing.healthCheck.timeout >= interval, resources.requests above limits.

Warnings (the write succeeds; returned in the response) are ``Warning``s relative to the written
resource: unknown-destination, shadowed-route, mtls-overridden, shadowed-rule, policy-diverges.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from lucid_cp.api.lucid.common.v1 import options_pb2
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.errors import FieldViolation
from lucid_cp.mesh import checks as mesh_checks
from lucid_cp.mesh.selectors import SERVICE_NAME, SelectorError, parse
from lucid_cp.validation import normalize


@dataclass(frozen=True, slots=True)
class Warning:
    code: int  # sidecar_pb2.WarningCode
    field: str  # JSON path relative to the written resource
    message: str

    def to_proto(self) -> pb.Warning:
        return pb.Warning(code=self.code, field=self.field, message=self.message)  # type: ignore[arg-type]


# --- errors -------------------------------------------------------------------------------------

_FIXED = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]+)$")


def destination_errors(text: str, path: str) -> list[FieldViolation]:
    """A service name, or host:port with a port in 1..65535 (the pattern is declared)."""
    if SERVICE_NAME.fullmatch(text):
        return []
    fixed = _FIXED.fullmatch(text)
    if fixed is None:
        return [FieldViolation(path, "must be a service name or host:port")]
    if not 1 <= int(fixed.group(1)) <= 65535:
        return [FieldViolation(path, "port must be within 1..65535")]
    return []


def config_errors(cfg: pb.SidecarConfiguration, prefix: str = "") -> list[FieldViolation]:
    out: list[FieldViolation] = []
    seen: dict[str, int] = {}
    for i, policy in enumerate(cfg.policies):
        path = f"{prefix}policies[{i}]"
        if policy.policy_id in seen:
            out.append(
                FieldViolation(
                    f"{path}.policyId",
                    f"duplicate policyId {policy.policy_id!r} (also policies[{seen[policy.policy_id]}])",
                )
            )
        seen.setdefault(policy.policy_id, i)
        out += policy_errors(policy, f"{path}.")
    out += routing_errors(cfg.routing, f"{prefix}routing.")
    out += _resource_errors(cfg.resources, f"{prefix}resources.")
    return out


def routing_errors(routing: pb.RoutingConfig, prefix: str) -> list[FieldViolation]:
    out = destination_errors(routing.default_route, f"{prefix}defaultRoute")
    if routing.HasField("retry"):
        out += mesh_checks.retry_errors(routing.retry, f"{prefix}retry.")
    for i, route in enumerate(routing.routes):
        path = f"{prefix}routes[{i}]"
        out += destination_errors(route.destination, f"{path}.destination")
        if route.HasField("retry"):
            out += mesh_checks.retry_errors(route.retry, f"{path}.retry.")
    for start, end in _runs(routing.routes, lambda r: _key(r.match)):
        total = sum(r.weight if r.HasField("weight") else 100 for r in routing.routes[start:end])
        if total != 100:
            out.append(
                FieldViolation(
                    f"{prefix}routes[{start}].weight",
                    f"weights of consecutive routes with the same match must sum to 100 "
                    f"(absent: 100); routes {start}..{end - 1} sum to {total}",
                )
            )
    hc = routing.load_balancing.health_check
    if routing.load_balancing.HasField("health_check") and hc.timeout >= hc.interval:
        out.append(
            FieldViolation(
                f"{prefix}loadBalancing.healthCheck.timeout",
                f"must be below interval ({hc.interval})",
            )
        )
    return out


def policy_errors(policy: pb.SidecarPolicy, prefix: str = "") -> list[FieldViolation]:
    out: list[FieldViolation] = []
    for name in ("source", "destination"):
        text = getattr(policy.conditions, name)
        if text:
            try:
                parse(text)
            except SelectorError as e:
                out.append(FieldViolation(f"{prefix}conditions.{name}", str(e)))
    weighted: dict[bytes, list[int]] = {}
    for i, rule in enumerate(policy.rules):
        out += _parameter_errors(rule, f"{prefix}rules[{i}].parameters")
        if rule.HasField("weight"):
            weighted.setdefault(_key(rule.match), []).append(i)
    for members in weighted.values():
        total = sum(policy.rules[i].weight for i in members)
        if total != 100:
            listed = ", ".join(str(i) for i in members)
            out.append(
                FieldViolation(
                    f"{prefix}rules[{members[0]}].weight",
                    f"weights of rules with the same match must sum to 100, "
                    f"rules {listed} sum to {total}",
                )
            )
    return out


def _parameter_errors(rule: pb.PolicyRule, path: str) -> list[FieldViolation]:
    if not rule.HasField("parameters"):
        return []  # required ones: the declared message rule's violation
    params = rule.parameters.fields
    action = rule.action
    out: list[FieldViolation] = []
    if action in (pb.POLICY_ACTION_REDIRECT, pb.POLICY_ACTION_MIRROR):
        target = params.get("destination")
        if target is None:
            out.append(FieldViolation(f"{path}.destination", "is required for this action"))
        elif target.WhichOneof("kind") == "string_value":
            out += destination_errors(target.string_value, f"{path}.destination")
        percent = _number(params.get("percent"))
        if action == pb.POLICY_ACTION_MIRROR and percent is not None and not 0 <= percent <= 100:
            out.append(FieldViolation(f"{path}.percent", "must be within 0..100"))
    elif action == pb.POLICY_ACTION_RATE_LIMIT:
        requests = _number(params.get("requests"))
        if "requests" not in params:
            out.append(FieldViolation(f"{path}.requests", "is required for rate-limit"))
        elif requests is not None and (requests < 1 or requests != int(requests)):
            out.append(FieldViolation(f"{path}.requests", "must be a whole number >= 1"))
        seconds = _number(params.get("seconds"))
        if seconds is not None and (not 1 <= seconds <= 3600 or seconds != int(seconds)):
            out.append(FieldViolation(f"{path}.seconds", "must be a whole number within 1..3600"))
    elif action in _EMBEDDED:
        message, check = _EMBEDDED[action]
        out += _embedded_errors(rule.parameters, message, check, path)
    return out


_EMBEDDED: dict[int, tuple[type[Message], Callable[[Any, str], list[FieldViolation]]]] = {
    pb.POLICY_ACTION_CIRCUIT_BREAK: (
        mesh_pb2.CircuitBreakerConfig,
        mesh_checks.circuit_breaker_errors,
    ),
    pb.POLICY_ACTION_RETRY: (mesh_pb2.RetryConfig, mesh_checks.retry_errors),
    pb.POLICY_ACTION_TIMEOUT: (mesh_pb2.TimeoutConfig, lambda _cfg, _prefix: []),
}


def _embedded_errors(
    params: struct_pb2.Struct,
    message: type[Message],
    check: Callable[[Any, str], list[FieldViolation]],
    path: str,
) -> list[FieldViolation]:
    """``params`` read as ``message``'s JSON (enum values by wire string or name; other
    properties ignored), then its declared rules and its write-time checks."""
    data = json_format.MessageToDict(params)
    for field in message.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_ENUM:
            for name in (field.json_name, field.name):
                if name in data:
                    data[name] = _enum_names(field, data[name])
    try:
        parsed = json_format.ParseDict(data, message(), ignore_unknown_fields=True)
    except json_format.ParseError as e:
        return [FieldViolation(path, f"is not a {message.DESCRIPTOR.name}: {e}")]
    violations = normalize(parsed)
    if violations:
        return [FieldViolation(f"{path}.{v.field}", v.description) for v in violations]
    return check(parsed, f"{path}.")


def _enum_names(field: Any, value: object) -> object:
    """Wire strings of ``field``'s enum ("5xx") as value names ("FAILURE_KIND_5XX")."""
    wires = {
        v.GetOptions().Extensions[options_pb2.wire]: v.name
        for v in field.enum_type.values
        if v.GetOptions().Extensions[options_pb2.wire]
    }
    if isinstance(value, list):
        return [wires.get(v, v) if isinstance(v, str) else v for v in value]
    return wires.get(value, value) if isinstance(value, str) else value


def _number(value: struct_pb2.Value | None) -> float | None:
    if value is None or value.WhichOneof("kind") != "number_value":
        return None
    return value.number_value


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_UNITS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_MEMORY = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|K|M|G|T)?$")


def cpu_millicores(text: str) -> float:
    return float(text[:-1]) if text.endswith("m") else float(text) * 1000


def memory_bytes(text: str) -> int:
    found = _MEMORY.fullmatch(text)
    assert found is not None  # the declared pattern
    return int(found.group(1)) * _UNITS[found.group(2) or ""]


def _resource_errors(res: pb.ResourceConfig, prefix: str) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    limits, requests = res.limits, res.requests
    pairs: list[tuple[str, bool]] = []
    if limits.cpu and requests.cpu:
        pairs.append(("cpu", cpu_millicores(requests.cpu) > cpu_millicores(limits.cpu)))
    if limits.memory and requests.memory:
        pairs.append(("memory", memory_bytes(requests.memory) > memory_bytes(limits.memory)))
    if res.HasField("limits") and res.HasField("requests"):
        pairs.append(("connections", requests.connections > limits.connections))
    for name, over in pairs:
        if over:
            out.append(
                FieldViolation(
                    f"{prefix}requests.{name}",
                    f"must not be above limits.{name} ({getattr(limits, name)})",
                )
            )
    return out


def _key(match: Message) -> bytes:
    return match.SerializeToString(deterministic=True)


def _runs(items: Any, key: Callable[[Any], bytes]) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of consecutive items with equal keys."""
    runs: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(items) + 1):
        if i == len(items) or key(items[i]) != key(items[start]):
            runs.append((start, i))
            start = i
    return runs


# --- warnings -----------------------------------------------------------------------------------


def config_warnings(
    cfg: pb.SidecarConfiguration,
    registered: Callable[[str], bool],
    mtls_mode: int,
    siblings: Mapping[str, pb.SidecarConfiguration],
) -> list[Warning]:
    """``registered``: whether a service name has instances now; ``mtls_mode``: the mesh-wide mode
    (0 when not configured); ``siblings``: the other stored configurations of the service."""
    out: list[Warning] = []
    routing = cfg.routing
    targets = [("routing.defaultRoute", routing.default_route)] + [
        (f"routing.routes[{i}].destination", r.destination) for i, r in enumerate(routing.routes)
    ]
    for path, target in targets:
        if SERVICE_NAME.fullmatch(target) and not registered(target):
            out.append(
                Warning(
                    pb.WARNING_CODE_UNKNOWN_DESTINATION,
                    path,
                    f"no instance of service {target} is registered now",
                )
            )
    empty = _key(pb.RouteMatch())
    for start, end in _runs(routing.routes, lambda r: _key(r.match)):
        if _key(routing.routes[start].match) == empty:
            for i in range(end, len(routing.routes)):
                out.append(
                    Warning(
                        pb.WARNING_CODE_SHADOWED_ROUTE,
                        f"routing.routes[{i}]",
                        f"never matches: routes[{start}] has an empty match and catches every request",
                    )
                )
            break
    mtls = cfg.security.mtls
    if (
        cfg.security.HasField("mtls")
        and not mtls.enabled
        and mtls_mode == mesh_pb2.MTLS_MODE_STRICT
    ):
        out.append(
            Warning(
                pb.WARNING_CODE_MTLS_OVERRIDDEN,
                "security.mTLS.enabled",
                "the mesh-wide mTLS mode is strict, which wins over enabled=false",
            )
        )
    for i, policy in enumerate(cfg.policies):
        out += policy_warnings(policy, f"policies[{i}].")
        mine = policy.SerializeToString(deterministic=True)
        for sid, sibling in sorted(siblings.items()):
            if any(
                p.policy_id == policy.policy_id and p.SerializeToString(deterministic=True) != mine
                for p in sibling.policies
            ):
                out.append(
                    Warning(
                        pb.WARNING_CODE_POLICY_DIVERGES,
                        f"policies[{i}]",
                        f"the configuration of {sid} holds policy {policy.policy_id} with "
                        "different content; PUT /api/v1/sidecar-proxy/policies/"
                        f"{policy.policy_id} sets it in every configuration of the service",
                    )
                )
                break
    return out


def policy_warnings(policy: pb.SidecarPolicy, prefix: str = "") -> list[Warning]:
    empty = _key(pb.PolicyMatch())
    for i, rule in enumerate(policy.rules):
        if _key(rule.match) != empty or rule.HasField("weight"):
            continue
        return [
            Warning(
                pb.WARNING_CODE_SHADOWED_RULE,
                f"{prefix}rules[{j}]",
                f"never matches: rules[{i}] has an empty match and decides first",
            )
            for j in range(i + 1, len(policy.rules))
        ]
    return []
