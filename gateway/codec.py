"""JSON <-> protobuf, walking the descriptors: the one place that defines the REST JSON.

It is the proto3 JSON mapping with the project's REST conventions:

* field names are the fields' ``json_name`` (lowerCamelCase); the proto name is accepted too;
* enum values are their ``(lucid.common.v1.wire)`` strings in both directions (enums without
  any wire option use the proto value name); unknown strings are rejected; a zero (unspecified)
  enum is never emitted;
* 64-bit integers are JSON numbers on output; numbers and decimal strings are accepted;
* Timestamp is RFC 3339, Struct/Value/ListValue are free-form JSON, wrappers are their value;
* output emits numbers and booleans even when zero, repeated fields and maps even when empty,
  and omits empty strings/bytes, zero enums, unset messages and unset ``optional`` fields;
* a field named twice (by either name), a repeated object or map key, and strings with unpaired
  surrogates (``"\\ud800"``, not encodable as UTF-8) are errors naming the field;
* unknown fields, wrong JSON types and ``null`` (except for google.protobuf.Value and wrapper
  fields, where the OpenAPI document allows it) are errors (CodecError names the field path).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from collections.abc import Callable
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from lucid_cp.api.lucid.common.v1 import options_pb2

JSON = Any  # a value json.loads produces / json.dumps accepts

_F = FieldDescriptor
_INT_RANGES: dict[int, tuple[int, int]] = {
    _F.TYPE_INT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _F.TYPE_UINT32: (0, 2**32 - 1),
    _F.TYPE_FIXED32: (0, 2**32 - 1),
    _F.TYPE_INT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _F.TYPE_UINT64: (0, 2**64 - 1),
    _F.TYPE_FIXED64: (0, 2**64 - 1),
}
_INT_TEXT = re.compile(r"-?[0-9]+")
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
FIELD_MASK = "google.protobuf.FieldMask"
STRUCT = "google.protobuf.Struct"
VALUE = "google.protobuf.Value"
LIST_VALUE = "google.protobuf.ListValue"
ANY = "google.protobuf.Any"
EMPTY = "google.protobuf.Empty"
WRAPPERS = frozenset(
    f"google.protobuf.{n}Value"
    for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
# Well-known types whose JSON form is a single string (settable from a query parameter).
STRING_FORMED = frozenset({TIMESTAMP, DURATION, FIELD_MASK})


def message_type(field: FieldDescriptor) -> Descriptor:
    """The message type of a message (or map) field."""
    message = field.message_type
    if message is None:
        raise TypeError(f"{field.full_name} is not a message field")
    return message


def enum_type(field: FieldDescriptor) -> EnumDescriptor:
    enum = field.enum_type
    if enum is None:
        raise TypeError(f"{field.full_name} is not an enum field")
    return enum


def descriptor_of(message: Message) -> Descriptor:
    return cast(Descriptor, message.DESCRIPTOR)


def url_settable(message: Descriptor) -> bool:
    """Well-known types a single path/query value can set (their JSON form is a string/scalar)."""
    return message.full_name in STRING_FORMED or message.full_name in WRAPPERS


def url_descendable(message: Descriptor) -> bool:
    """Messages whose fields the URL may address with dotted names (not well-known types)."""
    return not message.full_name.startswith("google.protobuf.")


class CodecError(ValueError):
    """A JSON value that does not fit the message; ``field`` is the JSON path.

    The request is malformed (wrong type, unknown field, ...); ``invalid`` marks a well-formed
    value the configuration does not allow (an unknown enum string), which the server reports
    as its own invalid-request error."""

    invalid = False

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field or '(body)'}: {description}")
        self.field = field
        self.description = description


class InvalidValue(CodecError):
    """A value of the right JSON type that names no allowed value (an unknown enum string)."""

    invalid = True


class DuplicateKeys(dict[str, Any]):
    """A JSON object in which a key occurs more than once (see ``transcode.parse_json_body``):
    ``duplicate`` is the first repeated key. Decoding it anywhere is an error naming that key."""

    __slots__ = ("duplicate",)

    def __init__(self, pairs: list[tuple[str, Any]], duplicate: str) -> None:
        super().__init__(pairs)
        self.duplicate = duplicate


def object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` object hook: a plain dict, or DuplicateKeys when a key repeats."""
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return DuplicateKeys(pairs, key)
        seen.add(key)
    raise AssertionError("unreachable")  # pragma: no cover


