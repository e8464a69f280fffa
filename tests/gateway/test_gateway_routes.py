"""The route table: compiled from the descriptors, matched by method and path, loud on errors."""

from __future__ import annotations

import itertools

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from gw_dynamic_proto import echo_service

from gateway.http_rule import TemplateError
from gateway.routes import MethodNotAllowed, NoRoute, compile_routes
from gateway.services import ServiceNotFound, package_services, select_services
from lucid_cp.api.lucid.common.v1 import options_pb2
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2

DISCOVERY = "lucid.discovery.v1.DiscoveryService"
_counter = itertools.count()
_T = descriptor_pb2.FieldDescriptorProto


def one_method_service(
    rule: http_pb2.HttpRule,
    *,
    client_streaming: bool = False,
    server_streaming: bool = False,
    success_status: int = 0,
    http_options: options_pb2.HttpOptions | None = None,
) -> ServiceDescriptor:
    """A throwaway service with Req{id, ids[], sub{id}} and Resp{ok, count, oks[]} in the
    default pool."""
    n = next(_counter)
    package = f"lucid.gwbad{n}.v1"
    f = descriptor_pb2.FileDescriptorProto(name=f"lucid/gwbad{n}.proto", package=package)
    f.syntax = "proto3"
    f.dependency.extend(["google/api/annotations.proto", "lucid/common/v1/options.proto"])
    sub = f.message_type.add(name="Sub")
    sub.field.add(name="id", number=1, type=_T.TYPE_STRING, label=_T.LABEL_OPTIONAL)
    req = f.message_type.add(name="Req")
    req.field.add(name="id", number=1, type=_T.TYPE_STRING, label=_T.LABEL_OPTIONAL)
    req.field.add(name="ids", number=2, type=_T.TYPE_STRING, label=_T.LABEL_REPEATED)
    req.field.add(
        name="sub",
        number=3,
        type=_T.TYPE_MESSAGE,
        label=_T.LABEL_OPTIONAL,
        type_name=f".{package}.Sub",
    )
    resp = f.message_type.add(name="Resp")
    resp.field.add(name="ok", number=1, type=_T.TYPE_BOOL, label=_T.LABEL_OPTIONAL)
    resp.field.add(name="count", number=2, type=_T.TYPE_INT32, label=_T.LABEL_OPTIONAL)
    resp.field.add(name="oks", number=3, type=_T.TYPE_BOOL, label=_T.LABEL_REPEATED)
    method = f.service.add(name="BadService").method.add(
        name="Call",
        input_type=f".{package}.Req",
        output_type=f".{package}.Resp",
        client_streaming=client_streaming,
        server_streaming=server_streaming,
    )
    method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    if http_options is not None:
        method.options.Extensions[options_pb2.http_options].CopyFrom(http_options)
    if success_status:
        method.options.Extensions[options_pb2.http_options].success_status = success_status
    pool = descriptor_pool.Default()
    pool.Add(f)
    return pool.FindServiceByName(f"{package}.BadService")


def test_discovery_routes_come_from_the_annotations() -> None:
    table = compile_routes([discovery_pb2.DESCRIPTOR.services_by_name["DiscoveryService"]])
    got = {
        (r.method.name, r.http_method, r.binding.template.source, r.body, r.success_status)
        for r in table.routes
    }
    base = "/api/v1/service-discovery"
    annotated = [
        m
        for m in table.routes[0].method.containing_service.methods
        if m.GetOptions().HasExtension(annotations_pb2.http)
    ]
    assert len(table.routes) == len(annotated)
    assert got >= {
        ("Register", "POST", f"{base}/services", "registration", 201),
        ("Deregister", "DELETE", f"{base}/services/{{service_id}}", "", 204),
        ("UpdateHealth", "PUT", f"{base}/services/{{service_id}}/health", "update", 200),
        ("Heartbeat", "POST", f"{base}/services/{{service_id}}/heartbeat", "*", 200),
        ("Discover", "GET", f"{base}/services", "", 200),
        ("Resolve", "GET", f"{base}/services/{{service_name}}/resolve", "", 200),
        ("Watch", "GET", f"{base}/watch", "", 200),
    }
    streaming = {r.method.name for r in table.routes if r.server_streaming}
    assert streaming == {"Watch"}
    update = next(r for r in table.routes if r.method.name == "UpdateHealth")
    assert update.response_field is not None and update.response_field.name == "health"
    assert update.path_param_names == {("service_id",): "serviceId"}


