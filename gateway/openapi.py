"""OpenAPI 3.0.3 document generated from the same descriptors and routes the gateway serves.

Paths come from the google.api.http templates (path variables named by the fields' JSON
names). When every template starts with ``/api/v1`` (as in the seed), that prefix moves into
``servers`` and the paths read like the seed's (``/service-discovery/services``). Schemas are
one component per message, constraints come from ``(lucid.common.v1.rules)``, enums are their
wire strings, success and unhealthy statuses come from ``(lucid.common.v1.http_options)``,
security (admin-only) from ``(lucid.common.v1.policy)``. Cross-field rules
(``(lucid.common.v1.message_rules)``) are listed as ``x-lucid-rules`` on the message's schema
(and on the operation, for the request message) and described on the field they make required.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor

from gateway import codec
from gateway.routes import Route
from gateway.streaming import NDJSON
from lucid_cp.api.lucid.common.v1 import options_pb2

Schema = dict[str, Any]

TITLE = "Lucid Cross-Cluster Integration API"
DESCRIPTION = "Inter-service communication and service mesh management APIs"
API_VERSION = "1.0.0"
CONTACT = {"name": "Lucid Development Team", "email": "dev@lucid.onion"}
API_PREFIX = "/api/v1"
ERROR_SCHEMA = "ErrorResponse"
ERROR_CODE_PATTERN = "^LUCID_ERR_[0-9]{4}$"

_F = FieldDescriptor
_INT32 = {_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32}
_UINT32 = {_F.TYPE_UINT32, _F.TYPE_FIXED32}
_INT64 = {_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64}
_UINT64 = {_F.TYPE_UINT64, _F.TYPE_FIXED64}
_FORMATS = {
    options_pb2.STRING_FORMAT_UUID: "uuid",
    options_pb2.STRING_FORMAT_HOSTNAME_OR_IP: "hostname",
}
_STRUCT_KINDS: dict[int, Schema] = {
    options_pb2.STRUCT_KIND_STRING: {"type": "string"},
    options_pb2.STRUCT_KIND_STRING_LIST: {"type": "array", "items": {"type": "string"}},
    options_pb2.STRUCT_KIND_OBJECT: {"type": "object", "additionalProperties": True},
    options_pb2.STRUCT_KIND_STRING_MAP: {
        "type": "object",
        "additionalProperties": {"type": "string"},
    },
    options_pb2.STRUCT_KIND_NUMBER: {"type": "number"},
    options_pb2.STRUCT_KIND_BOOL: {"type": "boolean"},
}
_ERRORS: dict[str, tuple[str, str]] = {
    "400": ("BadRequest", "Malformed request or failed validation"),
    "401": ("Unauthorized", "Missing, invalid or expired bearer token"),
    "403": ("Forbidden", "The token may not perform this operation"),
    "404": ("NotFound", "Resource or route not found"),
    "409": ("Conflict", "Already exists, or a concurrent modification"),
    "413": ("PayloadTooLarge", "Request body larger than 1 MiB"),
    "429": ("TooManyRequests", "Rate limit exceeded; see the Retry-After header"),
    "default": ("Error", "Unexpected error (5xx), in the standard error shape"),
}
_SECURITY = {
    "ServiceAuth": "JWT token for service-to-service authentication",
    "AdminAuth": "JWT token for admin operations",
}
_QUERY_DEPTH = 4


def build_openapi(routes: Sequence[Route], services: Sequence[ServiceDescriptor]) -> dict[str, Any]:
    """The document for ``routes`` (compiled from ``services``, which name the tags)."""
    builder = _Builder(
        [r.method.input_type for r in routes] + [r.method.output_type for r in routes]
    )
    prefix = (
        API_PREFIX if all(_openapi_path(r).startswith(API_PREFIX + "/") for r in routes) else ""
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in sorted(routes, key=_openapi_path):
        path = _openapi_path(route)[len(prefix) :]
        paths.setdefault(path, {})[route.http_method.lower()] = builder.operation(route)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": TITLE,
            "description": DESCRIPTION,
            "version": API_VERSION,
            "contact": CONTACT,
        },
        "servers": [{"url": prefix or "/"}],
        "tags": [{"name": _tag(s)} for s in services],
        "paths": paths,
        "components": {
            "schemas": dict(sorted({**builder.schemas, ERROR_SCHEMA: _error_schema()}.items())),
            "responses": {
                name: {
                    "description": text,
                    "content": {"application/json": {"schema": _ref(ERROR_SCHEMA)}},
                }
                for name, text in _ERRORS.values()
            },
            "securitySchemes": {
                name: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": text,
                }
                for name, text in _SECURITY.items()
            },
        },
    }


def _openapi_path(route: Route) -> str:
    return route.binding.template.openapi_path(route.path_param_names)


def _tag(service: ServiceDescriptor) -> str:
    return _words(service.name)


def _words(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", " ", camel)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _error_schema() -> Schema:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "request_id", "timestamp"],
                "properties": {
                    "code": {"type": "string", "pattern": ERROR_CODE_PATTERN},
                    "message": {"type": "string"},
                    "details": {"type": "object", "additionalProperties": True},
                    "request_id": {"type": "string", "format": "uuid"},
                    "timestamp": {"type": "string", "format": "date-time"},
                    "service": {"type": "string"},
                    "version": {"type": "string"},
                },
            }
        },
    }


class _Builder:
    def __init__(self, roots: Iterable[Descriptor]) -> None:
        self.schemas: dict[str, Schema] = {}
        self._names = _component_names(roots)

    # ---------------------------------------------------------------- operations

    def operation(self, route: Route) -> dict[str, Any]:
        method = route.method
        service = method.containing_service
        operation: dict[str, Any] = {
            "operationId": f"{service.name}_{method.name}",
            "summary": _words(method.name),
            "tags": [_tag(service)],
            "x-grpc-method": method.full_name,
            "security": [{"AdminAuth" if route.admin_only else "ServiceAuth": []}],
        }
        parameters = self._path_parameters(route) + self._query_parameters(route)
        if parameters:
            operation["parameters"] = parameters
        rules = _message_rules(method.input_type)
        if rules:
            operation["x-lucid-rules"] = rules
        body = self._request_body(route)
        if body is not None:
            operation["requestBody"] = body
        operation["responses"] = self._responses(route)
        return operation

    def _path_parameters(self, route: Route) -> list[Schema]:
        names = route.path_param_names
        return [
            {"name": names[key], "in": "path", "required": True, "schema": self.field(chain[-1])}
            for key, chain in route.path_fields.items()
        ]

    def _query_parameters(self, route: Route) -> list[Schema]:
        if route.body == "*":
            return []
        bound = {tuple(f.number for f in chain) for chain in route.path_fields.values()}
        out: list[Schema] = []

        def walk(message: Descriptor, prefix: str, numbers: tuple[int, ...], depth: int) -> None:
            for field in message.fields:
                key = (*numbers, field.number)
                if key in bound or (depth == 0 and field is route.body_field):
                    continue
                name = f"{prefix}{field.json_name}"
                nested = field.message_type
                if nested is not None and not codec.url_settable(nested):
                    descend = not field.is_repeated and codec.url_descendable(nested)
                    if descend and depth < _QUERY_DEPTH:
                        walk(nested, f"{name}.", key, depth + 1)
                    continue
                param: Schema = {"name": name, "in": "query", "schema": self.field(field)}
                if _rules(field).required:
                    param["required"] = True
                note = _required_when(message, field)
                if note:
                    param["description"] = note
                out.append(param)

        walk(route.method.input_type, "", (), 0)
        return out

    def _request_body(self, route: Route) -> Schema | None:
        if route.body_field is not None:
            schema = self.field(route.body_field)
        elif route.body == "*":
            schema = self.message(route.method.input_type)
            path_top = {
                chain[0].json_name for chain in route.path_fields.values() if len(chain) == 1
            }
            if path_top:
                inline = dict(self.schemas[self._names[route.method.input_type.full_name]])
                inline["properties"] = {
                    k: v for k, v in inline.get("properties", {}).items() if k not in path_top
                }
                required = [r for r in inline.get("required", []) if r not in path_top]
                inline.pop("required", None)
                if required:
                    inline["required"] = required
                schema = inline
        else:
            return None
        return {
            "required": route.body_required,
            "content": {"application/json": {"schema": schema}},
        }

    def _responses(self, route: Route) -> dict[str, Any]:
        status = str(route.success_status)
        success: Schema = {"description": "Success"}
        if route.success_status != 204:
            if route.response_field is not None:
                schema = self.field(route.response_field)
            else:
                schema = self.message(route.method.output_type)
            media = NDJSON if route.server_streaming else "application/json"
            success["content"] = {media: {"schema": schema}}
            if route.server_streaming:
                success["description"] = (
                    "Newline-delimited JSON: one message per line; a final "
                    '{"error": ...} line if the stream fails'
                )
        responses: dict[str, Any] = {status: success}
        if route.healthy_field is not None:
            responses[str(route.unhealthy_status)] = self._unhealthy(route, success)
        codes = ["400", "401", "403", "404"]
        if route.http_method != "GET":
            codes.append("409")
        if route.body:
            codes.append("413")
        codes += ["429", "default"]
        for code in codes:
            responses.setdefault(code, {"$ref": f"#/components/responses/{_ERRORS[code][0]}"})
        return responses

    @staticmethod
    def _unhealthy(route: Route, success: Schema) -> Schema:
        """The status a reply reporting ill health is answered with: the success body, or the
        standard error shape when the call itself failed with that status (e.g. 503)."""
        assert route.healthy_field is not None
        [(media, content)] = success["content"].items()
        schema = {"oneOf": [content["schema"], _ref(ERROR_SCHEMA)]}
        return {
            "description": (
                f"Unhealthy: the success body with {route.healthy_field.json_name} false; or"
                " the standard error shape when the call itself fails with this status"
            ),
            "content": {media: {"schema": schema}},
        }

    # ---------------------------------------------------------------- schemas

    def message(self, descriptor: Descriptor) -> Schema:
        special = _wkt_schema(descriptor.full_name)
        if special is not None:
            return special
        name = self._names[descriptor.full_name]
        if name not in self.schemas:
            self.schemas[name] = {}  # reserve first: messages may be recursive
            properties: dict[str, Schema] = {}
            required: list[str] = []
            for field in descriptor.fields:
                properties[field.json_name] = self.field(field)
                note = _required_when(descriptor, field)
                if note:
                    properties[field.json_name] = {
                        **properties[field.json_name],
                        "description": note,
                    }
                if _rules(field).required:
                    required.append(field.json_name)
            schema: Schema = {"type": "object"}
            if required:
                schema["required"] = required
            schema["properties"] = properties
            schema["additionalProperties"] = False
            rules = _message_rules(descriptor)
            if rules:
                schema["x-lucid-rules"] = rules
            self.schemas[name] = schema
        return _ref(name)

    def field(self, field: FieldDescriptor) -> Schema:
        rules = _rules(field)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._single(value, _rules(value))}
        item = self._single(field, rules)
        if not field.is_repeated:
            return _with_default(item, field, rules)
        schema: Schema = {"type": "array", "items": item}
        if rules.HasField("min_items"):
            schema["minItems"] = rules.min_items
        if rules.HasField("max_items"):
            schema["maxItems"] = rules.max_items
        return _with_default(schema, field, rules)

    def _single(self, field: FieldDescriptor, rules: options_pb2.FieldRules) -> Schema:
        kind = field.type
        if kind == _F.TYPE_MESSAGE:
            schema = self.message(codec.message_type(field))
            if codec.message_type(field).full_name == codec.STRUCT and rules.struct_properties:
                schema = dict(schema)
                schema["properties"] = {
                    p.name: _struct_property(p) for p in rules.struct_properties
                }
            return schema
        if kind == _F.TYPE_ENUM:
            return {"type": "string", "enum": codec.enum_wire(codec.enum_type(field)).strings}
        if kind == _F.TYPE_STRING:
            schema = _string_schema(rules)
            if rules.required and _admits_empty(schema, rules):
                schema["minLength"] = 1  # a required string is refused when empty
            if field.is_repeated or field.has_presence or rules.required:
                return schema
            return _allow_empty(schema, rules)
        if kind == _F.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == _F.TYPE_BYTES:
            return {"type": "string", "format": "byte"}
        if kind in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
            schema = {"type": "number", "format": "double" if kind == _F.TYPE_DOUBLE else "float"}
            return _bounds(schema, rules, None, None)
        if kind in _INT32:
            return _bounds({"type": "integer", "format": "int32"}, rules, -(2**31), 2**31 - 1)
        if kind in _UINT32:
            return _bounds({"type": "integer", "format": "int64"}, rules, 0, 2**32 - 1)
        if kind in _INT64:
            return _bounds({"type": "integer", "format": "int64"}, rules, -(2**63), 2**63 - 1)
        return _bounds({"type": "integer", "format": "int64"}, rules, 0, 2**64 - 1)


def _rules(field: FieldDescriptor) -> options_pb2.FieldRules:
    return field.GetOptions().Extensions[options_pb2.rules]


def _message_rules(descriptor: Descriptor) -> list[Schema]:
    """The message's cross-field rules, in JSON names and wire strings:
    ``{"when": {"field": "loadBalance", "equals": "consistent-hash"}, "require": "hashKey"}``."""
    out: list[Schema] = []
    for rule in descriptor.GetOptions().Extensions[options_pb2.message_rules]:
        when = descriptor.fields_by_name[rule.when_field]
        require = descriptor.fields_by_name[rule.require]
        equals: Any = rule.when_equals
        if when.type == _F.TYPE_ENUM:
            number = codec.enum_type(when).values_by_name[rule.when_equals].number
            equals = codec.enum_wire(codec.enum_type(when)).encode(number)
        out.append(
            {"when": {"field": when.json_name, "equals": equals}, "require": require.json_name}
        )
    return out


def _required_when(descriptor: Descriptor, field: FieldDescriptor) -> str:
    """ "Required when loadBalance is consistent-hash." for a field a message rule requires."""
    notes = [
        f"{r['when']['field']} is {r['when']['equals']}"
        for r in _message_rules(descriptor)
        if r["require"] == field.json_name
    ]
    return f"Required when {' or '.join(notes)}." if notes else ""


def _string_schema(rules: options_pb2.FieldRules) -> Schema:
    schema: Schema = {"type": "string"}
    if rules.format in _FORMATS:
        schema["format"] = _FORMATS[rules.format]
    if rules.pattern:
        schema["pattern"] = _anchored(rules.pattern)
    if rules.HasField("min_len"):
        schema["minLength"] = rules.min_len
    if rules.HasField("max_len"):
        schema["maxLength"] = rules.max_len
    return schema


def _admits_empty(schema: Schema, rules: options_pb2.FieldRules) -> bool:
    """Whether ``schema`` lets "" through (no minimum length, format or pattern excludes it)."""
    return (
        schema.get("minLength", 0) < 1
        and "format" not in schema
        and (not rules.pattern or re.fullmatch(rules.pattern, "") is not None)
    )


def _allow_empty(schema: Schema, rules: options_pb2.FieldRules) -> Schema:
    """A proto3 string without presence: "" is the same as absent, so the document allows it
    even where the field's constraints (which apply to a value that is set) would not."""
    if rules.pattern and not re.fullmatch(rules.pattern, ""):
        inner = _anchored(rules.pattern)[1:-1]
        schema = {**schema, "pattern": f"^(?:{inner})?$"}
    if schema.get("minLength", 0) > 0 or "format" in schema:
        return {"anyOf": [{"type": "string", "maxLength": 0}, schema]}
    return schema