def _object(value: JSON, path: str) -> dict[str, Any]:
    """``value`` as a JSON object without repeated keys, or CodecError."""
    if not isinstance(value, dict):
        raise CodecError(path, "expected a JSON object")
    if isinstance(value, DuplicateKeys):
        raise CodecError(_join(path, value.duplicate), "key given more than once")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(value: str, path: str) -> str:
    """A string that can be encoded as UTF-8 (JSON's \\uD800 escapes can make one that cannot)."""
    if not value.isascii() and _SURROGATE.search(value):
        raise CodecError(path, "invalid Unicode: unpaired surrogate")
    return value


# --------------------------------------------------------------------------------------------
# Enums


class EnumWire:
    """An enum's REST strings: the wire option of each value (or its proto name)."""

    def __init__(self, enum: EnumDescriptor) -> None:
        wires = {
            v.number: v.GetOptions().Extensions[options_pb2.wire]
            for v in enum.values
            if v.GetOptions().HasExtension(options_pb2.wire)
        }
        self.uses_wire = bool(wires)
        if self.uses_wire:
            self.to_wire = wires
        else:
            self.to_wire = {v.number: v.name for v in enum.values if v.number != 0}
        self.from_wire = {s: n for n, s in self.to_wire.items()}
        self.names = {v.number: v.name for v in enum.values}
        self.strings = list(self.to_wire.values())

    def encode(self, number: int) -> JSON:
        wire = self.to_wire.get(number)
        if wire is not None:
            return wire
        return self.names.get(number, number)

    def decode(self, value: JSON, path: str) -> int:
        if isinstance(value, str):
            number = self.from_wire.get(value)
            if number is not None:
                return number
        raise InvalidValue(path, f"must be one of: {', '.join(self.strings)}")


_ENUMS: dict[str, EnumWire] = {}


def enum_wire(enum: EnumDescriptor) -> EnumWire:
    wire = _ENUMS.get(enum.full_name)
    if wire is None:
        wire = _ENUMS[enum.full_name] = EnumWire(enum)
    return wire


# --------------------------------------------------------------------------------------------
# Encoding


def encode_message(message: Message) -> dict[str, JSON]:
    """The REST JSON object of ``message`` (see the module docstring for the rules)."""
    encoded = _encode(message)
    if not isinstance(encoded, dict):
        raise TypeError(f"{message.DESCRIPTOR.full_name} does not encode to a JSON object")
    return encoded


def encode_field(message: Message, field: FieldDescriptor) -> JSON:
    """The REST JSON of one field of ``message`` (for google.api.http response_body)."""
    return _field_encoder(field)(getattr(message, field.name))


def _encode(message: Message) -> JSON:
    descriptor = descriptor_of(message)
    special = _WKT_ENCODERS.get(descriptor.full_name)
    if special is not None:
        return special(message)
    out: dict[str, JSON] = {}
    for field, json_name, encode, emit in _plan(descriptor):
        if emit is _EMIT_IF_PRESENT:
            if not message.HasField(field.name):
                continue
            value = getattr(message, field.name)
            if field.type == _F.TYPE_ENUM and value == 0:
                continue
        else:
            value = getattr(message, field.name)
            if emit is _EMIT_IF_TRUTHY and not value:
                continue
        out[json_name] = encode(value)
    return out


_EMIT_ALWAYS = "always"
_EMIT_IF_PRESENT = "present"
_EMIT_IF_TRUTHY = "truthy"
_Plan = list[tuple[FieldDescriptor, str, Callable[[Any], JSON], str]]
_PLANS: dict[str, _Plan] = {}


def _plan(descriptor: Descriptor) -> _Plan:
    plan = _PLANS.get(descriptor.full_name)
    if plan is None:
        plan = []
        for field in descriptor.fields:
            if field.is_repeated:
                emit = _EMIT_ALWAYS
            elif field.has_presence:
                emit = _EMIT_IF_PRESENT
            elif field.type in (_F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_ENUM):
                emit = _EMIT_IF_TRUTHY
            else:
                emit = _EMIT_ALWAYS
            plan.append((field, field.json_name, _field_encoder(field), emit))
        _PLANS[descriptor.full_name] = plan
    return plan


