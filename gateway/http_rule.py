"""google.api.http path templates: parsing and matching.

Grammar (google/api/http.proto)::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

A template compiles to a flat list of segment matchers; each variable records the span of
segments it captures. ``**`` may only appear last (as in the spec), so matching is a single
left-to-right pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from google.api import http_pb2

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERAL = re.compile(r"[^/{}*:=]+")

WILDCARD = "*"
DOUBLE_WILDCARD = "**"


class TemplateError(ValueError):
    """A google.api.http template or rule that cannot be compiled."""


@dataclass(frozen=True, slots=True)
class Variable:
    field_path: tuple[str, ...]  # proto field names, e.g. ("registration", "service_id")
    start: int  # index of the first captured segment
    end: int | None  # one past the last captured segment; None = up to the end ("**")


@dataclass(frozen=True, slots=True)
class PathTemplate:
    source: str
    segments: tuple[str, ...]  # literal text, WILDCARD or DOUBLE_WILDCARD
    variables: tuple[Variable, ...]
    verb: str

    @property
    def literal_count(self) -> int:
        return sum(1 for s in self.segments if s not in (WILDCARD, DOUBLE_WILDCARD))

    def match(self, raw_segments: list[str], verb: str) -> dict[tuple[str, ...], str] | None:
        """Matches percent-encoded path segments; returns decoded variable values or None."""
        if verb != self.verb:
            return None
        has_tail = bool(self.segments) and self.segments[-1] == DOUBLE_WILDCARD
        fixed = len(self.segments) - (1 if has_tail else 0)
        if len(raw_segments) < fixed or (not has_tail and len(raw_segments) != fixed):
            return None
        for pattern, raw in zip(self.segments[:fixed], raw_segments, strict=False):
            if pattern == WILDCARD:
                if raw == "":
                    return None
            elif raw != pattern and unquote(raw) != pattern:
                return None
        values: dict[tuple[str, ...], str] = {}
        for var in self.variables:
            # Multi-segment captures keep "/" between segments and decode each one.
            captured = raw_segments[var.start : var.end]
            values[var.field_path] = "/".join(unquote(s) for s in captured)
        return values

    def openapi_path(self, name_of: dict[tuple[str, ...], str]) -> str:
        """The OpenAPI form: each variable becomes ``{name}`` (``name_of`` maps field paths)."""
        parts: list[str] = []
        index = 0
        for var in sorted(self.variables, key=lambda v: v.start):
            parts.extend(self.segments[index : var.start])
            parts.append("{" + name_of[var.field_path] + "}")
            index = len(self.segments) if var.end is None else var.end
        parts.extend(self.segments[index:])
        path = "/" + "/".join(parts)
        return f"{path}:{self.verb}" if self.verb else path


def parse_template(source: str) -> PathTemplate:
    if not source.startswith("/"):
        raise TemplateError(f"template {source!r} must start with '/'")
    body, verb = _split_verb(source)
    segments: list[str] = []
    variables: list[Variable] = []
    pos = 1
    while True:
        if body.startswith("{", pos):
            close = body.find("}", pos)
            if close < 0:
                raise TemplateError(f"template {source!r}: unclosed variable")
            variables.append(_parse_variable(source, body[pos + 1 : close], segments))
            pos = close + 1
        else:
            end = body.find("/", pos)
            end = len(body) if end < 0 else end
            segments.append(_check_segment(source, body[pos:end]))
            pos = end
        if pos == len(body):
            break
        if body[pos] != "/":
            raise TemplateError(f"template {source!r}: expected '/' at offset {pos}")
        pos += 1
    if DOUBLE_WILDCARD in segments[:-1]:
        raise TemplateError(f"template {source!r}: '**' must be the last segment")
    paths = [v.field_path for v in variables]
    if len(set(paths)) != len(paths):
        raise TemplateError(f"template {source!r}: a field is bound twice")
    return PathTemplate(source, tuple(segments), tuple(variables), verb)


def _split_verb(source: str) -> tuple[str, str]:
    last_slash = source.rfind("/")
    last_brace = source.rfind("}")
    colon = source.rfind(":")
    if colon > max(last_slash, last_brace):
        verb = source[colon + 1 :]
        if not _LITERAL.fullmatch(verb):
            raise TemplateError(f"template {source!r}: bad verb {verb!r}")
        return source[:colon], verb
    return source, ""


def _check_segment(source: str, segment: str) -> str:
    if segment in (WILDCARD, DOUBLE_WILDCARD) or _LITERAL.fullmatch(segment):
        return segment
    raise TemplateError(f"template {source!r}: bad segment {segment!r}")


def _parse_variable(source: str, text: str, segments: list[str]) -> Variable:
    name, eq, pattern = text.partition("=")
    field_path = tuple(name.split("."))
    if not all(_IDENT.fullmatch(p) for p in field_path):
        raise TemplateError(f"template {source!r}: bad field path {name!r}")
    start = len(segments)
    sub = pattern.split("/") if eq else [WILDCARD]
    segments.extend(_check_segment(source, s) for s in sub)
    end = None if sub[-1] == DOUBLE_WILDCARD else len(segments)
    return Variable(field_path, start, end)


def split_path(raw_path: str) -> tuple[list[str], str]:
    """Splits a percent-encoded request path into segments and a trailing ``:verb``."""
    if not raw_path.startswith("/"):
        return [], ""
    segments = raw_path[1:].split("/")
    last = segments[-1]
    colon = last.rfind(":")
    verb = ""
    if colon >= 0:
        verb = unquote(last[colon + 1 :])
        segments[-1] = last[:colon]
    return segments, verb


@dataclass(frozen=True, slots=True)
class Binding:
    """One HTTP binding of a method: the method, template and body selectors."""

    http_method: str
    template: PathTemplate
    body: str  # "" (no body), "*" or a top-level request field name
    response_body: str  # "" (whole response) or a top-level response field name


def bindings_of(rule: http_pb2.HttpRule) -> list[Binding]:
    """The rule's primary binding followed by its additional_bindings."""
    out = [_binding(rule)]
    for extra in rule.additional_bindings:
        if extra.additional_bindings:
            raise TemplateError("additional_bindings may not nest")
        out.append(_binding(extra))
    return out


def _binding(rule: http_pb2.HttpRule) -> Binding:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise TemplateError("google.api.http rule without a pattern")
    if kind == "custom":
        method, path = rule.custom.kind.upper(), rule.custom.path
    else:
        method, path = kind.upper(), getattr(rule, kind)
    return Binding(method, parse_template(path), rule.body, rule.response_body)
