"""Descriptor-driven request validation and defaults.

Constraints are declared once, next to each field, as ``(lucid.common.v1.rules)`` options in
proto/. ``normalize(message)`` applies ``default_json`` defaults to absent fields and then checks
every rule, recursively, returning field violations named by their JSON paths
("registration.endpoint.port"). It is called for every request by the gRPC server; no servicer
re-implements these checks. Plans are compiled once per message type and cached.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from lucid_cp.api.lucid.common.v1 import options_pb2
from lucid_cp.errors import FieldViolation

_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_WELL_KNOWN = ("google.protobuf.",)
_STRUCT = "google.protobuf.Struct"

_F = FieldDescriptor
_NUMERIC = {
    _F.TYPE_INT32,
    _F.TYPE_INT64,
    _F.TYPE_UINT32,
    _F.TYPE_UINT64,
    _F.TYPE_SINT32,
    _F.TYPE_SINT64,
    _F.TYPE_FIXED32,
    _F.TYPE_FIXED64,
    _F.TYPE_SFIXED32,
    _F.TYPE_SFIXED64,
    _F.TYPE_DOUBLE,
    _F.TYPE_FLOAT,
}


def is_hostname_or_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    host = value[:-1] if value.endswith(".") else value
    if not host or len(host) > 253:
        return False
    labels = host.split(".")
    return all(_LABEL_RE.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def is_uuid(value: str) -> bool:
    return bool(_UUID_RE.fullmatch(value))


def field_rules(field: FieldDescriptor) -> options_pb2.FieldRules | None:
    opts = field.GetOptions()
    if opts.HasExtension(options_pb2.rules):
        return opts.Extensions[options_pb2.rules]
    return None


@dataclass(frozen=True, slots=True)
class _FieldPlan:
    field: FieldDescriptor
    rules: options_pb2.FieldRules | None
    pattern: re.Pattern[str] | None
    set_default: Callable[[Message], None] | None  # applies default_json, compiled once
    recurse: bool  # a message field (or repeated message) of a project type


def _default_setter(field: FieldDescriptor, default_json: str) -> Callable[[Message], None]:
    """Compiles ``default_json`` into a setter (ParseDict per request was a hot spot)."""
    value = json.loads(default_json)
    name = field.name
    if field.message_type is not None:

        def parse(m: Message) -> None:
            json_format.ParseDict({field.json_name: value}, m)

        return parse
    if field.enum_type is not None:
        names = value if _is_repeated(field) else [value]
        numbers = [field.enum_type.values_by_name[n].number for n in names]
        value = numbers if _is_repeated(field) else numbers[0]
    if _is_repeated(field):
        items = list(value)
        return lambda m: getattr(m, name).extend(items)
    return lambda m: setattr(m, name, value)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


@cache
def _plan(descriptor: Descriptor) -> tuple[_FieldPlan, ...]:
    plans = []
    for field in descriptor.fields:
        rules = field_rules(field)
        recurse = (
            field.message_type is not None
            and not _is_map(field)
            and not field.message_type.full_name.startswith(_WELL_KNOWN)
        )
        is_enum = field.enum_type is not None
        if rules is None and not recurse and not is_enum:
            continue
        pattern = re.compile(rules.pattern) if rules is not None and rules.pattern else None
        setter = (
            _default_setter(field, rules.default_json) if rules and rules.default_json else None
        )
        plans.append(_FieldPlan(field, rules, pattern, setter, recurse))
    return tuple(plans)


def _present(message: Message, field: FieldDescriptor) -> bool:
    if _is_repeated(field):
        return len(getattr(message, field.name)) > 0
    if field.has_presence:
        return message.HasField(field.name)
    return bool(getattr(message, field.name))


def normalize(message: Message) -> list[FieldViolation]:
    """Applies defaults in place and returns every rule violation (empty list: valid)."""
    violations: list[FieldViolation] = []
    _walk(message, "", violations)
    return violations


def _walk(message: Message, prefix: str, out: list[FieldViolation]) -> None:
    for plan in _plan(message.DESCRIPTOR):
        field = plan.field
        path = f"{prefix}{field.json_name}"
        present = _present(message, field)
        if not present and plan.set_default is not None:
            plan.set_default(message)
            present = True
        rules = plan.rules
        if not present:
            if rules is not None and rules.required:
                out.append(FieldViolation(path, "is required"))
            continue
        value = getattr(message, field.name)
        if _is_repeated(field):
            _check_items(plan, path, value, out)
            continue
        if field.message_type is not None:
            if field.message_type.full_name == _STRUCT and rules is not None:
                _check_struct(rules, path, value, out)
            elif plan.recurse:
                _walk(value, f"{path}.", out)
            continue
        _check_scalar(plan, path, value, out)


def _check_items(plan: _FieldPlan, path: str, items: object, out: list[FieldViolation]) -> None:
    rules = plan.rules
    seq = list(items)  # type: ignore[call-overload]
    if rules is not None:
        if rules.HasField("min_items") and len(seq) < rules.min_items:
            out.append(FieldViolation(path, f"must have at least {rules.min_items} items"))
        if rules.HasField("max_items") and len(seq) > rules.max_items:
            out.append(FieldViolation(path, f"must have at most {rules.max_items} items"))
            return
    if _is_map(plan.field):
        return
    for i, item in enumerate(seq):
        item_path = f"{path}[{i}]"
        if plan.field.message_type is not None:
            if plan.recurse:
                _walk(item, f"{item_path}.", out)
        else:
            _check_scalar(plan, item_path, item, out)


def _check_scalar(plan: _FieldPlan, path: str, value: object, out: list[FieldViolation]) -> None:
    field, rules = plan.field, plan.rules
    if field.enum_type is not None:
        if field.enum_type.values_by_number.get(value) is None:  # type: ignore[call-overload]
            out.append(FieldViolation(path, f"unknown {field.enum_type.name} value {value}"))
        return
    if rules is None:
        return
    if isinstance(value, str):
        if rules.HasField("min_len") and len(value) < rules.min_len:
            out.append(FieldViolation(path, f"must be at least {rules.min_len} characters"))
        if rules.HasField("max_len") and len(value) > rules.max_len:
            out.append(FieldViolation(path, f"must be at most {rules.max_len} characters"))
            return
        if plan.pattern is not None and not plan.pattern.fullmatch(value):
            out.append(FieldViolation(path, f"must match {rules.pattern}"))
        if rules.format == options_pb2.STRING_FORMAT_UUID and not is_uuid(value):
            out.append(FieldViolation(path, "must be a UUID"))
        elif rules.format == options_pb2.STRING_FORMAT_HOSTNAME_OR_IP and not is_hostname_or_ip(
            value
        ):
            out.append(FieldViolation(path, "must be a hostname or an IP address"))
    elif field.type in _NUMERIC:
        number = float(value)  # type: ignore[arg-type]
        if rules.HasField("minimum") and number < rules.minimum:
            out.append(FieldViolation(path, f"must be >= {_num(rules.minimum)}"))
        if rules.HasField("maximum") and number > rules.maximum:
            out.append(FieldViolation(path, f"must be <= {_num(rules.maximum)}"))


def _num(x: float) -> str:
    return str(int(x)) if x.is_integer() else str(x)


_KIND_CHECKS: dict[int, tuple[Callable[[Any], bool], str]] = {
    options_pb2.STRUCT_KIND_STRING: (lambda v: isinstance(v, str), "a string"),
    options_pb2.STRUCT_KIND_STRING_LIST: (
        lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
        "a list of strings",
    ),
    options_pb2.STRUCT_KIND_OBJECT: (lambda v: isinstance(v, dict), "an object"),
    options_pb2.STRUCT_KIND_STRING_MAP: (
        lambda v: isinstance(v, dict) and all(isinstance(i, str) for i in v.values()),
        "an object of strings",
    ),
    options_pb2.STRUCT_KIND_NUMBER: (lambda v: isinstance(v, (int, float)), "a number"),
    options_pb2.STRUCT_KIND_BOOL: (lambda v: isinstance(v, bool), "a boolean"),
}


def _check_struct(
    rules: options_pb2.FieldRules, path: str, value: Message, out: list[FieldViolation]
) -> None:
    if rules.HasField("max_bytes") and value.ByteSize() > rules.max_bytes:
        out.append(FieldViolation(path, f"must be at most {rules.max_bytes} bytes serialized"))
        return
    if not rules.struct_properties:
        return
    data = json_format.MessageToDict(value)
    for prop in rules.struct_properties:
        if prop.name not in data:
            continue
        item = data[prop.name]
        check, what = _KIND_CHECKS[prop.kind]
        if not check(item):
            out.append(FieldViolation(f"{path}.{prop.name}", f"must be {what}"))
        elif prop.HasField("max_len") and isinstance(item, str) and len(item) > prop.max_len:
            out.append(
                FieldViolation(f"{path}.{prop.name}", f"must be at most {prop.max_len} characters")
            )
