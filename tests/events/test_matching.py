"""Wildcards and filters, table-driven (pure functions: no server)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.events.matching import Matcher, data_matches, path_violations, type_matches

TYPES = [
    # pattern, event type, matches
    ("session.created", "session.created", True),
    ("session.created", "session.deleted", False),
    ("session.created", "session.created.x", False),
    ("session.*", "session.created", True),
    ("session.*", "session.user.created", False),
    ("session.*", "session", False),
    ("*.created", "session.created", True),
    ("*.created", "user.session.created", False),
    ("session.*.created", "session.user.created", True),
    ("session.*.created", "session.created", False),
    ("*", "session", True),
    ("*", "session.created", False),
    ("*.*", "a.b", True),
    ("session.>", "session.created", True),
    ("session.>", "session.user.created", True),
    ("session.>", "session", False),
    ("session.>", "sessions.created", False),
    ("session.*.>", "session.user.created", True),
    ("session.*.>", "session.user", False),
    (">", "session", True),
    (">", "a.b.c.d", True),
    ("*.>", "a", False),
    ("*.>", "a.b", True),
    ("a-b.c", "a-b.c", True),
    ("a-b.*", "a-b.", False),  # an empty segment is not a segment
    ("session.>", "session.", False),
    ("session.>", "session.user.", False),
    ("session.>", "session..created", False),
    (">", "session.", False),
    ("session", "session.created", False),
]


@pytest.mark.parametrize(("pattern", "event_type", "expected"), TYPES)
def test_event_type_patterns(pattern: str, event_type: str, expected: bool) -> None:
    assert type_matches(pattern, event_type) is expected


DATA = [
    # data, filter, matches
    ({"payment": {"currency": "TRX"}}, {"payment.currency": "TRX"}, True),
    ({"payment": {"currency": "USD"}}, {"payment.currency": "TRX"}, False),
    ({"payment": {}}, {"payment.currency": "TRX"}, False),
    ({"payment": "TRX"}, {"payment.currency": "TRX"}, False),
    ({"amount": 10}, {"amount": 10.0}, True),
    ({"amount": 10}, {"amount": "10"}, False),
    ({"ok": True}, {"ok": True}, True),
    ({"ok": 1}, {"ok": True}, False),
    ({"x": None}, {"x": None}, True),
    ({}, {"x": None}, False),
    ({"a": {"b": {"c": [1, 2]}}}, {"a.b.c": [1, 2]}, True),
    ({"a": {"b": {"c": [1, 2]}}}, {"a.b": {"c": [1, 2]}}, True),
    ({"a": 1, "b": 2}, {"a": 1, "b": 3}, False),
    ({"a": 1}, {}, True),
]


@pytest.mark.parametrize(("data", "wanted", "expected"), DATA)
def test_data_filters(data: dict[str, Any], wanted: dict[str, Any], expected: bool) -> None:
    assert data_matches(data, wanted) is expected


def _event(**over: Any) -> pb.ServiceEvent:
    body = {
        "eventType": "payment.settled",
        "source": "wallet-api",
        "tags": {"env": "prod", "region": "eu"},
        "data": {"payment": {"currency": "TRX", "amount": 5}},
    } | over
    return json_format.ParseDict(body, pb.ServiceEvent())


SUBSCRIPTIONS = [
    # subscription (JSON), event overrides, matches
    ({"eventTypes": ["payment.*"]}, {}, True),
    ({"eventTypes": ["session.*", "payment.>"]}, {}, True),
    ({"eventTypes": ["session.*"]}, {}, False),
    ({"eventTypes": [">"], "filters": {"source": ["wallet-api", "x-api"]}}, {}, True),
    ({"eventTypes": [">"], "filters": {"source": ["x-api"]}}, {}, False),
    ({"eventTypes": [">"], "filters": {"tags": {"env": "prod"}}}, {}, True),
    ({"eventTypes": [">"], "filters": {"tags": {"env": "prod", "region": "us"}}}, {}, False),
    ({"eventTypes": [">"], "filters": {"tags": {"team": "a"}}}, {}, False),
    ({"eventTypes": [">"], "filters": {"data": {"payment.currency": "TRX"}}}, {}, True),
    ({"eventTypes": [">"], "filters": {"data": {"payment.amount": 5}}}, {}, True),
    ({"eventTypes": [">"], "filters": {"data": {"payment.currency": "USD"}}}, {}, False),
    (
        {
            "eventTypes": ["payment.*"],
            "filters": {
                "source": ["wallet-api"],
                "tags": {"env": "prod"},
                "data": {"payment.currency": "TRX"},
            },
        },
        {},
        True,
    ),
    (
        {"eventTypes": ["payment.*"], "filters": {"source": ["wallet-api"]}},
        {"source": "other-api"},
        False,
    ),
]


@pytest.mark.parametrize(("sub", "over", "expected"), SUBSCRIPTIONS)
def test_subscription_matcher(sub: dict[str, Any], over: dict[str, Any], expected: bool) -> None:
    matcher = Matcher.of(json_format.ParseDict(sub, pb.EventSubscription()))
    assert matcher.matches(_event(**over)) is expected


@pytest.mark.parametrize(
    ("path", "bad"), [("a", False), ("a.b", False), ("a..b", True), (".a", True), ("a.", True)]
)
def test_data_filter_paths_need_non_empty_segments(path: str, bad: bool) -> None:
    filters = json_format.ParseDict({"data": {path: 1}}, pb.EventFilters())
    assert bool(path_violations(filters, "subscription.filters.")) is bad
