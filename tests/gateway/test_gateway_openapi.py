"""The generated OpenAPI document: valid OpenAPI 3.0.3, and the seed's discovery surface."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from gw_dynamic_proto import echo_service
from openapi_spec_validator import validate

from gateway.openapi import build_openapi
from gateway.routes import compile_routes
from gateway.services import package_services, select_services

# The seed's service-discovery operations (api-spec.md), with paths relative to /api/v1.
SEED_OPERATIONS = {
    ("post", "/service-discovery/services"),
    ("delete", "/service-discovery/services/{serviceId}"),
    ("put", "/service-discovery/services/{serviceId}/health"),
    ("get", "/service-discovery/services"),
    ("get", "/service-discovery/services/{serviceName}/resolve"),
}
SEED_SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "api-spec.md"


def document(services: Any = None) -> dict[str, Any]:
    selected = select_services(services)
    return build_openapi(compile_routes(selected).routes, selected)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document()


def operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return dict(doc["paths"][path][method])


def schema(doc: dict[str, Any], ref_or_name: str | dict[str, Any]) -> dict[str, Any]:
    name = ref_or_name if isinstance(ref_or_name, str) else ref_or_name["$ref"].rsplit("/", 1)[1]
    return dict(doc["components"]["schemas"][name])


def params(op: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in op.get("parameters", [])}


def test_document_is_valid_openapi_3(doc: dict[str, Any]) -> None:
    validate(doc)
    assert doc["openapi"] == "3.0.3"
    assert doc["info"]["title"] == "Lucid Cross-Cluster Integration API"
    assert doc["info"]["version"] == "1.0.0"
    assert doc["servers"] == [{"url": "/api/v1"}]


def test_every_seed_discovery_operation_is_documented(doc: dict[str, Any]) -> None:
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert SEED_OPERATIONS <= documented


@pytest.mark.skipif(not SEED_SPEC.exists(), reason="shared/spec/api-spec.md is not beside the repo")
def test_seed_spec_file_agrees_with_the_constant(doc: dict[str, Any]) -> None:
    text = SEED_SPEC.read_text()
    seed: set[tuple[str, str]] = set()
    for block in re.findall(r"```yaml\n(/service-discovery[^\n]*):\n  (\w+):", text):
        seed.add((block[1], block[0]))
    assert seed == SEED_OPERATIONS
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert seed <= documented


def test_every_routed_method_is_documented(doc: dict[str, Any]) -> None:
    routes = compile_routes(package_services()).routes
    ids = {op["operationId"] for ops in doc["paths"].values() for op in ops.values()}
    assert ids == {f"{r.method.containing_service.name}_{r.method.name}" for r in routes}


def test_success_statuses_come_from_http_options(doc: dict[str, Any]) -> None:
    register = operation(doc, "post", "/service-discovery/services")
    assert "201" in register["responses"] and "200" not in register["responses"]
    created = register["responses"]["201"]["content"]["application/json"]["schema"]
    assert created == {"$ref": "#/components/schemas/RegisterResponse"}
    deregister = operation(doc, "delete", "/service-discovery/services/{serviceId}")
    assert deregister["responses"]["204"] == {"description": "Success"}
    health = operation(doc, "put", "/service-discovery/services/{serviceId}/health")
    body = health["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/HealthUpdate"}
    ok = health["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/HealthStatus"}  # response_body: "health"


def test_errors_reference_the_error_response(doc: dict[str, Any]) -> None:
    register = operation(doc, "post", "/service-discovery/services")
    for code in ("400", "401", "403", "409", "413", "429", "default"):
        assert register["responses"][code]["$ref"].startswith("#/components/responses/")
    for response in doc["components"]["responses"].values():
        assert response["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    error = schema(doc, "ErrorResponse")["properties"]["error"]
    assert error["required"] == ["code", "message", "request_id", "timestamp"]
    assert error["properties"]["code"]["pattern"] == "^LUCID_ERR_[0-9]{4}$"
    assert error["properties"]["request_id"]["format"] == "uuid"


def test_discover_query_parameters_match_the_seed(doc: dict[str, Any]) -> None:
    query = params(operation(doc, "get", "/service-discovery/services"))
    assert {"cluster", "plane", "status", "limit", "offset"} <= set(query)
    assert all(p["in"] == "query" for p in query.values())
    assert query["cluster"]["schema"]["enum"] == [
        "api-gateway",
        "blockchain-core",
        "session-management",
        "rdp-services",
        "node-management",
        "admin-interface",
        "tron-payment",
        "storage-database",
        "authentication",
    ]
    assert query["plane"]["schema"]["enum"] == ["ops", "chain", "wallet"]
    assert {"healthy", "unhealthy", "unknown"} <= set(query["status"]["schema"]["enum"])
    limit = query["limit"]["schema"]
    assert (limit["type"], limit["minimum"], limit["maximum"], limit["default"]) == (
        "integer",
        1,
        1000,
        100,
    )
    offset = query["offset"]["schema"]
    assert (offset["minimum"], offset["default"]) == (0, 0)


def test_resolve_parameters_and_enum_default_as_wire_string(doc: dict[str, Any]) -> None:
    resolve = params(operation(doc, "get", "/service-discovery/services/{serviceName}/resolve"))
    name = resolve["serviceName"]
    assert name["in"] == "path" and name["required"] is True
    assert name["schema"]["pattern"] == "^[a-z0-9-]+$"
    balance = resolve["loadBalance"]["schema"]
    assert balance["default"] == "round-robin"
    assert {"round-robin", "least-connections", "random"} <= set(balance["enum"])
    assert "version" in resolve


def test_path_ids_are_uuids(doc: dict[str, Any]) -> None:
    deregister = params(operation(doc, "delete", "/service-discovery/services/{serviceId}"))
    assert deregister["serviceId"]["schema"] == {"type": "string", "format": "uuid"}


def test_registration_schema_carries_field_rules(doc: dict[str, Any]) -> None:
    reg = schema(doc, "ServiceRegistration")
    assert reg["required"] == [
        "serviceId",
        "serviceName",
        "cluster",
        "plane",
        "endpoint",
        "version",
        "healthCheck",
    ]
    props = reg["properties"]
    assert props["serviceId"] == {"type": "string", "format": "uuid"}
    assert props["serviceName"] == {
        "type": "string",
        "pattern": "^[a-z0-9-]+$",
        "minLength": 3,
        "maxLength": 50,
    }
    assert props["ttl"]["minimum"] == 30 and props["ttl"]["maximum"] == 3600
    assert props["ttl"]["default"] == 300
    assert props["registrationTime"] == {"type": "string", "format": "date-time"}
    metadata = props["metadata"]
    assert metadata["additionalProperties"] is True
    assert metadata["properties"]["description"] == {"type": "string", "maxLength": 500}
    assert metadata["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    endpoint = schema(doc, props["endpoint"])
    assert endpoint["required"] == ["host", "port", "protocol"]
    assert endpoint["properties"]["host"]["format"] == "hostname"
    assert (
        endpoint["properties"]["port"]["minimum"],
        endpoint["properties"]["port"]["maximum"],
    ) == (1, 65535)
    assert endpoint["properties"]["protocol"]["enum"] == ["http", "https", "grpc", "grpcs"]


def test_repeated_and_enum_defaults(doc: dict[str, Any]) -> None:
    check = schema(doc, "HttpCheck")["properties"]
    assert check["method"]["default"] == "GET"
    assert check["expectedStatus"] == {
        "type": "array",
        "items": {"type": "integer", "format": "int32", "minimum": 100, "maximum": 599},
        "maxItems": 50,
        "default": [200],
    }
    assert check["headers"] == {"type": "object", "additionalProperties": {"type": "string"}}


def test_int64_fields_are_integers(doc: dict[str, Any]) -> None:
    revision = schema(doc, "RegisterResponse")["properties"]["revision"]
    assert revision["type"] == "integer" and revision["format"] == "int64"


def test_security_schemes_and_admin_only_methods() -> None:
    doc = document([echo_service(), "lucid.discovery.v1.DiscoveryService"])
    validate(doc)
    schemes = doc["components"]["securitySchemes"]
    for name in ("ServiceAuth", "AdminAuth"):
        assert schemes[name]["type"] == "http" and schemes[name]["scheme"] == "bearer"
        assert schemes[name]["bearerFormat"] == "JWT"
    assert operation(doc, "post", "/service-discovery/services")["security"] == [
        {"ServiceAuth": []}
    ]
    kitchen = operation(doc, "post", "/echo/{name}:kitchen")
    assert kitchen["security"] == [{"AdminAuth": []}]


def test_new_service_appears_with_its_query_parameters_and_status() -> None:
    doc = document([echo_service(), "lucid.discovery.v1.DiscoveryService"])
    echo = operation(doc, "get", "/echo/{name}")
    assert "202" in echo["responses"]
    query = params(echo)
    assert query["count"]["schema"]["minimum"] == 0 and query["count"]["schema"]["maximum"] == 9
    assert query["tags"]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert "kitchen.nested.name" in query and "kitchen.at" in query
    assert query["kitchen.planes"]["schema"]["items"]["enum"] == ["ops", "chain", "wallet"]
    assert "kitchen.byNum" not in query and "kitchen.items" not in query  # maps/messages lists


def test_body_star_with_path_fields_leaves_them_out_of_the_body(doc: dict[str, Any]) -> None:
    heartbeat = operation(doc, "post", "/service-discovery/services/{serviceId}/heartbeat")
    body = heartbeat["requestBody"]["content"]["application/json"]["schema"]
    assert "serviceId" not in body["properties"] and "activeConnections" in body["properties"]
    assert "required" not in body
    assert "parameters" in heartbeat and not [
        p for p in heartbeat["parameters"] if p["in"] == "query"
    ]


def test_streaming_method_is_ndjson(doc: dict[str, Any]) -> None:
    watch = operation(doc, "get", "/service-discovery/watch")
    content = watch["responses"]["200"]["content"]
    assert list(content) == ["application/x-ndjson"]
    assert content["application/x-ndjson"]["schema"] == {
        "$ref": "#/components/schemas/WatchResponse"
    }


def test_optional_patterned_strings_allow_empty(doc: dict[str, Any]) -> None:
    props = schema(doc, "ServiceRegistration")["properties"]
    assert props["instanceId"]["pattern"] == "^(?:[a-z0-9-]+)?$"
    assert re.fullmatch(props["instanceId"]["pattern"], "")