def _anchored(pattern: str) -> str:
    """FieldRules patterns use full-match semantics; OpenAPI (ECMA 262) patterns search."""
    if pattern.startswith("^") and pattern.endswith("$"):
        return pattern
    return f"^(?:{pattern})$"


def _bounds(
    schema: Schema, rules: options_pb2.FieldRules, low: int | None, high: int | None
) -> Schema:
    integral = schema["type"] == "integer"
    if rules.HasField("minimum"):
        schema["minimum"] = int(rules.minimum) if integral else rules.minimum
    elif low is not None:
        schema["minimum"] = low
    if rules.HasField("maximum"):
        schema["maximum"] = int(rules.maximum) if integral else rules.maximum
    elif high is not None:
        schema["maximum"] = high
    return schema


def _with_default(schema: Schema, field: FieldDescriptor, rules: options_pb2.FieldRules) -> Schema:
    if not rules.default_json:
        return schema
    default = json.loads(rules.default_json)
    if field.type == _F.TYPE_ENUM:
        default = _enum_default(field, default)
    if "$ref" in schema:
        return {"allOf": [schema], "default": default}
    return {**schema, "default": default}


def _enum_default(field: FieldDescriptor, default: Any) -> Any:
    """default_json names enum values by their proto names; REST uses the wire strings."""
    wire = codec.enum_wire(codec.enum_type(field))
    by_name = {v.name: wire.encode(v.number) for v in codec.enum_type(field).values}
    if isinstance(default, list):
        return [by_name.get(v, v) for v in default]
    return by_name.get(default, default)


