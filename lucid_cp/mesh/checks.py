"""Write-time checks of mesh resources, beyond the declared field rules (which
``lucid_cp.validation.normalize`` enforces first, applying defaults).

Errors (the write is refused, nothing stored) are ``FieldViolation``s named by JSON path, with
``prefix`` prepended ("policy." for a CreateTrafficPolicyRequest):
selectors outside the grammar, weighted-split weights of one match not summing to 100, a
redirect/mirror/split target that is not one exact service, a mirror percent outside 0..100,
unknown label keys or values in a rule's match, require-role without roles,
``RetryConfig.maxDelay < initialDelay``, ``CircuitBreakerConfig.halfOpenMaxCalls <
successThreshold``, an mTLS ``certAuthority`` that is not PEM certificates (or holds a key).

After the errors, ``canonicalize`` rewrites the selectors and targets into their canonical text
(``selectors.Selector.canonical``), which is what is stored, listed and filtered on.

Warnings (the write succeeds; returned in its response) are ``Warning``s with the field relative
to the resource: a rule shadowed by a catch-all that decides first, allow and deny for the same
source and destination at the same priority, a selector matching no registered service today.
A policy in shadow mode can be shadowed by any policy; an enforcing one only by enforcing ones
(shadow policies never decide). A disabled policy gets only the unmatched-selector warnings (it
takes part in no evaluation). An allow/deny tie is an allow rule and a deny rule with the same
match (``engine.match_key``) at the same priority, in one policy or in two enabled policies with
the same source and destination selectors. All functions are pure.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf import struct_pb2

from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as pb
from lucid_cp.errors import FieldViolation
from lucid_cp.mesh.engine import match_key
from lucid_cp.mesh.selectors import (
    LABEL_KEYS,
    LABEL_VALUES,
    Selector,
    SelectorError,
    Workload,
    parse,
    single_service,
)

Policy = pb.TrafficPolicy | pb.SecurityPolicy
P = TypeVar("P", pb.TrafficPolicy, pb.SecurityPolicy)
_TARGETED = {
    pb.TRAFFIC_ACTION_REDIRECT: "redirect",
    pb.TRAFFIC_ACTION_MIRROR: "mirror",
    pb.TRAFFIC_ACTION_WEIGHTED_SPLIT: "weighted-split",
}


@dataclass(frozen=True, slots=True)
class Warning:
    code: int  # mesh_pb2.WarningCode
    field: str  # JSON path relative to the resource
    message: str

    def to_proto(self) -> pb.Warning:
        return pb.Warning(code=self.code, field=self.field, message=self.message)  # type: ignore[arg-type]


# --- errors -------------------------------------------------------------------------------------


def _selector_errors(policy: Policy, prefix: str) -> list[FieldViolation]:
    out = []
    for name in ("source", "destination"):
        try:
            parse(getattr(policy, name))
        except SelectorError as e:
            out.append(FieldViolation(f"{prefix}{name}", str(e)))
    return out


def _label_errors(labels: Mapping[str, str], path: str) -> list[FieldViolation]:
    out = []
    for key, value in sorted(labels.items()):
        if key not in LABEL_KEYS:
            out.append(
                FieldViolation(f"{path}.{key}", "unknown label; labels are cluster and plane")
            )
        elif value not in LABEL_VALUES[key]:
            out.append(FieldViolation(f"{path}.{key}", f"unknown {key} {value!r}"))
    return out


def traffic_policy_errors(policy: pb.TrafficPolicy, prefix: str = "") -> list[FieldViolation]:
    out = _selector_errors(policy, prefix)
    splits: dict[bytes, list[int]] = {}
    for i, rule in enumerate(policy.rules):
        path = f"{prefix}rules[{i}]"
        out += _label_errors(rule.match.source_labels, f"{path}.match.sourceLabels")
        out += _label_errors(rule.match.destination_labels, f"{path}.match.destinationLabels")
        if rule.action not in _TARGETED or not rule.HasField("parameters"):
            continue  # a missing `parameters` is the declared message rule's violation
        params = rule.parameters.fields
        target = params.get("destination")
        if target is None:
            out.append(
                FieldViolation(
                    f"{path}.parameters.destination", f"is required for {_TARGETED[rule.action]}"
                )
            )
        elif target.WhichOneof("kind") == "string_value":
            try:
                single_service(target.string_value)
            except SelectorError as e:
                out.append(FieldViolation(f"{path}.parameters.destination", str(e)))
        percent = params.get("percent")
        if rule.action == pb.TRAFFIC_ACTION_MIRROR and _is_number(percent):
            assert percent is not None
            if not 0 <= percent.number_value <= 100:
                out.append(FieldViolation(f"{path}.parameters.percent", "must be within 0..100"))
        if rule.action == pb.TRAFFIC_ACTION_WEIGHTED_SPLIT:
            splits.setdefault(match_key(rule), []).append(i)
    for members in splits.values():
        total = sum(policy.rules[i].weight for i in members)
        if total != 100:
            listed = ", ".join(str(i) for i in members)
            out.append(
                FieldViolation(
                    f"{prefix}rules[{members[0]}].weight",
                    f"weighted-split weights of one match must sum to 100, "
                    f"rules {listed} sum to {total}",
                )
            )
    return out


def canonicalize(policy: Policy) -> None:
    """Rewrites, in place, the selectors and the redirect/mirror/split targets of a policy that
    passed its errors check into their canonical text."""
    policy.source = parse(policy.source).canonical
    policy.destination = parse(policy.destination).canonical
    if not isinstance(policy, pb.TrafficPolicy):
        return
    for rule in policy.rules:
        target = rule.parameters.fields.get("destination")
        if rule.action in _TARGETED and target is not None:
            if target.WhichOneof("kind") == "string_value":
                target.string_value = single_service(target.string_value)


def _is_number(value: struct_pb2.Value | None) -> bool:
    return value is not None and value.WhichOneof("kind") == "number_value"


def security_policy_errors(policy: pb.SecurityPolicy, prefix: str = "") -> list[FieldViolation]:
    out = _selector_errors(policy, prefix)
    for i, rule in enumerate(policy.rules):
        path = f"{prefix}rules[{i}]"
        out += _label_errors(rule.match.source_labels, f"{path}.match.sourceLabels")
        if (
            rule.action == pb.SECURITY_ACTION_REQUIRE_ROLE
            and rule.HasField("authorization")
            and not rule.authorization.roles
        ):
            out.append(
                FieldViolation(
                    f"{path}.authorization.roles", "is required when action is require-role"
                )
            )
    return out


def circuit_breaker_errors(cfg: pb.CircuitBreakerConfig, prefix: str = "") -> list[FieldViolation]:
    if cfg.half_open_max_calls >= cfg.success_threshold:
        return []
    return [
        FieldViolation(
            f"{prefix}halfOpenMaxCalls",
            f"must be >= successThreshold ({cfg.success_threshold}): "
            "a half-open circuit could never close",
        )
    ]


def retry_errors(cfg: pb.RetryConfig, prefix: str = "") -> list[FieldViolation]:
    if cfg.max_delay >= cfg.initial_delay:
        return []
    return [FieldViolation(f"{prefix}maxDelay", f"must be >= initialDelay ({cfg.initial_delay})")]


_PEM_CERT = "-----BEGIN CERTIFICATE-----"


def mtls_errors(cfg: pb.MTLSConfig, prefix: str = "") -> list[FieldViolation]:
    """``certAuthority`` is public material: PEM certificates only, never a private key."""
    text = cfg.cert_authority
    if not text:
        return []
    if "PRIVATE KEY" in text:
        return [
            FieldViolation(
                f"{prefix}certAuthority",
                "holds a private key: only the CA's certificate(s) belong here",
            )
        ]
    if _PEM_CERT not in text:
        return [FieldViolation(f"{prefix}certAuthority", f"must be PEM ({_PEM_CERT} ...)")]
    return []


# --- warnings -----------------------------------------------------------------------------------


def _selectors(policy: Policy) -> tuple[Selector, Selector] | None:
    try:
        return parse(policy.source), parse(policy.destination)
    except SelectorError:
        return None


def _ident(policy: Policy) -> str:
    return f"{policy.namespace}/{policy.name}"


def _unmatched(policy: Policy, services: Collection[Workload]) -> list[Warning]:
    out = []
    fields = [("source", policy.source), ("destination", policy.destination)]
    if isinstance(policy, pb.TrafficPolicy):
        for i, rule in enumerate(policy.rules):
            target = rule.parameters.fields.get("destination")
            if rule.action in _TARGETED and target is not None:
                fields.append((f"rules[{i}].parameters.destination", target.string_value))
    for field, text in fields:
        try:
            selector = parse(text)
        except SelectorError:
            continue
        if not any(selector.matches(w) for w in services):
            out.append(
                Warning(
                    pb.WARNING_CODE_UNMATCHED_SELECTOR,
                    field,
                    f"{text!r} matches no registered service",
                )
            )
    return out


def _can_shadow(shadowing: Policy, shadowed: Policy) -> bool:
    """Whether ``shadowing`` takes part in every evaluation ``shadowed`` takes part in."""
    return shadowed.mode == pb.POLICY_MODE_SHADOW or shadowing.mode != pb.POLICY_MODE_SHADOW


def _decides_first(a: Policy, b: Policy) -> bool:
    """``a`` decides before ``b``: traffic policies are evaluated by priority desc, then
    namespace, name; among security allow/deny only a strictly higher priority wins (at equal
    priority deny does)."""
    if isinstance(a, pb.SecurityPolicy):
        return a.priority > b.priority
    return (-a.priority, a.namespace, a.name) < (-b.priority, b.namespace, b.name)


def _covers(a: Policy, b: Policy) -> bool:
    sa, sb = _selectors(a), _selectors(b)
    return sa is not None and sb is not None and sa[0].covers(sb[0]) and sa[1].covers(sb[1])


def _catch_all(policy: Policy, actions: Collection[int]) -> int | None:
    """Index of the first rule with an empty match among ``actions``, or None."""
    rules: Iterable[pb.TrafficRule | pb.SecurityRule] = policy.rules
    for i, rule in enumerate(rules):
        if rule.action in actions and rule.match.ByteSize() == 0:
            return i
    return None


_ALL_TRAFFIC = frozenset(pb.TrafficAction.values()) - {0}
_ACCESS = frozenset({pb.SECURITY_ACTION_ALLOW, pb.SECURITY_ACTION_DENY})


def _shadowing(
    policy: Policy, others: Iterable[Policy], actions: Collection[int], what: str
) -> list[Warning]:
    """Catch-alls of other policies that decide before every rule of ``policy`` in ``actions``,
    and other policies this one's catch-all now shadows."""
    out = []
    own = _catch_all(policy, actions)
    for other in others:
        theirs = _catch_all(other, actions)
        if (
            theirs is not None
            and _has_any(policy, actions)
            and _can_shadow(other, policy)
            and _decides_first(other, policy)
            and _covers(other, policy)
        ):
            out.append(
                Warning(
                    pb.WARNING_CODE_SHADOWED_RULE,
                    "rules",
                    f"no {what} rule of this policy can decide: policy {_ident(other)} "
                    f"(priority {other.priority}) decides first with catch-all rule {theirs} "
                    "for every source and destination this policy selects",
                )
            )
        if (
            own is not None
            and _can_shadow(policy, other)
            and _decides_first(policy, other)
            and _covers(policy, other)
            and _has_any(other, actions)
        ):
            out.append(
                Warning(
                    pb.WARNING_CODE_SHADOWED_RULE,
                    f"rules[{own}]",
                    f"this catch-all decides before every {what} rule of policy {_ident(other)} "
                    f"(priority {other.priority}): those rules can no longer decide",
                )
            )
    return out


