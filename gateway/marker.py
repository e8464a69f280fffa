"""The malformed-request marker the gateway sends instead of answering 400 itself.

A request the gateway cannot transcode still goes to its method, empty, with this marker: the
control plane authenticates the caller first and only then answers with the error the marker
describes (``lucid_cp/rpc/malformed.py`` reads it; the gateway imports nothing from the server,
so the format is stated on both sides and a test round-trips one into the other).

Compact ASCII JSON, at most MAX_MARKER_CHARS: ``{"k": "malformed" | "invalid", "m": message,
"v": [[field, description], ...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

MALFORMED_HEADER = "x-lucid-malformed"
MAX_MARKER_CHARS = 2048
MAX_VIOLATIONS = 4


def encode_marker(message: str, violations: Sequence[tuple[str, str]], *, invalid: bool) -> str:
    """The marker for one request, its texts shortened until it fits MAX_MARKER_CHARS."""
    kept = list(violations)[:MAX_VIOLATIONS]
    text = ""
    for limit in (256, 64, 16):  # 16: at most (64 + 4 * 32) characters, 6 each escaped
        doc = {
            "k": "invalid" if invalid else "malformed",
            "m": message[: 4 * limit],
            "v": [[field[:limit], description[:limit]] for field, description in kept],
        }
        text = json.dumps(doc, ensure_ascii=True, separators=(",", ":"))
        if len(text) <= MAX_MARKER_CHARS:
            break
    return text
