"""Store key layout of the message queue (see proto/lucid/messaging/v1/queue_storage.proto).

/lucid-messaging/messages/<messageId>                          StoredMessage
/lucid-messaging/dead/<destination>/<create revision>/<messageId>   b"" (the dead-letter listing)
/lucid-messaging/consumers/<serviceName>                       ConsumerConfigResponse

Message ids are UUIDs and service names match ^[a-z0-9-]+$, so "/" never occurs inside a
segment. The create revision is zero-padded to 20 digits: the listing of one destination is in
send (commit) order by key alone.
"""

from __future__ import annotations

PREFIX = b"/lucid-messaging/"
MESSAGES = PREFIX + b"messages/"
DEAD = PREFIX + b"dead/"
CONSUMERS = PREFIX + b"consumers/"
_REVISION_DIGITS = 20


def message_key(message_id: str) -> bytes:
    return MESSAGES + message_id.encode()


def dead_key(destination: str, create_revision: int, message_id: str) -> bytes:
    return DEAD + f"{destination}/{create_revision:0{_REVISION_DIGITS}d}/{message_id}".encode()


def dead_prefix(destination: str = "") -> bytes:
    return DEAD + f"{destination}/".encode() if destination else DEAD


def consumer_key(service_name: str) -> bytes:
    return CONSUMERS + service_name.encode()


def message_id_of(key: bytes) -> str | None:
    """The message id of a message record's key, None for any other key."""
    if not key.startswith(MESSAGES):
        return None
    rest = key[len(MESSAGES) :].decode()
    return rest if rest and "/" not in rest else None


def consumer_of(key: bytes) -> str | None:
    """The service name of a consumer configuration's key, None for any other key."""
    if not key.startswith(CONSUMERS):
        return None
    rest = key[len(CONSUMERS) :].decode()
    return rest if rest and "/" not in rest else None


def parse_dead(key: bytes) -> tuple[str, int, str] | None:
    """(destination, create revision, message id) of a dead-letter key."""
    if not key.startswith(DEAD):
        return None
    parts = key[len(DEAD) :].decode().split("/")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]