def _field_encoder(field: FieldDescriptor) -> Callable[[Any], JSON]:
    if _is_map(field):
        key_field = message_type(field).fields_by_name["key"]
        value_encode = _value_encoder(message_type(field).fields_by_name["value"])
        key_encode = _map_key_text if key_field.type != _F.TYPE_BOOL else _bool_text
        return lambda m: {key_encode(k): value_encode(v) for k, v in m.items()}
    single = _value_encoder(field)
    if field.is_repeated:
        return lambda values: [single(v) for v in values]
    return single


def _value_encoder(field: FieldDescriptor) -> Callable[[Any], JSON]:
    kind = field.type
    if kind == _F.TYPE_MESSAGE:
        return _encode
    if kind == _F.TYPE_ENUM:
        return enum_wire(enum_type(field)).encode
    if kind == _F.TYPE_DOUBLE:
        return _encode_double
    if kind == _F.TYPE_FLOAT:
        return _encode_float
    if kind == _F.TYPE_BYTES:
        return lambda b: base64.b64encode(b).decode("ascii")
    return _identity


def _identity(value: JSON) -> JSON:
    return value


def _map_key_text(key: object) -> str:
    return str(key)


def _bool_text(key: object) -> str:
    return "true" if key else "false"


def _encode_double(value: float) -> JSON:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _encode_float(value: float) -> JSON:
    if not math.isfinite(value):
        return _encode_double(value)
    # The shortest decimal that reads back as the same 32-bit float.
    for precision in range(6, 10):
        shorter = float(f"{value:.{precision}g}")
        if struct.unpack("<f", struct.pack("<f", shorter))[0] == value:
            return shorter
    return value


def _encode_number_value(value: float) -> JSON:
    if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return _encode_double(value)


def _encode_value(message: Any) -> JSON:
    kind = message.WhichOneof("kind")
    if kind == "struct_value":
        return _encode_struct(message.struct_value)
    if kind == "list_value":
        return _encode_list(message.list_value)
    if kind == "number_value":
        return _encode_number_value(message.number_value)
    if kind == "string_value":
        return message.string_value
    if kind == "bool_value":
        return message.bool_value
    return None


def _encode_struct(message: Any) -> JSON:
    return {k: _encode_value(v) for k, v in message.fields.items()}


def _encode_list(message: Any) -> JSON:
    return [_encode_value(v) for v in message.values]


def _encode_wrapper(message: Any) -> JSON:
    field = message.DESCRIPTOR.fields_by_name["value"]
    return _value_encoder(field)(message.value)


def _encode_via_json_format(message: Message) -> JSON:
    return json_format.MessageToDict(message, preserving_proto_field_name=False)


_WKT_ENCODERS: dict[str, Callable[[Any], JSON]] = {
    TIMESTAMP: lambda m: m.ToJsonString(),
    DURATION: lambda m: m.ToJsonString(),
    FIELD_MASK: lambda m: m.ToJsonString(),
    STRUCT: _encode_struct,
    VALUE: _encode_value,
    LIST_VALUE: _encode_list,
    ANY: _encode_via_json_format,
    EMPTY: lambda m: {},
    **{name: _encode_wrapper for name in WRAPPERS},
}


# --------------------------------------------------------------------------------------------
# Decoding


def decode_message(value: JSON, message: Message, path: str = "") -> None:
    """Merges the REST JSON ``value`` into ``message``; raises CodecError on any mismatch."""
    special = _WKT_DECODERS.get(message.DESCRIPTOR.full_name)
    if special is not None:
        special(value, message, path)
        return
    fields = fields_by_any_name(descriptor_of(message))
    oneofs_set: dict[str, str] = {}
    given: dict[int, str] = {}
    for key, item in _object(value, path).items():
        field = fields.get(key)
        sub = _join(path, _text(key, path))
        if field is None:
            raise CodecError(sub, "unknown field")
        if field.number in given:  # "serviceName" and "service_name" name one field
            raise CodecError(sub, f"field given twice (as '{given[field.number]}' and '{key}')")
        given[field.number] = key
        if item is None:
            if _is_wrapper(field):
                continue  # a null wrapper is an absent one
            if not _accepts_null(field):
                raise CodecError(sub, "null is not allowed (omit the field instead)")
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in oneofs_set and oneofs_set[oneof.name] != field.name:
                raise CodecError(sub, f"only one of the '{oneof.name}' fields may be set")
            oneofs_set[oneof.name] = field.name
        decode_field(message, field, item, sub)