def _has_any(policy: Policy, actions: Collection[int]) -> bool:
    rules: Iterable[pb.TrafficRule | pb.SecurityRule] = policy.rules
    return any(r.action in actions for r in rules)


def _others(policy: Policy, existing: Iterable[P]) -> list[P]:
    return [p for p in existing if p.enabled and _ident(p) != _ident(policy)]


def traffic_policy_warnings(
    policy: pb.TrafficPolicy,
    existing: Iterable[pb.TrafficPolicy],
    services: Collection[Workload],
) -> list[Warning]:
    """Warnings for writing ``policy`` next to the ``existing`` stored policies (a stored policy
    of the same namespace/name is the one being replaced and is ignored) when ``services`` are
    registered."""
    if _selectors(policy) is None:
        return []
    out = _unmatched(policy, services)
    if not policy.enabled:
        return out
    first = _catch_all(policy, _ALL_TRAFFIC)
    if first is not None:
        head = policy.rules[first]
        for j in range(first + 1, len(policy.rules)):
            rule = policy.rules[j]
            same_split = (
                head.action == rule.action == pb.TRAFFIC_ACTION_WEIGHTED_SPLIT
                and match_key(head) == match_key(rule)
            )
            if not same_split:
                out.append(
                    Warning(
                        pb.WARNING_CODE_SHADOWED_RULE,
                        f"rules[{j}]",
                        f"never decides: rule {first} earlier in this policy matches every request",
                    )
                )
    out += _shadowing(policy, _others(policy, existing), _ALL_TRAFFIC, "traffic")
    return out