def test_match_picks_by_method_and_path() -> None:
    table = compile_routes([discovery_pb2.DESCRIPTOR.services_by_name["DiscoveryService"]])
    found = table.match("GET", "/api/v1/service-discovery/services/api-gateway/resolve")
    assert found.route.method.name == "Resolve"
    assert found.path_values == {("service_name",): "api-gateway"}
    assert table.match("DELETE", "/api/v1/service-discovery/services/x").route.method.name == (
        "Deregister"
    )
    with pytest.raises(MethodNotAllowed) as caught:
        table.match("PATCH", "/api/v1/service-discovery/services")
    assert caught.value.allowed == ["GET", "POST"]
    with pytest.raises(NoRoute):
        table.match("GET", "/api/v1/service-discovery/nothing")
    with pytest.raises(NoRoute):
        table.match("GET", "/api/v1/service-discovery/services/a/b/c/d")


def test_default_selection_is_every_service_in_the_package() -> None:
    names = {s.full_name for s in select_services(None)}
    assert DISCOVERY in names
    assert names == {s.full_name for s in package_services()}


def test_missing_service_fails_loudly() -> None:
    with pytest.raises(ServiceNotFound, match=r"lucid\.nothing\.v1\.NoService"):
        select_services([DISCOVERY, "lucid.nothing.v1.NoService"])


def test_descriptors_outside_the_package_can_be_given_directly() -> None:
    services = select_services([echo_service(), DISCOVERY])
    table = compile_routes(services)
    assert table.match("GET", "/api/v1/echo/bob").route.method.name == "Echo"
    assert table.match("POST", "/api/v1/echo/bob:kitchen").route.admin_only


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (http_pb2.HttpRule(get="/v1/{nope}"), "no field 'nope'"),
        (http_pb2.HttpRule(get="/v1/{ids}"), "repeated"),
        (http_pb2.HttpRule(get="/v1/{sub}"), "scalar"),
        (http_pb2.HttpRule(post="/v1/x", body="nope"), "not a field"),
        (http_pb2.HttpRule(post="/v1/{id}", body="id"), "also bound by the path"),
        (http_pb2.HttpRule(get="/v1/x", response_body="nope"), "not a field"),
        (http_pb2.HttpRule(get="v1/x"), "must start with '/'"),
    ],
)
def test_bad_annotations_fail_at_startup(rule: http_pb2.HttpRule, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        compile_routes([one_method_service(rule)])


def test_client_streaming_and_bad_status_fail_at_startup() -> None:
    with pytest.raises(TemplateError, match="client-streaming"):
        compile_routes([one_method_service(http_pb2.HttpRule(post="/v1/s"), client_streaming=True)])
    with pytest.raises(TemplateError, match="2xx"):
        compile_routes([one_method_service(http_pb2.HttpRule(get="/v1/s"), success_status=302)])


def test_two_methods_on_one_binding_fail_at_startup() -> None:
    first = one_method_service(http_pb2.HttpRule(get="/v1/same"))
    second = one_method_service(http_pb2.HttpRule(get="/v1/same"))
    with pytest.raises(TemplateError, match="both bind GET /v1/same"):
        compile_routes([first, second])


def test_nested_path_variable_resolves_field_chain() -> None:
    service = one_method_service(http_pb2.HttpRule(get="/v1/subs/{sub.id}"))
    route = compile_routes([service]).routes[0]
    assert route.path_param_names == {("sub", "id"): "sub.id"}


def test_open_ended_templates_rank_below_more_specific_ones() -> None:
    anything = one_method_service(http_pb2.HttpRule(get="/v1/files/{id=**}"))
    special = one_method_service(http_pb2.HttpRule(get="/v1/files/special/{id}"))
    table = compile_routes([anything, special])
    hit = table.match("GET", "/v1/files/special/a")
    assert hit.route.method.containing_service is special
    deep = table.match("GET", "/v1/files/a/b/c")
    assert deep.route.method.containing_service is anything
    assert deep.path_values == {("id",): "a/b/c"}
