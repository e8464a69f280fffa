"""The route table, compiled once from the services' google.api.http annotations."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.api import annotations_pb2
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gateway.http_rule import DOUBLE_WILDCARD, Binding, TemplateError, bindings_of, split_path
from lucid_cp.api.lucid.common.v1 import options_pb2

FieldPath = tuple[FieldDescriptor, ...]


@dataclass(frozen=True, slots=True)
class Route:
    method: MethodDescriptor
    binding: Binding
    grpc_path: str  # "/package.Service/Method"
    request_class: type[Message]
    response_class: type[Message]
    server_streaming: bool
    success_status: int
    admin_only: bool
    # A response that reports health ((lucid.common.v1.http_options)): when its bool field
    # ``healthy_field`` is false the call is answered ``unhealthy_status`` with the same body.
    # 0 and None when the method declares none.
    unhealthy_status: int
    healthy_field: FieldDescriptor | None
    # Path variables: proto field-name path -> resolved field chain.
    path_fields: dict[tuple[str, ...], FieldPath]
    body_field: FieldDescriptor | None  # set when body names one field
    response_field: FieldDescriptor | None  # set when response_body names one field

    @property
    def http_method(self) -> str:
        return self.binding.http_method

    @property
    def body(self) -> str:
        return self.binding.body

    @property
    def body_required(self) -> bool:
        """Whether a request body must be sent: it carries a field the rules require (a body
        whose fields are all optional may be omitted, and then means ``{}``)."""
        if self.body_field is not None:
            nested = self.body_field.message_type
            return nested is None or _rules(self.body_field).required or _any_required(nested)
        if self.body == "*":
            in_path = {chain[0].number for chain in self.path_fields.values() if len(chain) == 1}
            return any(
                _rules(f).required for f in self.method.input_type.fields if f.number not in in_path
            )
        return False

    @property
    def path_param_names(self) -> dict[tuple[str, ...], str]:
        """Path variables by their REST name: the fields' JSON names joined with '.'."""
        return {
            key: ".".join(f.json_name for f in chain) for key, chain in self.path_fields.items()
        }


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    path_values: dict[tuple[str, ...], str]


class NoRoute(LookupError):
    """No template matches the path (404)."""


class MethodNotAllowed(LookupError):
    """A template matches the path but not with this HTTP method (405)."""

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(f"method not allowed; allowed: {', '.join(allowed)}")
        self.allowed = allowed


class RouteTable:
    def __init__(self, routes: Iterable[Route]) -> None:
        # Most specific first: more literal segments, then fewer variables.
        self.routes: tuple[Route, ...] = tuple(
            sorted(
                routes,
                key=lambda r: (
                    -r.binding.template.literal_count,
                    len(r.binding.template.variables),
                ),
            )
        )
        self._rank = {id(route): rank for rank, route in enumerate(self.routes)}
        # Templates without "**" match exactly their number of segments: bucket them by it.
        self._by_length: dict[int, list[Route]] = {}
        self._open_ended: list[Route] = []
        for route in self.routes:
            segments = route.binding.template.segments
            if segments and segments[-1] == DOUBLE_WILDCARD:
                self._open_ended.append(route)
            else:
                self._by_length.setdefault(len(segments), []).append(route)
        seen: dict[tuple[str, str], str] = {}
        for route in self.routes:
            key = (route.http_method, route.binding.template.source)
            if key in seen:
                raise TemplateError(
                    f"{route.method.full_name} and {seen[key]} both bind {key[0]} {key[1]}"
                )
            seen[key] = route.method.full_name

    def match(self, http_method: str, raw_path: str) -> RouteMatch:
        segments, verb = split_path(raw_path)
        allowed: list[str] = []
        candidates = self._by_length.get(len(segments), [])
        if self._open_ended:
            candidates = sorted([*candidates, *self._open_ended], key=lambda r: self._rank[id(r)])
        for route in candidates:
            values = route.binding.template.match(segments, verb)
            if values is None:
                continue
            if route.http_method == http_method:
                return RouteMatch(route, values)
            allowed.append(route.http_method)
        if allowed:
            raise MethodNotAllowed(sorted(set(allowed)))
        raise NoRoute(raw_path)


