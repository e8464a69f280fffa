"""google.api.http path templates: parsing, matching, OpenAPI rendering."""

from __future__ import annotations

import pytest
from google.api import http_pb2

from gateway.http_rule import TemplateError, bindings_of, parse_template, split_path


def match(template: str, path: str) -> dict[tuple[str, ...], str] | None:
    segments, verb = split_path(path)
    return parse_template(template).match(segments, verb)


def test_literal_template_matches_only_itself() -> None:
    assert match("/api/v1/things", "/api/v1/things") == {}
    assert match("/api/v1/things", "/api/v1/things/x") is None
    assert match("/api/v1/things", "/api/v1/thing") is None


def test_variable_captures_one_decoded_segment() -> None:
    values = match("/v1/services/{service_id}/health", "/v1/services/a%20b/health")
    assert values == {("service_id",): "a b"}
    assert match("/v1/services/{service_id}/health", "/v1/services//health") is None
    assert match("/v1/services/{service_id}/health", "/v1/services/a/b/health") is None


def test_dotted_field_path_and_sub_pattern() -> None:
    template = parse_template("/v1/{registration.service_id=services/*}:touch")
    assert template.variables[0].field_path == ("registration", "service_id")
    assert template.verb == "touch"
    segments, verb = split_path("/v1/services/abc:touch")
    assert template.match(segments, verb) == {("registration", "service_id"): "services/abc"}
    assert template.match(*split_path("/v1/services/abc")) is None


def test_double_wildcard_captures_the_rest() -> None:
    values = match("/v1/files/{path=**}", "/v1/files/a/b/c")
    assert values == {("path",): "a/b/c"}
    assert match("/v1/files/{path=**}", "/v1/files") == {("path",): ""}


@pytest.mark.parametrize(
    "template",
    ["v1/no-slash", "/v1/{unclosed", "/v1/{bad-name}", "/v1/**/x", "/v1/{a}/{a}", "/v1/a:b/c"],
)
def test_bad_templates_fail_loudly(template: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(template)


def test_openapi_path_uses_given_names() -> None:
    template = parse_template("/api/v1/services/{service_name}/resolve")
    assert template.openapi_path({("service_name",): "serviceName"}) == (
        "/api/v1/services/{serviceName}/resolve"
    )


def test_bindings_include_additional_bindings_and_custom_verbs() -> None:
    rule = http_pb2.HttpRule(post="/v1/a", body="*")
    rule.additional_bindings.add(get="/v1/a/{id}")
    rule.additional_bindings.add(custom=http_pb2.CustomHttpPattern(kind="PURGE", path="/v1/a"))
    bindings = bindings_of(rule)
    assert [(b.http_method, b.template.source, b.body) for b in bindings] == [
        ("POST", "/v1/a", "*"),
        ("GET", "/v1/a/{id}", ""),
        ("PURGE", "/v1/a", ""),
    ]


def test_rule_without_pattern_is_rejected() -> None:
    with pytest.raises(TemplateError):
        bindings_of(http_pb2.HttpRule(body="*"))
