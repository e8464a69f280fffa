"""The REST JSON of the messages the event stream sends outside gRPC (push bodies) and puts in
event data (the control plane's own events): the one REST JSON definition, the gateway's codec,
so a pushed event reads exactly like one pulled over REST."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from gateway.codec import encode_message, enum_wire
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb


def to_json(message: Message) -> dict[str, Any]:
    return encode_message(message)


def to_struct(message: Message) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(to_json(message))
    return struct


def push_body(subscription_id: str, events: Sequence[pb.ServiceEvent], cursor: int) -> bytes:
    """What a push POSTs: {"subscriptionId", "events": [...], "cursor"}."""
    body = {
        "subscriptionId": subscription_id,
        "events": [to_json(e) for e in events],
        "cursor": cursor,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def enum_string(enum: EnumDescriptor, number: int) -> str:
    """An enum value's REST string ("healthy")."""
    return str(enum_wire(enum).encode(number))
