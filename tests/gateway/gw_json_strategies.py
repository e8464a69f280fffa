"""Hypothesis strategies: canonical REST JSON for any message, built by walking its descriptor.

Canonical means what the codec emits: JSON names, wire enum strings, numbers for 64-bit ints,
zero numbers/booleans and empty lists/maps present, empty strings and zero enums absent.
"""

from __future__ import annotations

import base64
import struct
from functools import cache
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from gateway import codec

_F = FieldDescriptor
_MAX_DEPTH = 3
_INT_BOUNDS = {
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

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())
    | st.text(max_size=8)
)
free_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _timestamps() -> st.SearchStrategy[str]:
    def render(seconds: int, nanos: int) -> str:
        ts = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
        return ts.ToJsonString()

    nanos = st.sampled_from([0, 500_000_000, 123_000, 7]) | st.integers(0, 999_999_999)
    return st.builds(render, st.integers(-62135596800, 253402300799), nanos)


def _float32() -> st.SearchStrategy[float]:
    def canonical(value: float) -> float:
        # What the codec emits for this 32-bit value (shortest round-tripping decimal).
        narrowed = struct.unpack("<f", struct.pack("<f", value))[0]
        out = codec._encode_float(narrowed)
        assert isinstance(out, float)
        return out

    return st.floats(width=32, allow_nan=False, allow_infinity=False).map(canonical)


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_BOUNDS:
        low, high = _INT_BOUNDS[kind]
        return st.integers(low, high)
    if kind == _F.TYPE_BOOL:
        return st.booleans()
    if kind == _F.TYPE_DOUBLE:
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == _F.TYPE_FLOAT:
        return _float32()
    if kind == _F.TYPE_STRING:
        return st.text(min_size=1, max_size=12)
    if kind == _F.TYPE_BYTES:
        return st.binary(min_size=1, max_size=12).map(lambda b: base64.b64encode(b).decode())
    if kind == _F.TYPE_ENUM:
        return st.sampled_from(codec.enum_wire(codec.enum_type(field)).strings)
    raise AssertionError(f"no scalar strategy for {field.full_name}")


def _wkt(name: str) -> st.SearchStrategy[Any] | None:
    if name == codec.TIMESTAMP:
        return _timestamps()
    if name == codec.STRUCT:
        return st.dictionaries(st.text(max_size=5), free_json, max_size=3)
    if name == codec.VALUE:
        return free_json
    if name == codec.LIST_VALUE:
        return st.lists(free_json, max_size=3)
    if name == codec.DURATION:
        return st.builds(lambda s: f"{s}s", st.integers(0, 10**6))
    if name in codec.WRAPPERS:
        inner = name.removeprefix("google.protobuf.").removesuffix("Value")
        return {
            "Int64": st.integers(-(2**63), 2**63 - 1),
            "UInt64": st.integers(0, 2**64 - 1),
            "Int32": st.integers(-(2**31), 2**31 - 1),
            "UInt32": st.integers(0, 2**32 - 1),
            "Bool": st.booleans(),
            "String": st.text(max_size=8),
            "Double": st.floats(allow_nan=False, allow_infinity=False),
            "Float": _float32(),
            "Bytes": st.binary(max_size=8).map(lambda b: base64.b64encode(b).decode()),
        }[inner]
    return None


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == _F.TYPE_MESSAGE:
        return message_json(field.message_type, depth + 1)
    return scalar(field)


def _field(field: FieldDescriptor, depth: int) -> tuple[bool, st.SearchStrategy[Any]]:
    """(always present?, strategy) for one field in canonical output form."""
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        key, value = message.fields_by_name["key"], message.fields_by_name["value"]
        keys = scalar(key).map(
            lambda k: ("true" if k else "false") if isinstance(k, bool) else str(k)
        )
        return True, st.dictionaries(
            keys, _value(value, depth), max_size=2 if depth < _MAX_DEPTH else 0
        )
    if field.is_repeated:
        return True, st.lists(_value(field, depth), max_size=2 if depth < _MAX_DEPTH else 0)
    if message is not None:
        return False, _value(field, depth)
    if field.has_presence:
        strategy = scalar(field)
        return False, strategy
    if field.type in (_F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_ENUM):
        return False, scalar(field)
    return True, scalar(field)


@cache
def message_json(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    special = _wkt(descriptor.full_name)
    if special is not None:
        return special
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    oneof_members: dict[str, list[FieldDescriptor]] = {}
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and len(oneof.fields) > 1:
            oneof_members.setdefault(oneof.name, []).append(field)
            continue
        if field.message_type is not None and depth >= _MAX_DEPTH and not field.is_repeated:
            continue
        always, strategy = _field(field, depth)
        (required if always else optional)[field.json_name] = strategy
    base = st.fixed_dictionaries(required, optional=optional)
    for members in oneof_members.values():
        choice = st.one_of(
            [st.just({})]
            + [st.builds(lambda v, n=f.json_name: {n: v}, _field(f, depth)[1]) for f in members]
        )
        base = st.builds(lambda a, b: {**a, **b}, base, choice)
    return base
