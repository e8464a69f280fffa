"""Which events a subscription wants: pure functions, no I/O.

EVENT TYPE PATTERNS, as NATS subjects (events.proto): dot-separated segments; ``*`` matches
exactly one segment, ``>`` as the last segment one or more segments, anything else itself; a
segment is never empty (events.proto: an event type is segments of [a-z0-9-] joined by dots).
"session.*" matches "session.created", not "session.user.created" nor "session"; "session.>"
matches both of the first two, not "session"; ">" alone matches every type.

FILTERS (every one given must hold): ``source``, any of the listed publishers; ``tags``, every
given tag present with exactly that value; ``data``, every given dotted path present in the
event's data with a value equal (as JSON: 1 equals 1.0) to the given one. A path walks objects
only ("payment.currency" is data["payment"]["currency"]); a key holding a dot cannot be named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, struct_pb2

from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.errors import FieldViolation

_MISSING = object()


def type_matches(pattern: str, event_type: str) -> bool:
    """Whether ``event_type`` matches one subscription pattern."""
    want = pattern.split(".")
    have = event_type.split(".")
    for i, segment in enumerate(want):
        if segment == ">":
            return i == len(want) - 1 and len(have) > i and all(have[i:])
        if i >= len(have):
            return False
        if segment == "*":
            if not have[i]:
                return False
        elif segment != have[i]:
            return False
    return len(want) == len(have)


def any_type_matches(patterns: Sequence[str], event_type: str) -> bool:
    return any(type_matches(p, event_type) for p in patterns)


def value_at(data: Mapping[str, Any], path: str) -> object:
    """The value at a dotted path of a JSON object, ``_MISSING`` when a step is absent."""
    current: object = data
    for step in path.split("."):
        if not isinstance(current, Mapping) or step not in current:
            return _MISSING
        current = current[step]
    return current


def data_matches(data: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    for path, value in wanted.items():
        found = value_at(data, path)
        if found is _MISSING or not _json_equal(found, value):
            return False
    return True


def _json_equal(a: object, b: object) -> bool:
    # bool is an int in Python: true must not equal 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def path_violations(filters: pb.EventFilters, prefix: str) -> list[FieldViolation]:
    """The data filter's paths that cannot name anything (an empty segment)."""
    return [
        FieldViolation(
            f"{prefix}data", f"path {path!r}: every dot-separated segment must be non-empty"
        )
        for path in filters.data.fields
        if not all(path.split("."))
    ]


def plain(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)


@dataclass(frozen=True, slots=True)
class Matcher:
    """One subscription's event types and filters, compiled once."""

    event_types: tuple[str, ...]
    sources: frozenset[str]
    tags: tuple[tuple[str, str], ...]
    data: Mapping[str, Any]

    @classmethod
    def of(cls, subscription: pb.EventSubscription) -> Matcher:
        filters = subscription.filters
        return cls(
            tuple(subscription.event_types),
            frozenset(filters.source),
            tuple(sorted(filters.tags.items())),
            plain(filters.data) if filters.HasField("data") else {},
        )

    def matches(self, event: pb.ServiceEvent) -> bool:
        if not any_type_matches(self.event_types, event.event_type):
            return False
        if self.sources and event.source not in self.sources:
            return False
        tags = event.tags
        if any(tags.get(k) != v for k, v in self.tags):
            return False
        return not self.data or data_matches(plain(event.data), self.data)
