"""PublishEvent over gRPC: 202 after the append, sequences in store order, idempotent re-publish,
409 for other content, 403 for another source, 400 with field violations and nothing stored."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from google.protobuf import struct_pb2

from lucid_cp.api.lucid.messaging.v1 import event_storage_pb2 as spb
from lucid_cp.events import keys

from .conftest import ADMIN, Events, auth, event, rpc_error


async def stored_events(events: Events) -> list[spb.StoredEvent]:
    page = await events.plane.store.range(keys.LOG)
    return [spb.StoredEvent.FromString(kv.value) for kv in page.kvs]


async def test_publish_appends_with_a_sequence_and_revision(events: Events) -> None:
    ev = event("session.created", data={"user": "u1"})
    first = await events.publish(ev)
    assert first.event_id == ev.event_id and first.sequence == 1
    assert first.revision > 0 and first.accepted_at.seconds > 0
    second = await events.publish(event("session.deleted"))
    assert second.sequence == 2 and second.revision > first.revision
    stored = await stored_events(events)
    assert [s.event.sequence for s in stored] == [1, 2]
    assert stored[0].event.data["user"] == "u1"
    assert stored[0].event.version == "1.0"  # the declared default
    assert stored[0].event.HasField("timestamp")  # absent: the control plane's at append


async def test_a_given_sequence_is_replaced(events: Events) -> None:
    response = await events.publish(event(sequence=99))
    assert response.sequence == 1


async def test_republishing_the_same_event_answers_the_first_answer(events: Events) -> None:
    ev = event(timestamp="2026-01-01T00:00:00Z")
    first = await events.publish(ev)
    await events.publish(event())
    again = await events.publish(ev)
    assert again == first
    assert len(await stored_events(events)) == 2


async def test_same_event_id_with_other_content_is_409(events: Events) -> None:
    ev = event(data={"n": 1})
    first = await events.publish(ev)
    other = event(eventId=ev.event_id, data={"n": 2})
    code, reason, _, meta = await rpc_error(events.publish(other))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "LUCID_ERR_1908")
    assert meta["eventId"] == ev.event_id and meta["sequence"] == str(first.sequence)
    assert len(await stored_events(events)) == 1


async def test_concurrent_publishes_are_grouped_and_sequenced_in_store_order(
    events: Events,
) -> None:
    published = [event(data={"i": i}) for i in range(120)]
    answers = await asyncio.gather(*(events.publish(e) for e in published))
    assert sorted(a.sequence for a in answers) == list(range(1, 121))
    stored = await stored_events(events)
    assert [s.event.sequence for s in stored] == list(range(1, 121))
    # Store order is sequence order: every txn's revision grows with its sequences.
    by_sequence = sorted(answers, key=lambda a: a.sequence)
    revisions = [a.revision for a in by_sequence]
    assert revisions == sorted(revisions)


async def test_concurrent_duplicates_in_one_batch_are_stored_once(events: Events) -> None:
    ev = event()
    answers = await asyncio.gather(*(events.publish(ev) for _ in range(10)))
    assert {a.sequence for a in answers} == {1}
    assert len(await stored_events(events)) == 1


async def test_another_source_is_403_admin_may_publish_for_anyone(events: Events) -> None:
    code, reason, _, _ = await rpc_error(
        events.publish(event(source="wallet-api"), md=auth("api-gateway"))
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "LUCID_ERR_1902")
    assert (await events.publish(event(source="wallet-api"), md=ADMIN)).sequence == 1


async def test_the_control_plane_source_is_reserved(events: Events) -> None:
    code, _, _, _ = await rpc_error(events.publish(event(source="lucid-cp"), md=ADMIN))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def _big_data() -> dict[str, str]:
    return {"blob": "x" * (64 * 1024)}


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"eventType": "Session.Created"}, "event.eventType"),
        ({"eventType": "session created"}, "event.eventType"),
        ({"eventType": "session."}, "event.eventType"),
        ({"eventType": ".session"}, "event.eventType"),
        ({"eventType": "session..created"}, "event.eventType"),
        ({"eventType": "."}, "event.eventType"),
        ({"eventId": "not-a-uuid"}, "event.eventId"),
        ({"source": "ab"}, "event.source"),
        ({"data": _big_data()}, "event.data"),
        ({"tags": {f"t{i}": "v" for i in range(33)}}, "event.tags"),
        ({"correlationId": "nope"}, "event.correlationId"),
    ],
)
async def test_invalid_events_are_400_with_field_violations_and_nothing_stored(
    events: Events, over: dict[str, object], field: str
) -> None:
    ev = event(**over)
    code, reason, violations, _ = await rpc_error(events.publish(ev, md=ADMIN))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "LUCID_ERR_1302")
    assert field in [f for f, _ in violations], violations
    assert await stored_events(events) == []


async def test_missing_data_is_400(events: Events) -> None:
    ev = event()
    ev.ClearField("data")
    code, _, violations, _ = await rpc_error(events.publish(ev))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "event.data" in [f for f, _ in violations], violations


async def test_too_deep_data_is_400(events: Events) -> None:
    ev = event()
    deep = struct_pb2.Struct()
    inner = deep
    for _ in range(25):
        inner = inner.get_or_create_struct("d")
    ev.data.CopyFrom(deep)
    code, _, _, _ = await rpc_error(events.publish(ev))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert await stored_events(events) == []


async def test_ids_are_recorded_with_the_first_answer(events: Events) -> None:
    ev = event()
    answer = await events.publish(ev)
    kv = await events.plane.store.get(keys.id_key(ev.event_id))
    assert kv is not None
    record = spb.StoredEventId.FromString(kv.value)
    assert record.response.sequence == answer.sequence
    assert kv.create_revision == answer.revision
    assert uuid.UUID(ev.event_id)
