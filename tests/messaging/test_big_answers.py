"""Answers that carry many big messages stay under gRPC's 4 MiB message limit: a pull and a
dead-letter page are capped at about 2 MiB (at least one message each), and what did not fit
stays where it was, for the next call."""

from __future__ import annotations

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb

from .conftest import Queue, message

BIG = "x" * 200_000  # a 200 KB payload: 25 of them are over 4 MiB
CAP = 2 * 1024 * 1024


async def test_a_pull_of_big_messages_is_capped_and_the_rest_stays_queued(q: Queue) -> None:
    # Regression: the pull claimed all 25, its answer was refused (RESOURCE_EXHAUSTED) and the
    # messages stayed processing, unseen, burning their attempts.
    sent = [message(payload={"n": n, "blob": BIG}) for n in range(25)]
    for msg in sent:
        await q.send(msg)
    pulled: list[pb.Delivery] = []
    while len(pulled) < len(sent):
        batch = await q.pull(max_messages=25)
        assert batch, "every message is pulled in the end"
        size = pb.PullMessagesResponse(deliveries=batch).ByteSize()
        assert size <= CAP + 4096, size
        assert len(batch) < 25
        pulled += batch
        left = {m.message_id for m in sent} - {d.message.message_id for d in pulled}
        for message_id in left:  # not handed out: still queued, no attempt spent
            status = await q.status(message_id)
            assert (status.status, status.attempts) == (pb.MESSAGE_STATE_QUEUED, 0)
    assert [int(d.message.payload["n"]) for d in pulled] == list(range(25))
    assert {d.attempt for d in pulled} == {1}
    assert await q.pull() == []


async def test_one_message_is_always_pulled_however_big(q: Queue) -> None:
    huge = "y" * (255 * 1024)
    await q.send(message(payload={"blob": huge}, headers={f"h{n}": "z" * 1000 for n in range(60)}))
    [delivery] = await q.pull()
    assert delivery.message.payload["blob"] == huge


async def test_dead_letters_of_big_messages_are_listed_in_capped_pages(q: Queue) -> None:
    # Regression: a page of 25 big dead letters was over 4 MiB: none could be listed.
    sent = [message(payload={"n": n, "blob": BIG}) for n in range(25)]
    for msg in sent:
        await q.send(msg)
    failed = 0
    while failed < len(sent):
        for delivery in await q.pull(max_messages=25):
            await q.nack(delivery, "poison", retryable=False)
            failed += 1
    listed: list[str] = []
    while True:
        page = await q.stub.ListDeadLetters(
            pb.ListDeadLettersRequest(destination="tron-node", offset=len(listed)),
            metadata=q.md("tron-node"),
        )
        assert page.total == 25 and page.ByteSize() <= CAP + 4096
        if not page.dead_letters:
            break
        assert len(page.dead_letters) < 25
        listed += [d.message.message_id for d in page.dead_letters]
    assert listed == [m.message_id for m in sent]
