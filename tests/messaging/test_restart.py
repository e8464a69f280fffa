"""Durability on sqlite: what got a 202 survives a restart of the control plane, queued or in
flight (an unacked delivery is redelivered after its deadline by the restarted process)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb

from .conftest import message, open_queue, with_messaging


async def test_messages_survive_a_restart(tmp_path: Path) -> None:
    settings = replace(with_messaging(), store_url=f"sqlite:///{tmp_path}/state.db")
    queued, held = message(), message(retryPolicy={"initialDelay": 100})
    async for q in open_queue(settings):
        await q.stub.PutConsumer(
            pb.PutConsumerRequest(
                service_name="tron-node", config=pb.ConsumerConfig(ack_wait_ms=300)
            ),
            metadata=q.md("tron-node"),
        )
        await q.send(held)
        [delivery] = await q.pull()
        assert delivery.message.message_id == held.message_id
        await q.send(queued)
    async for q in open_queue(settings):
        assert (await q.status(queued.message_id)).status == pb.MESSAGE_STATE_QUEUED
        [first] = await q.pull()
        assert first.message.message_id == queued.message_id
        await q.ack(first)
        [again] = await q.pull(wait_ms=5000)
        assert again.message.message_id == held.message_id and again.attempt == 2
        await q.ack(again)
        status = await q.status(held.message_id, as_="tron-node")
        assert status.status == pb.MESSAGE_STATE_DELIVERED