def security_policy_warnings(
    policy: pb.SecurityPolicy,
    existing: Iterable[pb.SecurityPolicy],
    services: Collection[Workload],
) -> list[Warning]:
    """As traffic_policy_warnings, for a security policy: shadowing concerns allow/deny rules
    (requirements always apply), and allow/deny ties at equal priority are reported."""
    selectors = _selectors(policy)
    if selectors is None:
        return []
    out = _unmatched(policy, services)
    if not policy.enabled:
        return out
    others = _others(policy, existing)
    out += _shadowing(policy, others, _ACCESS, "allow/deny")
    for i, rule in enumerate(policy.rules):
        if rule.action not in _ACCESS:
            continue
        opposite = (
            pb.SECURITY_ACTION_DENY
            if rule.action == pb.SECURITY_ACTION_ALLOW
            else pb.SECURITY_ACTION_ALLOW
        )
        key = match_key(rule)
        for j, other_rule in enumerate(policy.rules):
            if other_rule.action == opposite and j > i and match_key(other_rule) == key:
                out.append(_tie(f"rules[{i}]", policy.priority, f"rule {j} of this policy"))
        for other in others:
            if (
                other.priority == policy.priority
                and _same_selectors(other, selectors)
                and _can_shadow(other, policy)
            ):
                k = next(
                    (
                        k
                        for k, r in enumerate(other.rules)
                        if r.action == opposite and match_key(r) == key
                    ),
                    None,
                )
                if k is not None:
                    out.append(
                        _tie(f"rules[{i}]", policy.priority, f"policy {_ident(other)} rule {k}")
                    )
    return out


def _same_selectors(policy: Policy, selectors: tuple[Selector, Selector]) -> bool:
    theirs = _selectors(policy)
    return theirs is not None and all(
        a.key == b.key for a, b in zip(theirs, selectors, strict=True)
    )


def _tie(field: str, priority: int, other: str) -> Warning:
    return Warning(
        pb.WARNING_CODE_ALLOW_DENY_TIE,
        field,
        f"allow and deny with the same match for the same source and destination at priority "
        f"{priority} "
        f"(with {other}): deny wins",
    )
