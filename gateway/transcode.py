"""HTTP request -> gRPC request message, and gRPC response -> HTTP JSON, for one route."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gateway.codec import (
    JSON,
    CodecError,
    InvalidValue,
    decode_field,
    decode_message,
    decode_text,
    descriptor_of,
    encode_field,
    encode_message,
    fields_by_any_name,
    object_pairs,
    url_descendable,
)
from gateway.errors import ApiError, malformed
from gateway.routes import Route

MAX_BODY_BYTES = 1024 * 1024
# Nesting of JSON arrays and objects a request body may have, checked before parsing (the
# parser and the codec recurse per level). Far above any legitimate request: the deepest
# message is a few levels, and free-form Struct fields have their own, smaller, server cap.
MAX_JSON_DEPTH = 64

# A JSON string (skipped: brackets inside it do not nest) or one bracket. A string that is
# never closed (or ends in a lone backslash) runs to the end of the body: every alternative
# after a quote matches, so no quote is ever rescanned and the scan stays linear in the body.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)
_OPENERS = frozenset(b"[{")


def _reject_constant(name: str) -> JSON:
    raise ValueError(f"{name} is not valid JSON")


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if ``body`` nests arrays/objects deeper than ``limit`` (a linear scan, no parse)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for token in _JSON_TOKEN.finditer(body):
        first = token.group()[0]
        if first in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif first != 0x22:  # a closing bracket, not a string
            depth -= 1
    return False


def parse_json_body(body: bytes) -> JSON:
    """The parsed body; objects with a repeated key come back as codec.DuplicateKeys, which the
    codec rejects naming the key. Raises ApiError for invalid or too deeply nested JSON."""
    if json_depth_exceeds(body):
        raise malformed(f"request body nests JSON deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(body, parse_constant=_reject_constant, object_pairs_hook=object_pairs)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise malformed(f"request body is not valid JSON: {str(exc)[:200]}") from None


def build_request(
    route: Route, path_values: dict[tuple[str, ...], str], query_string: bytes, body: bytes
) -> Message:
    """The gRPC request for ``route``: body first, then path variables, then query parameters.

    Raises ApiError (400, LUCID_ERR_1904) with field violations named as the client sent them.
    """
    request = route.request_class()
    try:
        if route.body == "*":
            decode_message(parse_json_body(body) if body.strip() else {}, request)
        elif route.body_field is not None:
            if body.strip():
                decode_field(request, route.body_field, parse_json_body(body), "")
            elif route.body_required:  # the OpenAPI document says the same (Route.body_required)
                raise malformed("a JSON request body is required")
            else:
                decode_field(request, route.body_field, {}, "")
        names = route.path_param_names
        for key, text in path_values.items():
            _set_path(request, route.path_fields[key], text, names[key])
        _apply_query(route, request, query_string)
    except CodecError as exc:
        error = malformed(f"invalid request: {exc}", [(exc.field, exc.description)])
        error.invalid = isinstance(exc, InvalidValue)
        raise error from None
    return request


def _set_path(request: Message, chain: tuple[FieldDescriptor, ...], text: str, name: str) -> None:
    target = request
    for field in chain[:-1]:
        target = getattr(target, field.name)
    decode_text(target, chain[-1], text, name)


def _apply_query(route: Route, request: Message, query_string: bytes) -> None:
    if not query_string:
        return
    try:
        pairs = parse_qsl(
            query_string.decode("latin-1"),
            keep_blank_values=True,
            strict_parsing=True,
            encoding="utf-8",
            errors="strict",
        )
    except (ValueError, UnicodeDecodeError):
        raise CodecError("", "malformed query string") from None
    seen: set[tuple[int, ...]] = set()
    for name, text in pairs:
        target, field, key = _query_target(route, request, name)
        if not field.is_repeated:
            if key in seen:
                raise CodecError(name, "query parameter given more than once")
            seen.add(key)
        decode_text(target, field, text, name)


def _query_target(
    route: Route, request: Message, name: str
) -> tuple[Message, FieldDescriptor, tuple[int, ...]]:
    if route.body == "*":
        raise CodecError(name, "unknown query parameter (this method takes all fields in the body)")
    target = request
    parts = name.split(".")
    key: list[int] = []
    for depth, part in enumerate(parts):
        field = fields_by_any_name(descriptor_of(target)).get(part)
        if field is None:
            raise CodecError(name, "unknown query parameter")
        key.append(field.number)
        if depth == 0 and field is route.body_field:
            raise CodecError(name, "unknown query parameter (this field is the request body)")
        if _bound_by_path(route, tuple(key)):
            raise CodecError(name, "unknown query parameter (this field is in the path)")
        if depth == len(parts) - 1:
            return target, field, tuple(key)
        message_type = field.message_type
        if message_type is None or field.is_repeated or not url_descendable(message_type):
            raise CodecError(name, "unknown query parameter")
        target = getattr(target, field.name)
    raise CodecError(name, "unknown query parameter")


def _bound_by_path(route: Route, numbers: tuple[int, ...]) -> bool:
    for chain in route.path_fields.values():
        bound = tuple(f.number for f in chain)
        if bound[: len(numbers)] == numbers and len(numbers) == len(bound):
            return True
    return False


def encode_response(route: Route, response: Message) -> bytes:
    """The success body of a unary call (empty for 204)."""
    if route.success_status == 204:
        return b""
    return dumps(encode_response_json(route, response))


def encode_response_json(route: Route, response: Message) -> JSON:
    if route.response_field is not None:
        return encode_field(response, route.response_field)
    return encode_message(response)


def dumps(value: JSON) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (echoed in an error): escape it instead
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def field_prefix(route: Route) -> str:
    """Violation paths the backend reports under the body field, as the client sees them."""
    if route.body_field is None:
        return ""
    return f"{route.body_field.json_name}."


def check_body_size(content_length: str | None) -> None:
    if content_length is None:
        return
    try:
        size = int(content_length)
    except ValueError:
        raise malformed("invalid Content-Length") from None
    if size > MAX_BODY_BYTES:
        raise body_too_large()


def body_too_large() -> ApiError:
    error = malformed(f"request body exceeds {MAX_BODY_BYTES} bytes")
    error.status = 413
    return error
