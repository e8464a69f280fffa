"""Store key layout of the event stream. Everything lives under /lucid-events/.

/lucid-events/head                      the last appended sequence (ASCII int; absent: 0)
/lucid-events/log/<sequence:020d>       StoredEvent (event_storage.proto), one per sequence
/lucid-events/ids/<eventId>             StoredEventId: the first answer and a content digest
/lucid-events/retention                 the oldest retained sequence (ASCII int; absent: 1)
/lucid-events/subscriptions/<id>        EventSubscriptionResponse as stored (head and revision
                                        are filled on read)
/lucid-events/owners/<id>|retention     the replica delivering a push subscription (or sweeping
                                        the log), under that replica's lease
/lucid-events/feed/services             FeedCheckpoint: the instances the service feed has
                                        reported, for a start to diff against

Sequences are zero-padded so key order is sequence order: a range from log/<n> reads the log
from sequence n on. Ids and subscription ids are UUIDs, so "/" never occurs inside a segment.
"""

from __future__ import annotations

PREFIX = b"/lucid-events/"
HEAD = PREFIX + b"head"
LOG = PREFIX + b"log/"
IDS = PREFIX + b"ids/"
RETENTION = PREFIX + b"retention"
SUBSCRIPTIONS = PREFIX + b"subscriptions/"
OWNERS = PREFIX + b"owners/"
RETENTION_OWNER = "retention"
FEED_CHECKPOINT = PREFIX + b"feed/services"


def log_key(sequence: int) -> bytes:
    return LOG + f"{sequence:020d}".encode()


def sequence_of(key: bytes) -> int | None:
    """The sequence of a log key, None for anything else."""
    if not key.startswith(LOG):
        return None
    rest = key[len(LOG) :]
    return int(rest) if len(rest) == 20 and rest.isdigit() else None


def id_key(event_id: str) -> bytes:
    return IDS + event_id.encode()


def subscription_key(subscription_id: str) -> bytes:
    return SUBSCRIPTIONS + subscription_id.encode()


def owner_key(name: str) -> bytes:
    return OWNERS + name.encode()


def parse_int(value: bytes | None, default: int) -> int:
    """An ASCII int record (head, retention); ``default`` when absent."""
    return int(value) if value else default
