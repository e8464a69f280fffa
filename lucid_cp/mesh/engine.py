"""The one decision engine: pure code (no I/O, no grpc, no store), imported by the control plane
(Explain) and by the sidecar.

Input: a ``Request`` and a ``MeshConfig`` (the enabled policies compiled once, the destinations'
settings, the destinations whose SecurityConfig says deny-all, the retry and timeout settings
each source applies to its destinations). Output: a ``Result``, the
``Verdict`` of the enforcing policies with its trace, plus the shadow verdict when it differs.
``to_explain_response`` turns it into an ExplainResponse.

Combining order (the README's "Mesh decision order"), in ``_evaluate``:

Security first, over the security policies whose source and destination selectors match:
  1. ``_requirements``: every matching require-auth / require-mtls / require-role rule must
     hold, whatever its priority. An unmet require-auth denies with 401, else an unmet
     require-mtls or require-role denies with 403.
  2. ``_access``: among matching allow/deny rules the highest policy priority wins; at equal
     priority deny wins. A deny answers 403; an allow passes on to traffic.
  3. ``_security_default``: no allow/deny matched. If an allow rule of any policy (any source)
     targets this destination: implicit default-deny (403). Else the mesh default: allow,
     unless the destination is in ``MeshConfig.deny_all`` (its SecurityConfig says deny-all).
Then traffic, ``_traffic``: traffic policies matching source and destination, by priority
(higher first; ties by namespace, then name), rules in order; the first matching rule decides:
allow (route to the destination), deny (403), redirect (to parameters.destination), mirror (route
to the destination, copy parameters.percent percent, default 100, to parameters.destination),
weighted-split (the policy's weighted-split rules with that rule's match, by weight). No rule
matched: route to the destination.

Shadow mode: the verdict uses enforcing policies only. When shadow policies exist, the same
order is evaluated again with every enabled policy enforcing; that verdict is reported as
``Result.shadow`` when its decision, status or targets differ. Either way, the shadow policies'
entries of that evaluation (what they would have done: won, lost, held, unmet) are added to the
verdict's trace, marked by their policy's mode; they never change the decision.

Weighted split: with ``draw`` (a number in [0, 1) from the caller's random source) the branch is
chosen deterministically (cumulative weights); without it (Explain) every branch is reported and
none chosen. In the ExplainResponse every target carries its destination's circuit breaker and
the retry and timeout settings the request's source applies to it (``MeshConfig.settings``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.descriptor import EnumDescriptor

from lucid_cp.api.lucid.common.v1 import options_pb2
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as pb
from lucid_cp.mesh.selectors import Selector, Workload, parse, single_service

_REQUIREMENTS = frozenset(
    {
        pb.SECURITY_ACTION_REQUIRE_AUTH,
        pb.SECURITY_ACTION_REQUIRE_MTLS,
        pb.SECURITY_ACTION_REQUIRE_ROLE,
    }
)
REQUIREMENT = pb.TRACE_STAGE_SECURITY_REQUIREMENT
ACCESS = pb.TRACE_STAGE_SECURITY_ACCESS
DEFAULT = pb.TRACE_STAGE_SECURITY_DEFAULT
TRAFFIC = pb.TRACE_STAGE_TRAFFIC
ROUTED = pb.TRACE_STAGE_TRAFFIC_DEFAULT
_TOKEN_METHODS = frozenset({pb.AUTH_METHOD_JWT, pb.AUTH_METHOD_API_KEY, pb.AUTH_METHOD_OAUTH2})


# (retry, timeout) a source applies to its requests to a destination; None: not configured.
Outbound = tuple[pb.RetryConfig | None, pb.TimeoutConfig | None]

_STAGE_ORDER: dict[int, int] = {
    stage: i for i, stage in enumerate((REQUIREMENT, ACCESS, DEFAULT, TRAFFIC, ROUTED))
}


def wire(enum: EnumDescriptor, number: int) -> str:
    value = enum.values_by_number[number]
    return str(value.GetOptions().Extensions[options_pb2.wire]) or value.name


def match_key(rule: pb.TrafficRule | pb.SecurityRule) -> bytes:
    """Identifies a rule's match: traffic rules with equal matches form one weighted split;
    allow and deny rules with equal matches at one priority tie (``checks``)."""
    return rule.match.SerializeToString(deterministic=True)


def plain(value: struct_pb2.Value | struct_pb2.Struct | struct_pb2.ListValue) -> Any:
    """A Struct, Value or ListValue as Python data. Unlike json_format it never raises (a
    non-finite number stays a float; validation refuses them at write time)."""
    if isinstance(value, struct_pb2.Struct):
        return {k: plain(v) for k, v in value.fields.items()}
    if isinstance(value, struct_pb2.ListValue):
        return [plain(v) for v in value.values]
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return plain(value.struct_value)
    if kind == "list_value":
        return plain(value.list_value)
    if kind is None or kind == "null_value":
        return None
    return getattr(value, kind)


# --- the request --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claims:
    """Claims of a verified token."""

    subject: str
    roles: frozenset[str] = frozenset()
    issuer: str = ""
    audience: str = ""
    other: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        named = {"sub": self.subject, "iss": self.issuer, "aud": self.audience}
        return {**self.other, **named, "roles": sorted(self.roles)}


@dataclass(frozen=True, slots=True)
class Request:
    source: Workload
    destination: Workload
    method: str = "GET"
    path: str = "/"
    headers: Mapping[str, str] = field(default_factory=dict)  # names in lower case
    query: Mapping[str, str] = field(default_factory=dict)
    claims: Claims | None = None
    peer_mtls_valid: bool = False

    @classmethod
    def from_proto(cls, req: pb.ExplainRequest) -> Request:
        claims = None
        if req.HasField("claims"):
            c = req.claims
            other = plain(c.other) if c.HasField("other") else {}
            claims = Claims(c.subject, frozenset(c.roles), c.issuer, c.audience, other)
        return cls(
            Workload.from_proto(req.source),
            Workload.from_proto(req.destination),
            req.method or "GET",
            req.path or "/",
            {k.lower(): v for k, v in req.headers.items()},
            dict(req.query),
            claims,
            req.peer_mtls_valid,
        )


# --- the compiled configuration -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Match:
    path: str = ""
    path_is_prefix: bool = False
    method: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    source_labels: tuple[tuple[str, str], ...] = ()
    destination_labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def compile(cls, m: Any) -> _Match:
        """From a TrafficMatch or a SecurityMatch (which has no query nor destination labels)."""
        prefix = m.path.endswith("*")
        return cls(
            m.path[:-1] if prefix else m.path,
            prefix,
            m.method,
            tuple((k.lower(), v) for k, v in sorted(m.headers.items())),
            tuple(sorted(m.query.items())) if hasattr(m, "query") else (),
            tuple(sorted(m.source_labels.items())),
            tuple(sorted(m.destination_labels.items())) if hasattr(m, "destination_labels") else (),
        )

    def matches(self, r: Request) -> bool:
        if self.path and not (
            r.path.startswith(self.path) if self.path_is_prefix else r.path == self.path
        ):
            return False
        if self.method and r.method != self.method:
            return False
        if any(r.headers.get(k) != v for k, v in self.headers):
            return False
        if any(r.query.get(k) != v for k, v in self.query):
            return False
        source, destination = r.source.labels, r.destination.labels
        return all(source.get(k) == v for k, v in self.source_labels) and all(
            destination.get(k) == v for k, v in self.destination_labels
        )


@dataclass(frozen=True, slots=True)
class _Policy:
    name: str
    namespace: str
    priority: int
    shadow: bool
    source: Selector
    destination: Selector
    rules: tuple[Any, ...]  # pb.TrafficRule or pb.SecurityRule
    matches: tuple[_Match, ...]
    targets: tuple[str, ...]  # per rule: the canonical service of parameters.destination, or ""

    @classmethod
    def compile(cls, p: pb.TrafficPolicy | pb.SecurityPolicy) -> _Policy:
        rules = tuple(p.rules)
        return cls(
            p.name,
            p.namespace,
            p.priority,
            p.mode == pb.POLICY_MODE_SHADOW,
            parse(p.source),
            parse(p.destination),
            rules,
            tuple(_Match.compile(rule.match) for rule in p.rules),
            tuple(_target(rule) for rule in p.rules),
        )

    def applies(self, r: Request) -> bool:
        return self.source.matches(r.source) and self.destination.matches(r.destination)

    @property
    def mode(self) -> int:
        return pb.POLICY_MODE_SHADOW if self.shadow else pb.POLICY_MODE_ENFORCE

    @property
    def ident(self) -> str:
        return f"{self.namespace}/{self.name}"


def _target(rule: pb.TrafficRule | pb.SecurityRule) -> str:
    """The one service a redirect, mirror or split rule names, through the selector parser (so
    " chain-v2 " is chain-v2); "" for other rules."""
    if not isinstance(rule, pb.TrafficRule) or not rule.HasField("parameters"):
        return ""
    target = rule.parameters.fields.get("destination")
    if target is None or target.WhichOneof("kind") != "string_value":
        return ""
    return single_service(target.string_value)


def _ordered(policies: Iterable[Any]) -> tuple[_Policy, ...]:
    compiled = [_Policy.compile(p) for p in policies if p.enabled]
    return tuple(sorted(compiled, key=lambda p: (-p.priority, p.namespace, p.name)))


def _no_outbound(source: str, destination: str) -> Outbound:
    return None, None


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """The effective configuration, compiled once. Disabled policies are dropped; policies must
    have passed validation (``normalize`` and ``checks``)."""

    traffic: tuple[_Policy, ...]
    security: tuple[_Policy, ...]
    destinations: Mapping[str, pb.DestinationSettings]
    deny_all: frozenset[str]
    outbound: Callable[[str, str], Outbound]

    @classmethod
    def compile(
        cls,
        traffic: Iterable[pb.TrafficPolicy] = (),
        security: Iterable[pb.SecurityPolicy] = (),
        destinations: Mapping[str, pb.DestinationSettings] | None = None,
        deny_all: Collection[str] = (),
        outbound: Callable[[str, str], Outbound] | None = None,
    ) -> MeshConfig:
        """``destinations``: service -> its circuit breaker, retry and timeout settings;
        ``deny_all``: services whose SecurityConfig authorization policy is deny-all;
        ``outbound``: (source, destination) -> the (retry, timeout) the source applies to its
        requests to the destination, each None when it configures none. A lookup in memory over
        the state the configuration is compiled from (``lucid_cp.mesh.defaults``): whoever holds
        a compiled configuration recompiles when that state changes."""
        return cls(
            _ordered(traffic),
            _ordered(security),
            dict(destinations or {}),
            frozenset(deny_all),
            outbound or _no_outbound,
        )

    @property
    def has_shadow(self) -> bool:
        return any(p.shadow for p in (*self.traffic, *self.security))

    def settings(self, source: str, destination: str) -> pb.DestinationSettings | None:
        """What comes with ``destination`` for requests from ``source``: its settings from
        ``destinations``, with the retry and timeout ``source`` applies to it instead of theirs
        when it applies any; None when there are none."""
        base = self.destinations.get(destination)
        retry, timeout = self.outbound(source, destination)
        if retry is None and timeout is None:
            return base
        out = pb.DestinationSettings()
        if base is not None:
            out.CopyFrom(base)
        if retry is not None:
            out.retry.CopyFrom(retry)
        if timeout is not None:
            out.timeout.CopyFrom(timeout)
        return out


# --- the result ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    service: str
    role: int  # pb.TargetRole
    weight: int = 100
    percent: float = 0.0
    chosen: bool = False


@dataclass(frozen=True, slots=True)
class Entry:
    stage: int  # pb.TraceStage
    outcome: int  # pb.TraceOutcome
    reason: str
    policy: _Policy | None = None
    rule_index: int = -1
    action: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: int  # pb.Decision
    http_status: int  # 401/403 for a deny, 0 when forwarded
    targets: tuple[Target, ...]
    trace: tuple[Entry, ...]
    summary: str

    def same_outcome(self, other: Verdict) -> bool:
        return (self.decision, self.http_status, self.targets) == (
            other.decision,
            other.http_status,
            other.targets,
        )


@dataclass(frozen=True, slots=True)
class Result:
    verdict: Verdict
    shadow: Verdict | None  # set only when it differs from verdict
    source: str  # the request's source service (whose outbound settings its targets get)


def decide(request: Request, config: MeshConfig, *, draw: float | None = None) -> Result:
    """The decision for ``request``; ``draw`` in [0, 1) chooses a weighted-split branch."""
    verdict = _evaluate(request, config, shadow=False, draw=draw)
    source = request.source.name
    if not config.has_shadow:
        return Result(verdict, None, source)
    shadow = _evaluate(request, config, shadow=True, draw=draw)
    would = [
        replace(e, reason=f"shadow, would have: {e.reason}")
        for e in shadow.trace
        if e.policy is not None and e.policy.shadow
    ]
    # A stable sort by stage keeps evaluation order: enforcing entries, then the shadow ones,
    # within each stage.
    trace = sorted((*verdict.trace, *would), key=lambda e: _STAGE_ORDER[e.stage])
    verdict = replace(verdict, trace=tuple(trace))
    return Result(verdict, None if shadow.same_outcome(verdict) else shadow, source)


# --- the combining order ------------------------------------------------------------------------


def _evaluate(r: Request, config: MeshConfig, *, shadow: bool, draw: float | None) -> Verdict:
    security = [p for p in config.security if shadow or not p.shadow]
    applying = [p for p in security if p.applies(r)]
    trace: list[Entry] = []
    denied = _requirements(r, applying, trace)
    if denied is None:
        matched, denied = _access(r, applying, trace)
        if not matched:
            denied = _security_default(r, security, config.deny_all, trace)
    if denied is not None:
        status, summary = denied
        return Verdict(pb.DECISION_DENY, status, (), tuple(trace), summary)
    traffic = [p for p in config.traffic if (shadow or not p.shadow) and p.applies(r)]
    return _traffic(r, traffic, trace, draw)


Denial = tuple[int, str] | None  # (HTTP status, summary) or None: passed


def _security_action(rule: pb.SecurityRule) -> str:
    return wire(pb.SecurityAction.DESCRIPTOR, rule.action)


def _requirements(r: Request, policies: list[_Policy], trace: list[Entry]) -> Denial:
    unmet: list[tuple[int, str]] = []
    for p in policies:
        for i, rule in enumerate(p.rules):
            if rule.action not in _REQUIREMENTS or not p.matches[i].matches(r):
                continue
            problem = _requirement_problem(rule, r)
            action = _security_action(rule)
            if problem is None:
                trace.append(Entry(REQUIREMENT, pb.TRACE_OUTCOME_HELD, "held", p, i, action))
                continue
            status = 401 if rule.action == pb.SECURITY_ACTION_REQUIRE_AUTH else 403
            trace.append(
                Entry(
                    REQUIREMENT, pb.TRACE_OUTCOME_UNMET, f"{problem}: deny {status}", p, i, action
                )
            )
            unmet.append((status, f"{action} of {p.ident} rule {i} unmet: {problem}"))
    if not unmet:
        return None
    # Authentication before authorization: any unmet require-auth answers 401.
    return min(unmet, key=lambda u: u[0])


def _requirement_problem(rule: pb.SecurityRule, r: Request) -> str | None:
    """Why ``rule`` does not hold for ``r``, or None when it holds."""
    if rule.action == pb.SECURITY_ACTION_REQUIRE_MTLS:
        return None if r.peer_mtls_valid else "the peer presented no valid mesh certificate"
    if rule.action == pb.SECURITY_ACTION_REQUIRE_ROLE:
        if r.claims is None:
            return "no verified token"
        wanted = set(rule.authorization.roles)
        if wanted & r.claims.roles:
            return None
        return f"none of the roles {sorted(wanted)}"
    auth = rule.authentication
    if rule.HasField("authentication") and auth.HasField("required") and not auth.required:
        return None
    methods = set(auth.methods)
    if pb.AUTH_METHOD_MTLS in methods and r.peer_mtls_valid:
        return None
    if methods and not methods & _TOKEN_METHODS:
        return "the peer presented no valid mesh certificate"
    if r.claims is None:
        return "no verified token"
    return _jwt_problem(auth.jwt, r.claims)


def _jwt_problem(jwt: pb.JwtRequirements, claims: Claims) -> str | None:
    if jwt.issuer and claims.issuer != jwt.issuer:
        return f"issuer {claims.issuer!r} is not {jwt.issuer!r}"
    if jwt.audience and claims.audience != jwt.audience:
        return f"audience {claims.audience!r} is not {jwt.audience!r}"
    have = claims.as_dict()
    for name, value in plain(jwt.required_claims).items():
        actual = have.get(name)
        if actual != value and not (isinstance(actual, list) and value in actual):
            return f"claim {name!r} is not {value!r}"
    return None


def _access(r: Request, policies: list[_Policy], trace: list[Entry]) -> tuple[bool, Denial]:
    """(whether any allow/deny rule matched, the denial if a deny won)."""
    matched = [
        (p, i, rule)
        for p in policies
        for i, rule in enumerate(p.rules)
        if rule.action in (pb.SECURITY_ACTION_ALLOW, pb.SECURITY_ACTION_DENY)
        and p.matches[i].matches(r)
    ]
    if not matched:
        return False, None
    top = max(p.priority for p, _, _ in matched)
    at_top = [m for m in matched if m[0].priority == top]
    winner = next((m for m in at_top if m[2].action == pb.SECURITY_ACTION_DENY), at_top[0])
    wp, wi, wrule = winner
    won_as = f"{wp.ident} rule {wi}"
    for p, i, rule in matched:
        action = _security_action(rule)
        if (p, i) == (wp, wi):
            why = f"highest priority ({top})"
            if any(m[2].action != wrule.action for m in at_top):
                why += "; deny wins ties"
            trace.append(Entry(ACCESS, pb.TRACE_OUTCOME_WON, why, p, i, action))
        elif p.priority < top:
            why = f"priority {p.priority} < {top} of {won_as}"
            trace.append(Entry(ACCESS, pb.TRACE_OUTCOME_LOST, why, p, i, action))
        elif rule.action != wrule.action:
            why = f"deny wins ties at priority {top} ({won_as})"
            trace.append(Entry(ACCESS, pb.TRACE_OUTCOME_LOST, why, p, i, action))
        else:
            why = f"{won_as} has the same priority and action and was evaluated first"
            trace.append(Entry(ACCESS, pb.TRACE_OUTCOME_LOST, why, p, i, action))
    if wrule.action == pb.SECURITY_ACTION_DENY:
        return True, (403, f"denied by {won_as} (priority {top})")
    return True, None


def _security_default(
    r: Request, security: list[_Policy], deny_all: frozenset[str], trace: list[Entry]
) -> Denial:
    for p in security:
        if p.destination.matches(r.destination) and any(
            rule.action == pb.SECURITY_ACTION_ALLOW for rule in p.rules
        ):
            why = f"no allow/deny rule matched and {p.ident} allows some traffic to this destination: implicit default-deny"
            trace.append(Entry(DEFAULT, pb.TRACE_OUTCOME_WON, why, action="deny"))
            return 403, why
    if r.destination.name in deny_all:
        why = "no allow/deny rule matched; the destination's SecurityConfig says deny-all"
        trace.append(Entry(DEFAULT, pb.TRACE_OUTCOME_WON, why, action="deny"))
        return 403, why
    trace.append(
        Entry(
            DEFAULT,
            pb.TRACE_OUTCOME_WON,
            "no allow/deny rule matched: mesh default allow",
            action="allow",
        )
    )
    return None


def _param(rule: pb.TrafficRule, name: str) -> Any:
    value = rule.parameters.fields.get(name)
    return None if value is None else plain(value)


def _traffic(
    r: Request, policies: list[_Policy], trace: list[Entry], draw: float | None
) -> Verdict:
    winner: tuple[_Policy, int] | None = None
    members: list[int] = []
    for p in policies:
        for i, rule in enumerate(p.rules):
            if not p.matches[i].matches(r):
                continue
            action = wire(pb.TrafficAction.DESCRIPTOR, rule.action)
            if winner is None:
                winner = (p, i)
                if rule.action == pb.TRAFFIC_ACTION_WEIGHTED_SPLIT:
                    key = match_key(rule)
                    members = [
                        j
                        for j, other in enumerate(p.rules)
                        if other.action == pb.TRAFFIC_ACTION_WEIGHTED_SPLIT
                        and match_key(other) == key
                    ]
                why = f"first matching rule of the highest-priority matching policy (priority {p.priority})"
                trace.append(Entry(TRAFFIC, pb.TRACE_OUTCOME_WON, why, p, i, action))
            elif winner[0] is p and i in members:
                why = f"branch of the weighted split of rule {winner[1]}"
                trace.append(Entry(TRAFFIC, pb.TRACE_OUTCOME_WON, why, p, i, action))
            else:
                why = f"{winner[0].ident} rule {winner[1]} decided first"
                trace.append(Entry(TRAFFIC, pb.TRACE_OUTCOME_LOST, why, p, i, action))
    destination = r.destination.name
    if winner is None:
        why = "no traffic rule matched: routed to the destination"
        trace.append(Entry(ROUTED, pb.TRACE_OUTCOME_WON, why, action="allow"))
        primary = Target(destination, pb.TARGET_ROLE_PRIMARY)
        return Verdict(pb.DECISION_ALLOW, 0, (primary,), tuple(trace), why)
    p, i = winner
    rule = p.rules[i]
    by = f"{wire(pb.TrafficAction.DESCRIPTOR, rule.action)} by {p.ident} rule {i}"
    done = tuple(trace)
    if rule.action == pb.TRAFFIC_ACTION_DENY:
        return Verdict(pb.DECISION_DENY, 403, (), done, by)
    if rule.action == pb.TRAFFIC_ACTION_ALLOW:
        primary = Target(destination, pb.TARGET_ROLE_PRIMARY)
        return Verdict(pb.DECISION_ALLOW, 0, (primary,), done, by)
    if rule.action == pb.TRAFFIC_ACTION_REDIRECT:
        target = Target(p.targets[i], pb.TARGET_ROLE_PRIMARY)
        return Verdict(pb.DECISION_REDIRECT, 0, (target,), done, by)
    if rule.action == pb.TRAFFIC_ACTION_MIRROR:
        percent = _param(rule, "percent")
        mirror = Target(
            p.targets[i],
            pb.TARGET_ROLE_MIRROR,
            weight=0,
            percent=100.0 if percent is None else float(percent),
        )
        primary = Target(destination, pb.TARGET_ROLE_PRIMARY)
        return Verdict(pb.DECISION_MIRROR, 0, (primary, mirror), done, by)
    branches = [
        Target(p.targets[j], pb.TARGET_ROLE_SPLIT, weight=p.rules[j].weight) for j in members
    ]
    return Verdict(pb.DECISION_WEIGHTED_SPLIT, 0, _choose(branches, draw), done, by)


def _choose(branches: list[Target], draw: float | None) -> tuple[Target, ...]:
    """Marks the branch ``draw`` (in [0, 1)) falls in, by cumulative weight; none without one."""
    if draw is None:
        return tuple(branches)
    point, total = draw * 100, 0
    for k, branch in enumerate(branches):
        total += branch.weight
        if point < total:
            branches[k] = replace(branch, chosen=True)
            break
    return tuple(branches)


# --- ExplainResponse ----------------------------------------------------------------------------


def _verdict_proto(v: Verdict, config: MeshConfig, source: str) -> pb.Verdict:
    out = pb.Verdict(decision=v.decision, http_status=v.http_status, summary=v.summary)  # type: ignore[arg-type]
    for t in v.targets:
        target = out.targets.add(
            service=t.service,
            role=t.role,
            weight=t.weight,
            percent=t.percent,
            chosen=t.chosen,
        )
        settings = config.settings(source, t.service)
        if settings is not None:
            target.settings.CopyFrom(settings)
    for e in v.trace:
        entry = out.trace.add(
            stage=e.stage,
            outcome=e.outcome,
            reason=e.reason,
            rule_index=e.rule_index,
            action=e.action,
        )
        if e.policy is not None:
            entry.policy, entry.namespace = e.policy.name, e.policy.namespace
            entry.mode, entry.priority = e.policy.mode, e.policy.priority  # type: ignore[assignment]
    return out


def to_explain_response(
    result: Result, config: MeshConfig, revision: int = 0
) -> pb.ExplainResponse:
    """``revision``: the store revision ``config`` was read at."""
    verdict = _verdict_proto(result.verdict, config, result.source)
    response = pb.ExplainResponse(verdict=verdict, revision=revision)
    if result.shadow is not None:
        response.shadow.CopyFrom(_verdict_proto(result.shadow, config, result.source))
    return response
