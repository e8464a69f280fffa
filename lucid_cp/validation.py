"""Descriptor-driven request validation and defaults.

Constraints are declared once, next to each field, as ``(lucid.common.v1.rules)`` options in
proto/, and cross-field rules on the message as ``(lucid.common.v1.message_rules)`` ("when
loadBalance is consistent-hash, hashKey is required"). ``normalize(message)`` applies
``default_json`` defaults to absent fields and then checks every rule, recursively, returning
field violations named by their JSON paths ("registration.endpoint.port"). It is called for every
request by the gRPC server; no servicer re-implements these checks. Plans are compiled once per
message type and cached.

Every free-form field (google.protobuf.Struct, Value or ListValue, wherever it sits in a
request, declared rules or not) is capped at ``MAX_STRUCT_DEPTH`` levels of JSON nesting and may
hold only finite numbers (NaN and Infinity have no JSON form: a stored one could never be served).
"""

from __future__ import annotations

import ipaddress
import json
import math
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
_VALUE = "google.protobuf.Value"
_LIST_VALUE = "google.protobuf.ListValue"
_FREE_FORM = frozenset({_STRUCT, _VALUE, _LIST_VALUE})

# The cap on JSON nesting of every free-form field in a request: {} and [] are one level each,
# {"a": {"b": [1]}} is three. Why: a stored value is sent back deeper than it came in (e.g.
# WatchResponse > snapshot > instances > health > details), and protobuf parsers refuse messages
# nested deeper than PROTOBUF_RECURSION_LIMIT (upb, C++ and Java: 100), so an accepted value must
# leave room for the deepest response that carries it, or every list and watch holding it fails
# to decode. One JSON level costs at most 3 protobuf levels (Struct > fields entry > Value), so
# a free-form field at protobuf depth k (the response itself is 1) carrying MAX_STRUCT_DEPTH
# levels reaches k + 3 * MAX_STRUCT_DEPTH. Discovery's deepest is k = 5 (WatchResponse's
# snapshot details): 65 <= 100, 35 levels to spare. tests/test_validation.py checks this margin
# for every response of every system.
MAX_STRUCT_DEPTH = 20
PROTOBUF_RECURSION_LIMIT = 100

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
    recurse: bool  # a message field (or repeated message, or map value) of a project type
    free_form: bool  # a Struct / Value / ListValue field (or repeated, or map value)
    repeated: bool = False
    presence: bool = False  # has_presence (HasField tells whether it is set)


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


def _item_type(field: FieldDescriptor) -> Descriptor | None:
    """The message type of the field's values (of a map's values, for a map)."""
    if field.message_type is None:
        return None
    if _is_map(field):
        return field.message_type.fields_by_name["value"].message_type
    return field.message_type


@cache
def _plan(descriptor: Descriptor) -> tuple[_FieldPlan, ...]:
    plans = []
    for field in descriptor.fields:
        rules = field_rules(field)
        item = _item_type(field)
        recurse = item is not None and not item.full_name.startswith(_WELL_KNOWN)
        free_form = item is not None and item.full_name in _FREE_FORM
        is_enum = field.enum_type is not None
        if rules is None and not recurse and not free_form and not is_enum:
            continue
        pattern = re.compile(rules.pattern) if rules is not None and rules.pattern else None
        setter = (
            _default_setter(field, rules.default_json) if rules and rules.default_json else None
        )
        plans.append(
            _FieldPlan(
                field,
                rules,
                pattern,
                setter,
                recurse,
                free_form,
                _is_repeated(field),
                not _is_repeated(field) and field.has_presence,
            )
        )
    return tuple(plans)


@dataclass(frozen=True, slots=True)
class _MessageRule:
    when: FieldDescriptor
    equals: object  # the value of ``when`` that triggers the rule, as getattr returns it
    require: FieldDescriptor
    description: str


@cache
def _message_rules(descriptor: Descriptor) -> tuple[_MessageRule, ...]:
    """The message's ``(lucid.common.v1.message_rules)``, compiled; a rule naming a field the
    message lacks, or an enum value its enum lacks, raises ValueError (a declaration bug)."""
    compiled = []
    for rule in descriptor.GetOptions().Extensions[options_pb2.message_rules]:
        when = descriptor.fields_by_name.get(rule.when_field)
        require = descriptor.fields_by_name.get(rule.require)
        if when is None or require is None or when.is_repeated:
            raise ValueError(f"{descriptor.full_name}: bad message rule {rule}")
        equals, shown = _rule_value(when, rule.when_equals)
        compiled.append(
            _MessageRule(when, equals, require, f"is required when {when.json_name} is {shown}")
        )
    return tuple(compiled)


def _rule_value(field: FieldDescriptor, text: str) -> tuple[object, str]:
    """(the value ``text`` denotes for ``field``, how to show it: an enum's wire string)."""
    if field.enum_type is not None:
        value = field.enum_type.values_by_name.get(text)
        if value is None:
            raise ValueError(f"{field.full_name}: no enum value {text!r}")
        opts = value.GetOptions()
        wire = opts.Extensions[options_pb2.wire] if opts.HasExtension(options_pb2.wire) else text
        return value.number, wire
    if field.type == _F.TYPE_BOOL:
        if text not in ("true", "false"):
            raise ValueError(f"{field.full_name}: {text!r} is not a bool")
        return text == "true", text
    if field.type in _NUMERIC:
        return float(text), text
    if field.type == _F.TYPE_STRING:
        return text, text
    raise ValueError(f"{field.full_name}: message rules compare scalars only")