def decode_field(message: Message, field: FieldDescriptor, value: JSON, path: str) -> None:
    """Sets (or, for repeated fields, extends) ``field`` of ``message`` from JSON ``value``."""
    if _is_map(field):
        key_field = message_type(field).fields_by_name["key"]
        value_field = message_type(field).fields_by_name["value"]
        target = getattr(message, field.name)
        for key, item in _object(value, path).items():
            sub = _join(path, _text(key, path))
            map_key = _map_key(key_field, key, sub)
            if map_key in target:  # "1" and "01" are one int key
                raise CodecError(sub, "map key given more than once")
            if value_field.type == _F.TYPE_MESSAGE:
                decode_message(item, target[map_key], sub)
            else:
                target[map_key] = _scalar(value_field, item, sub)
        return
    if field.is_repeated:
        if not isinstance(value, list):
            raise CodecError(path, "expected a JSON array")
        target = getattr(message, field.name)
        for index, item in enumerate(value):
            sub = f"{path}[{index}]"
            if item is None and not _accepts_null(field):
                raise CodecError(sub, "null is not allowed in an array")
            if field.type == _F.TYPE_MESSAGE:
                decode_message(item, target.add(), sub)
            else:
                target.append(_scalar(field, item, sub))
        return
    if field.type == _F.TYPE_MESSAGE:
        child = getattr(message, field.name)
        decode_message(value, child, path)
        child.SetInParent()
        return
    setattr(message, field.name, _scalar(field, value, path))


def decode_text(message: Message, field: FieldDescriptor, text: str, path: str) -> None:
    """Sets (or appends to) ``field`` from a path or query-string value."""
    if _is_map(field):
        raise CodecError(path, "maps cannot be set from the URL")
    value: JSON = text
    if field.type == _F.TYPE_MESSAGE:
        name = message_type(field).full_name
        if not url_settable(message_type(field)):
            raise CodecError(path, "message fields cannot be set from the URL; use dotted names")
        if name == "google.protobuf.BoolValue":
            value = _bool_from_text(text, path)
    elif field.type == _F.TYPE_BOOL:
        value = _bool_from_text(text, path)
    decode_field(message, field, [value] if field.is_repeated else value, path)


def _bool_from_text(text: str, path: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise CodecError(path, "expected true or false")


def _accepts_null(field: FieldDescriptor) -> bool:
    return field.type == _F.TYPE_MESSAGE and message_type(field).full_name == VALUE


def _is_wrapper(field: FieldDescriptor) -> bool:
    return field.type == _F.TYPE_MESSAGE and message_type(field).full_name in WRAPPERS


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_FIELD_NAMES: dict[str, dict[str, FieldDescriptor]] = {}


def fields_by_any_name(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """Fields by JSON name and by proto name (both are accepted on input)."""
    names = _FIELD_NAMES.get(descriptor.full_name)
    if names is None:
        names = {f.name: f for f in descriptor.fields}
        names.update({f.json_name: f for f in descriptor.fields})
        _FIELD_NAMES[descriptor.full_name] = names
    return names


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == _F.TYPE_MESSAGE
        and field.is_repeated
        and message_type(field).GetOptions().map_entry
    )


def _map_key(field: FieldDescriptor, key: str, path: str) -> object:
    if field.type == _F.TYPE_STRING:
        return key
    if field.type == _F.TYPE_BOOL:
        return _bool_from_text(key, path)
    return _scalar(field, key, path)


def _scalar(field: FieldDescriptor, value: JSON, path: str) -> Any:
    kind = field.type
    bounds = _INT_RANGES.get(kind)
    if bounds is not None:
        return _integer(value, bounds, path)
    if kind == _F.TYPE_STRING:
        if isinstance(value, str):
            return _text(value, path)
        raise CodecError(path, "expected a string")
    if kind == _F.TYPE_ENUM:
        return enum_wire(enum_type(field)).decode(value, path)
    if kind == _F.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        raise CodecError(path, "expected true or false")
    if kind in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        return _floating(value, kind == _F.TYPE_FLOAT, path)
    if kind == _F.TYPE_BYTES:
        return _bytes(value, path)
    raise CodecError(path, f"unsupported field type {kind}")


def _integer(value: JSON, bounds: tuple[int, int], path: str) -> int:
    if isinstance(value, bool):
        raise CodecError(path, "expected an integer")
    if isinstance(value, int):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and _INT_TEXT.fullmatch(value)
    ):
        number = int(value)
    else:
        raise CodecError(path, "expected an integer")
    low, high = bounds
    if not low <= number <= high:
        raise CodecError(path, f"integer out of range [{low}, {high}]")
    return number


