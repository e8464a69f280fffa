"""The REST gateway's "malformed request" marker, read here (written by gateway/marker.py):
authentication before validation feedback.

A REST request the gateway cannot transcode (bad JSON, unknown field or query parameter, a key
given twice, an unknown enum string) is still sent to its method, with an empty request and
this marker in the metadata. The interceptor authenticates and authorizes the call (admin
check, rate limit) first and only then answers with the error the marker describes, so a
caller without valid credentials learns nothing about the request's shape.

The value is compact ASCII JSON, at most MAX_MARKER_CHARS: ``{"k": "malformed" | "invalid",
"m": message, "v": [[field, description], ...]}``. "invalid" (a well-formed value the
configuration does not allow, e.g. an unknown enum string) becomes the method's own
invalid-request error (discovery: LUCID_ERR_1004), "malformed" MalformedRequest (1904), both
with the field violations. A gRPC client that sends the marker itself only makes its own call
fail, after being authenticated: the marker can never make a call succeed or act for anyone.
"""

from __future__ import annotations

import json

from lucid_cp.errors import FieldViolation, InvalidRequestError, LucidError, MalformedRequest

MALFORMED_HEADER = "x-lucid-malformed"
MAX_MARKER_CHARS = 2048
MAX_VIOLATIONS = 4
_INVALID = "invalid"


def error_from_marker(value: str, invalid: InvalidRequestError) -> LucidError:
    """The error a marker describes; ``invalid`` is the method's invalid-request class."""
    try:
        doc = json.loads(value[:MAX_MARKER_CHARS])
        message = str(doc["m"])[:MAX_MARKER_CHARS]
        violations = [
            FieldViolation(str(field), str(description))
            for field, description in doc["v"][:MAX_VIOLATIONS]
        ]
        kind = doc["k"]
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        return MalformedRequest("malformed request")
    if kind == _INVALID:
        return invalid(message, violations)
    return MalformedRequest(message, violations)
