"""A service that is not part of the generated package, built from a FileDescriptorProto at test
time: proves the gateway needs no change for a new annotated RPC, and exercises field types
the discovery protos do not use (float, uint64, bytes, maps with int/bool keys, oneof, wrappers,
Duration, Value)."""

from __future__ import annotations

from functools import cache
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from lucid_cp.api.lucid.common.v1 import options_pb2
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2

PACKAGE = "lucid.gwtest.v1"
SERVICE = f"{PACKAGE}.EchoService"
_T = descriptor_pb2.FieldDescriptorProto
# Importing these modules loads the files echo.proto depends on into the default pool.
DEPENDENCIES = (
    annotations_pb2,
    options_pb2,
    discovery_pb2,
    duration_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    *,
    type_name: str = "",
    repeated: bool = False,
    oneof: int | None = None,
    rules: options_pb2.FieldRules | None = None,
) -> None:
    field = message.field.add(name=name, number=number, type=kind)  # type: ignore[arg-type]
    field.label = _T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL
    if type_name:
        field.type_name = type_name
    if oneof is not None:
        field.oneof_index = oneof
    if rules is not None:
        field.options.Extensions[options_pb2.rules].CopyFrom(rules)


def _map_entry(
    parent: descriptor_pb2.DescriptorProto, name: str, key_type: int, value_type: int
) -> str:
    entry = parent.nested_type.add(name=name)
    entry.options.map_entry = True
    _field(entry, "key", 1, key_type)
    _field(entry, "value", 2, value_type)
    return f".{PACKAGE}.{parent.name}.{name}"


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name="lucid/gwtest/v1/echo.proto", package=PACKAGE)
    f.syntax = "proto3"
    f.dependency.extend(
        [
            "google/api/annotations.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/timestamp.proto",
            "google/protobuf/wrappers.proto",
            "lucid/common/v1/options.proto",
            "lucid/discovery/v1/discovery.proto",
        ]
    )
    kitchen = f.message_type.add(name="Kitchen")
    nested = kitchen.nested_type.add(name="Nested")
    _field(nested, "name", 1, _T.TYPE_STRING)
    _field(nested, "level", 2, _T.TYPE_INT32)
    by_num = _map_entry(kitchen, "ByNumEntry", _T.TYPE_INT32, _T.TYPE_STRING)
    by_flag = _map_entry(kitchen, "ByFlagEntry", _T.TYPE_BOOL, _T.TYPE_STRING)
    kitchen.oneof_decl.add(name="choice")
    _field(kitchen, "f32", 1, _T.TYPE_FLOAT)
    _field(kitchen, "f64", 2, _T.TYPE_DOUBLE)
    _field(kitchen, "u64", 3, _T.TYPE_UINT64)
    _field(kitchen, "s32", 4, _T.TYPE_SINT32)
    _field(kitchen, "data", 5, _T.TYPE_BYTES)
    _field(kitchen, "by_num", 6, _T.TYPE_MESSAGE, type_name=by_num, repeated=True)
    _field(kitchen, "by_flag", 7, _T.TYPE_MESSAGE, type_name=by_flag, repeated=True)
    _field(kitchen, "a", 8, _T.TYPE_STRING, oneof=0)
    _field(kitchen, "b", 9, _T.TYPE_INT32, oneof=0)
    _field(kitchen, "wrapped", 10, _T.TYPE_MESSAGE, type_name=".google.protobuf.Int64Value")
    _field(kitchen, "wait", 11, _T.TYPE_MESSAGE, type_name=".google.protobuf.Duration")
    _field(
        kitchen, "planes", 12, _T.TYPE_ENUM, type_name=".lucid.discovery.v1.Plane", repeated=True
    )
    _field(kitchen, "nested", 13, _T.TYPE_MESSAGE, type_name=f".{PACKAGE}.Kitchen.Nested")
    _field(kitchen, "at", 14, _T.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp")
    _field(kitchen, "any_value", 15, _T.TYPE_MESSAGE, type_name=".google.protobuf.Value")
    _field(
        kitchen, "items", 16, _T.TYPE_MESSAGE, type_name=f".{PACKAGE}.Kitchen.Nested", repeated=True
    )
    _field(kitchen, "flag", 17, _T.TYPE_MESSAGE, type_name=".google.protobuf.BoolValue")

    for name in ("EchoRequest", "EchoResponse"):
        message = f.message_type.add(name=name)
        _field(message, "name", 1, _T.TYPE_STRING)
        _field(message, "kitchen", 2, _T.TYPE_MESSAGE, type_name=f".{PACKAGE}.Kitchen")
        _field(
            message, "count", 3, _T.TYPE_INT32, rules=options_pb2.FieldRules(minimum=0, maximum=9)
        )
        _field(message, "tags", 4, _T.TYPE_STRING, repeated=True)

    service = f.service.add(name="EchoService")
    echo = service.method.add(
        name="Echo", input_type=f".{PACKAGE}.EchoRequest", output_type=f".{PACKAGE}.EchoResponse"
    )
    echo.options.Extensions[annotations_pb2.http].CopyFrom(
        http_pb2.HttpRule(get="/api/v1/echo/{name}")
    )
    echo.options.Extensions[options_pb2.http_options].CopyFrom(
        options_pb2.HttpOptions(success_status=202)
    )
    echo.options.Extensions[options_pb2.policy].CopyFrom(
        options_pb2.MethodPolicy(rate_limit_bucket="echo")
    )
    body = service.method.add(
        name="EchoKitchen",
        input_type=f".{PACKAGE}.EchoRequest",
        output_type=f".{PACKAGE}.EchoResponse",
    )
    body.options.Extensions[annotations_pb2.http].CopyFrom(
        http_pb2.HttpRule(
            post="/api/v1/echo/{name}:kitchen", body="kitchen", response_body="kitchen"
        )
    )
    body.options.Extensions[options_pb2.policy].CopyFrom(
        options_pb2.MethodPolicy(rate_limit_bucket="echo", admin_only=True)
    )
    return f


@cache
def echo_service() -> ServiceDescriptor:
    """The EchoService descriptor, added once to the default pool."""
    pool = descriptor_pool.Default()
    pool.Add(_file())
    return pool.FindServiceByName(SERVICE)


def message_class(name: str) -> Any:
    descriptor: Descriptor = echo_service().file.pool.FindMessageTypeByName(f"{PACKAGE}.{name}")
    return GetMessageClass(descriptor)