def _floating(value: JSON, single: bool, path: str) -> float:
    if isinstance(value, bool):
        raise CodecError(path, "expected a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise CodecError(path, "expected a number") from None
        if not math.isfinite(number):
            raise CodecError(path, "expected a number")
    else:
        raise CodecError(path, "expected a number")
    if single:
        try:
            struct.pack("<f", number)  # rounds to the nearest 32-bit float, or overflows
        except OverflowError:
            raise CodecError(path, "number out of range for a 32-bit float") from None
    return number


def _bytes(value: JSON, path: str) -> bytes:
    if not isinstance(value, str):
        raise CodecError(path, "expected a base64 string")
    text = value.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CodecError(path, "expected a base64 string") from None


def _decode_string_formed(value: JSON, message: Any, path: str) -> None:
    if not isinstance(value, str):
        raise CodecError(path, "expected a string")
    try:
        message.FromJsonString(value)
    except ValueError as exc:
        raise CodecError(path, f"invalid {message.DESCRIPTOR.name}: {exc}") from None


def _decode_timestamp(value: JSON, message: Any, path: str) -> None:
    if not isinstance(value, str):
        raise CodecError(path, "expected an RFC 3339 date-time string")
    try:
        message.FromJsonString(value)
    except ValueError:
        raise CodecError(path, "expected an RFC 3339 date-time string") from None


def _decode_value(value: JSON, message: Any, path: str) -> None:
    if value is None:
        message.null_value = 0
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise CodecError(path, "numbers must be finite")
        message.number_value = value
    elif isinstance(value, str):
        message.string_value = _text(value, path)
    elif isinstance(value, dict):
        message.struct_value.SetInParent()  # selects the oneof member even for {}
        _decode_struct(value, message.struct_value, path)
    elif isinstance(value, list):
        message.list_value.SetInParent()  # selects the oneof member even for []
        _decode_list(value, message.list_value, path)
    else:
        raise CodecError(path, "expected a JSON value")


def _decode_struct(value: JSON, message: Any, path: str) -> None:
    for key, item in _object(value, path).items():
        sub = _join(path, _text(key, path))
        _decode_value(item, message.fields[key], sub)


def _decode_list(value: JSON, message: Any, path: str) -> None:
    if not isinstance(value, list):
        raise CodecError(path, "expected a JSON array")
    for index, item in enumerate(value):
        _decode_value(item, message.values.add(), f"{path}[{index}]")


def _decode_wrapper(value: JSON, message: Any, path: str) -> None:
    message.value = _scalar(message.DESCRIPTOR.fields_by_name["value"], value, path)


def _decode_via_json_format(value: JSON, message: Message, path: str) -> None:
    try:
        json_format.ParseDict(value, message)
    except json_format.ParseError as exc:
        raise CodecError(path, str(exc)) from None


def _decode_empty(value: JSON, message: Message, path: str) -> None:
    if value != {}:
        raise CodecError(path, "expected an empty JSON object")


_WKT_DECODERS: dict[str, Callable[[JSON, Any, str], None]] = {
    TIMESTAMP: _decode_timestamp,
    DURATION: _decode_string_formed,
    FIELD_MASK: _decode_string_formed,
    STRUCT: _decode_struct,
    VALUE: _decode_value,
    LIST_VALUE: _decode_list,
    ANY: _decode_via_json_format,
    EMPTY: _decode_empty,
    **{name: _decode_wrapper for name in WRAPPERS},
}