def _struct_property(prop: options_pb2.StructProperty) -> Schema:
    schema = dict(_STRUCT_KINDS.get(prop.kind, {}))
    if prop.HasField("max_len") and schema.get("type") == "string":
        schema["maxLength"] = prop.max_len
    return schema


def _wkt_schema(name: str) -> Schema | None:
    if name == codec.TIMESTAMP:
        return {"type": "string", "format": "date-time"}
    if name == codec.DURATION:
        return {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"}
    if name == codec.FIELD_MASK:
        return {"type": "string"}
    if name == codec.STRUCT:
        return {"type": "object", "additionalProperties": True}
    if name == codec.VALUE:
        return {"nullable": True}
    if name == codec.LIST_VALUE:
        return {"type": "array", "items": {}}
    if name == codec.ANY:
        return {
            "type": "object",
            "properties": {"@type": {"type": "string"}},
            "additionalProperties": True,
        }
    if name == codec.EMPTY:
        return {"type": "object", "additionalProperties": False}
    if name in codec.WRAPPERS:
        scalar = name.removeprefix("google.protobuf.").removesuffix("Value")
        return {**_WRAPPER_SCHEMAS[scalar], "nullable": True}
    return None


_WRAPPER_SCHEMAS: dict[str, Schema] = {
    "Double": {"type": "number", "format": "double"},
    "Float": {"type": "number", "format": "float"},
    "Int64": {"type": "integer", "format": "int64"},
    "UInt64": {"type": "integer", "format": "int64", "minimum": 0},
    "Int32": {"type": "integer", "format": "int32"},
    "UInt32": {"type": "integer", "format": "int64", "minimum": 0},
    "Bool": {"type": "boolean"},
    "String": {"type": "string"},
    "Bytes": {"type": "string", "format": "byte"},
}


def _component_names(roots: Iterable[Descriptor]) -> dict[str, str]:
    """Component name per message: its short name, or the dotted full name when two differ."""
    seen: dict[str, Descriptor] = {}
    stack = list(roots)
    while stack:
        message = stack.pop()
        if message.full_name in seen:
            continue
        seen[message.full_name] = message
        stack.extend(f.message_type for f in message.fields if f.message_type is not None)
    short: dict[str, list[str]] = {}
    for full in seen:
        short.setdefault(full.rsplit(".", 1)[-1], []).append(full)
    names: dict[str, str] = {}
    for name, fulls in short.items():
        for full in fulls:
            names[full] = name if len(fulls) == 1 else full.replace(".", "_")
    return names