def compile_routes(services: Iterable[ServiceDescriptor]) -> RouteTable:
    """Builds the route table; raises TemplateError for any annotation it cannot honour."""
    routes: list[Route] = []
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            http = options.Extensions[options_pb2.http_options]
            policy = options.Extensions[options_pb2.policy]
            try:
                routes.extend(_route(service, method, b, http, policy) for b in bindings_of(rule))
            except TemplateError as exc:
                raise TemplateError(f"{method.full_name}: {exc}") from None
    return RouteTable(routes)


def _route(
    service: ServiceDescriptor,
    method: MethodDescriptor,
    binding: Binding,
    http: options_pb2.HttpOptions,
    policy: options_pb2.MethodPolicy,
) -> Route:
    if method.client_streaming:
        raise TemplateError("client-streaming methods cannot be transcoded")
    request = method.input_type
    path_fields = {
        var.field_path: _resolve_path_field(request, var.field_path)
        for var in binding.template.variables
    }
    body_field = None
    if binding.body not in ("", "*"):
        body_field = _top_level_field(request, binding.body, "body")
        if any(chain[0] is body_field for chain in path_fields.values()):
            raise TemplateError(f"body field {binding.body!r} is also bound by the path")
    response_field = None
    if binding.response_body:
        response_field = _top_level_field(
            method.output_type, binding.response_body, "response_body"
        )
    status = http.success_status or 200
    if not 200 <= status <= 299:
        raise TemplateError(f"success_status {status} is not a 2xx status")
    healthy_field = _healthy_field(method, http, status)
    return Route(
        method=method,
        binding=binding,
        grpc_path=f"/{service.full_name}/{method.name}",
        request_class=GetMessageClass(request),
        response_class=GetMessageClass(method.output_type),
        server_streaming=method.server_streaming,
        success_status=status,
        admin_only=policy.admin_only,
        unhealthy_status=http.unhealthy_status,
        healthy_field=healthy_field,
        path_fields=path_fields,
        body_field=body_field,
        response_field=response_field,
    )


def _healthy_field(
    method: MethodDescriptor, http: options_pb2.HttpOptions, success_status: int
) -> FieldDescriptor | None:
    """The response's bool field ``healthy_field`` names, checked with ``unhealthy_status``;
    None when the method declares neither."""
    status, name = http.unhealthy_status, http.healthy_field
    if not status and not name:
        return None
    if not (status and name):
        raise TemplateError("unhealthy_status and healthy_field must be set together")
    if not 400 <= status <= 599:
        raise TemplateError(f"unhealthy_status {status} is not a 4xx or 5xx status")
    if method.server_streaming:
        raise TemplateError("unhealthy_status applies to unary methods only")
    if success_status == 204:
        raise TemplateError("unhealthy_status needs a response body (success_status is 204)")
    response = method.output_type
    field = _top_level_field(response, name, "healthy_field")
    if field.type != FieldDescriptor.TYPE_BOOL or field.is_repeated:
        raise TemplateError(f"healthy_field {name!r} is not a bool field of {response.full_name}")
    return field


def _rules(field: FieldDescriptor) -> options_pb2.FieldRules:
    return field.GetOptions().Extensions[options_pb2.rules]


def _any_required(message: Descriptor) -> bool:
    return any(_rules(f).required for f in message.fields)


def _top_level_field(message: Descriptor, name: str, what: str) -> FieldDescriptor:
    field = message.fields_by_name.get(name)
    if field is None:
        raise TemplateError(f"{what} {name!r} is not a field of {message.full_name}")
    return field


def _resolve_path_field(message: Descriptor, path: tuple[str, ...]) -> FieldPath:
    chain: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for name in path:
        if current is None:
            raise TemplateError(f"path variable {'.'.join(path)!r} descends into a scalar")
        field = current.fields_by_name.get(name)
        if field is None:
            raise TemplateError(f"path variable {'.'.join(path)!r}: no field {name!r}")
        if field.is_repeated:
            raise TemplateError(f"path variable {'.'.join(path)!r} is a repeated field")
        chain.append(field)
        current = field.message_type
    if current is not None:
        raise TemplateError(f"path variable {'.'.join(path)!r} must be a scalar field")
    return tuple(chain)