def check_declarations(descriptor: Descriptor) -> None:
    """Compiles the rules of ``descriptor`` and every message it contains; raises ValueError on a
    declaration bug (so tests and start-up can fail fast instead of the first request)."""
    seen: set[str] = set()
    stack = [descriptor]
    while stack:
        message = stack.pop()
        if message.full_name in seen or message.full_name.startswith(_WELL_KNOWN):
            continue
        seen.add(message.full_name)
        _plan(message)
        _message_rules(message)
        stack.extend(f.message_type for f in message.fields if f.message_type is not None)


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
    descriptor = message.DESCRIPTOR
    for plan in _plan(descriptor):
        field = plan.field
        name = field.name
        if plan.repeated:
            present = len(getattr(message, name)) > 0
        elif plan.presence:
            present = message.HasField(name)
        else:
            present = bool(getattr(message, name))
        if not present and plan.set_default is not None:
            plan.set_default(message)
            present = True
        rules = plan.rules
        if not present:
            if rules is not None and rules.required:
                out.append(FieldViolation(f"{prefix}{field.json_name}", "is required"))
            continue
        value = getattr(message, name)
        path = f"{prefix}{field.json_name}"
        if plan.repeated:
            _check_items(plan, path, value, out)
            continue
        if field.message_type is not None:
            if plan.free_form:
                if _bad_free_form(value, path, out):
                    continue
                if field.message_type.full_name == _STRUCT and rules is not None:
                    _check_struct(rules, path, value, out)
            elif plan.recurse:
                _walk(value, f"{path}.", out)
            continue
        _check_scalar(plan, path, value, out)
    for rule in _message_rules(descriptor):
        if getattr(message, rule.when.name) == rule.equals and not _present(message, rule.require):
            out.append(FieldViolation(f"{prefix}{rule.require.json_name}", rule.description))


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
        if plan.free_form or plan.recurse:
            values = items  # a map: check its message values
            for key in seq:
                _check_item(plan, f"{path}.{key}", values[key], out)  # type: ignore[index]
        return
    for i, item in enumerate(seq):
        item_path = f"{path}[{i}]"
        if plan.field.message_type is not None:
            _check_item(plan, item_path, item, out)
        else:
            _check_scalar(plan, item_path, item, out)


def _check_item(plan: _FieldPlan, path: str, item: Message, out: list[FieldViolation]) -> None:
    if plan.free_form:
        _bad_free_form(item, path, out)
    elif plan.recurse:
        _walk(item, f"{path}.", out)


def json_depth(message: Message) -> int:
    """Levels of JSON nesting of a Struct, Value or ListValue: {} and [] count one level each,
    scalars none."""
    return _scan(message)[0]


def non_finite(message: Message, path: str = "") -> list[str]:
    """JSON paths (below ``path``) of the NaN and +-Infinity numbers in a Struct, Value or
    ListValue."""
    name = message.DESCRIPTOR.full_name
    if name == _STRUCT:
        fields = message.fields  # type: ignore[attr-defined]
        return [p for k in sorted(fields) for p in non_finite(fields[k], f"{path}.{k}")]
    if name == _LIST_VALUE:
        values = message.values  # type: ignore[attr-defined]
        return [p for i, v in enumerate(values) for p in non_finite(v, f"{path}[{i}]")]
    kind = message.WhichOneof("kind")
    if kind == "struct_value" or kind == "list_value":
        return non_finite(getattr(message, kind), path)
    if kind == "number_value" and not math.isfinite(message.number_value):  # type: ignore[attr-defined]
        return [path]
    return []


def _bad_free_form(value: Message, path: str, out: list[FieldViolation]) -> bool:
    """Too deep, or holding a non-finite number: field violations, True."""
    depth, finite = _scan(value)
    if depth > MAX_STRUCT_DEPTH:
        out.append(FieldViolation(path, f"must be nested at most {MAX_STRUCT_DEPTH} levels deep"))
        return True
    if finite:
        return False
    bad = non_finite(value, path)
    out.extend(FieldViolation(p, "must be a finite number (not NaN or Infinity)") for p in bad)
    return bool(bad)


def _scan(message: Message) -> tuple[int, bool]:
    """(``json_depth``, whether every number is finite) of a Struct, Value or ListValue, in
    one walk (paths of non-finite numbers are looked for only when there are some)."""
    name = message.DESCRIPTOR.full_name
    if name == _STRUCT or name == _LIST_VALUE:
        items = message.fields.values() if name == _STRUCT else message.values  # type: ignore[attr-defined]
        depth, finite = 0, True
        for item in items:
            d, f = _scan(item)
            depth = max(depth, d)
            finite = finite and f
        return 1 + depth, finite
    kind = message.WhichOneof("kind")
    if kind == "struct_value" or kind == "list_value":
        return _scan(getattr(message, kind))
    if kind == "number_value":
        return 0, math.isfinite(message.number_value)  # type: ignore[attr-defined]
    return 0, True


def deepest_free_form(descriptor: Descriptor, depth: int = 1) -> int:
    """The protobuf depth of the deepest free-form field in messages of type ``descriptor``
    (itself at ``depth``), 0 if none: where a response can carry a request's Struct."""
    deepest = 0
    stack = [(descriptor, depth, frozenset[str]())]
    while stack:
        message, level, path = stack.pop()
        for field in message.fields:
            item = _item_type(field)
            if item is None:
                continue
            # A map value sits one level below its map entry.
            at = level + 1 + (1 if _is_map(field) else 0)
            if item.full_name in _FREE_FORM:
                deepest = max(deepest, at)
            elif not item.full_name.startswith(_WELL_KNOWN) and item.full_name not in path:
                stack.append((item, at, path | {item.full_name}))
    return deepest


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
