"""Who may do what (403 for acting as another service, 404 for messages the caller neither
sent nor received) and bad input (400, LUCID_ERR_1301, field violations, nothing stored)."""

from __future__ import annotations

import grpc

from lucid_cp.api.lucid.messaging.v1 import delivery_pb2 as dpb
from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb

from .conftest import Queue, message, rpc_error

FORBIDDEN = (grpc.StatusCode.PERMISSION_DENIED, "LUCID_ERR_1902")
NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "LUCID_ERR_1907")


async def test_send_only_as_yourself(q: Queue) -> None:
    msg = message(source="tron-node")
    code, reason, _ = await rpc_error(q.send(msg, md=q.md("api-gateway")))
    assert (code, reason) == FORBIDDEN
    sent = await q.send(msg, md=q.admin)  # an admin may send for anyone
    assert sent.status == pb.MESSAGE_STATE_QUEUED


async def test_status_is_for_source_destination_and_admins(q: Queue) -> None:
    msg = message()
    await q.send(msg)
    for reader in ("api-gateway", "tron-node"):
        assert (await q.status(msg.message_id, as_=reader)).source == "api-gateway"
    admin = await q.stub.GetMessageStatus(
        pb.GetMessageStatusRequest(message_id=msg.message_id), metadata=q.admin
    )
    assert admin.destination == "tron-node"
    # Anyone else cannot tell it from a message that does not exist.
    outsider = await rpc_error(q.status(msg.message_id, as_="wallet-svc"))
    missing = await rpc_error(q.status(message().message_id, as_="wallet-svc"))
    assert outsider[:2] == missing[:2] == NOT_FOUND


async def test_only_the_destination_pulls_acks_and_replays(q: Queue) -> None:
    msg = message()
    await q.send(msg)
    code, reason, _ = await rpc_error(
        q.stub.PullMessages(
            pb.PullMessagesRequest(service_name="tron-node"), metadata=q.md("api-gateway")
        )
    )
    assert (code, reason) == FORBIDDEN
    [delivery] = await q.pull()
    for outsider in ("api-gateway", "wallet-svc"):  # the source cannot ack either
        code, reason, _ = await rpc_error(
            q.stub.AckMessage(
                pb.AckMessageRequest(message_id=msg.message_id, attempt=1),
                metadata=q.md(outsider),
            )
        )
        assert (code, reason) == NOT_FOUND
    await q.nack(delivery, "poison", retryable=False)
    code, reason, _ = await rpc_error(
        q.stub.ReplayDeadLetter(
            pb.ReplayDeadLetterRequest(message_id=msg.message_id), metadata=q.md("api-gateway")
        )
    )
    assert (code, reason) == NOT_FOUND
    code, reason, _ = await rpc_error(
        q.stub.ListDeadLetters(
            pb.ListDeadLettersRequest(destination="tron-node"), metadata=q.md("api-gateway")
        )
    )
    assert (code, reason) == FORBIDDEN
    own = await q.stub.ListDeadLetters(pb.ListDeadLettersRequest(), metadata=q.md("tron-node"))
    assert own.total == 1  # a service token without a destination: its own
    theirs = await q.stub.ListDeadLetters(pb.ListDeadLettersRequest(), metadata=q.md("api-gateway"))
    assert theirs.total == 0


async def test_consumer_configuration_is_the_own_service_s(q: Queue) -> None:
    config = pb.ConsumerConfig(delivery_mode=dpb.DELIVERY_MODE_PULL)
    request = pb.PutConsumerRequest(service_name="tron-node", config=config)
    code, reason, _ = await rpc_error(q.stub.PutConsumer(request, metadata=q.md("api-gateway")))
    assert (code, reason) == FORBIDDEN
    code, reason, _ = await rpc_error(
        q.stub.GetConsumer(
            pb.GetConsumerRequest(service_name="tron-node"), metadata=q.md("api-gateway")
        )
    )
    assert (code, reason) == FORBIDDEN
    defaults = await q.stub.GetConsumer(
        pb.GetConsumerRequest(service_name="tron-node"), metadata=q.md("tron-node")
    )
    assert defaults.revision == 0 and defaults.config.max_in_flight == 10
    assert defaults.config.ack_wait_ms == 30_000
    written = await q.stub.PutConsumer(request, metadata=q.admin)
    read = await q.stub.GetConsumer(
        pb.GetConsumerRequest(service_name="tron-node"), metadata=q.md("tron-node")
    )
    assert read.revision == written.revision > 0 and read.config == written.config


def _violations(found: tuple[grpc.StatusCode, str, list[tuple[str, str]]]) -> list[str]:
    code, reason, violations = found
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "LUCID_ERR_1301"), found
    return [field for field, _ in violations]


async def test_bad_messages_are_refused_and_nothing_is_stored(q: Queue) -> None:
    big = message()
    big.payload["blob"] = "x" * (256 * 1024)
    bad_priority = message()
    bad_priority.priority = 99  # type: ignore[assignment]
    cases = {
        "message.payload": big,
        "message.priority": bad_priority,
        "message.ttl": message(ttl=0),
        "message.retryPolicy.maxAttempts": message(retryPolicy={"maxAttempts": 11}),
    }
    cases_86401 = message(ttl=86401)
    for field, msg in [*cases.items(), ("message.ttl", cases_86401)]:
        assert field in _violations(await rpc_error(q.send(msg))), field
        code, _, _ = await rpc_error(q.status(msg.message_id))
        assert code == grpc.StatusCode.NOT_FOUND
    headers = message(headers={"x-big": "v" * 9000})
    assert "message.headers.x-big" in _violations(await rpc_error(q.send(headers)))
    assert len(q.system.index) == 0
    assert await q.pull() == []


async def test_bad_consumer_configurations_are_refused(q: Queue) -> None:
    md = q.md("tron-node")
    for config, field in (
        (pb.ConsumerConfig(delivery_mode=7), "config.deliveryMode"),  # type: ignore[arg-type]
        (
            pb.ConsumerConfig(delivery_mode=dpb.DELIVERY_MODE_PUSH),
            "config.path",
        ),  # push needs a path
        (pb.ConsumerConfig(max_in_flight=0), "config.maxInFlight"),
        (pb.ConsumerConfig(ack_wait_ms=50), "config.ackWaitMs"),
    ):
        request = pb.PutConsumerRequest(service_name="tron-node", config=config)
        assert field in _violations(await rpc_error(q.stub.PutConsumer(request, metadata=md)))
    read = await q.stub.GetConsumer(pb.GetConsumerRequest(service_name="tron-node"), metadata=md)
    assert read.revision == 0  # nothing was stored
