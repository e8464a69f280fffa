"""The pure transitions of a stored message (lucid_cp/messaging/records.py)."""

from __future__ import annotations

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.messaging import records
from lucid_cp.validation import normalize

from .conftest import message as raw_message

NOW = 1_800_000_000.0


def message(**over: object) -> pb.InterServiceMessage:
    """As the server sees it: defaults applied."""
    msg = raw_message(**over)
    assert normalize(msg) == []
    return msg


def test_backoff_grows_by_the_multiplier_up_to_the_maximum() -> None:
    policy = records.retry_policy(message(retryPolicy={"initialDelay": 200, "maxDelay": 1000}))
    assert [records.backoff(policy, n) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.0]
    defaults = records.retry_policy(message())
    assert (defaults.max_attempts, defaults.initial_delay, defaults.max_delay) == (3, 1000, 10000)
    assert defaults.backoff_multiplier == 2.0


def test_a_record_cannot_outgrow_the_store_limit() -> None:
    msg = message(retryPolicy={"maxAttempts": 10})
    msg.payload["blob"] = "x" * (255 * 1024)
    record = records.new_record(msg, NOW)
    for round_ in range(20):  # replayed again and again, every error as long as allowed
        for _ in range(10):
            record = records.claim(record, NOW, "consumer c on r", "r", 30)
            record = records.fail_attempt(
                record, NOW, pb.ATTEMPT_OUTCOME_NACKED, "\U0001f525" * 4096, retryable=True
            )
        assert record.state == records.FAILED and record.dead_lettered, round_
        record = records.replay(record, NOW)
    assert len(record.history) == records.MAX_HISTORY
    assert all(len(a.error) == records.MAX_ERROR_CHARS for a in record.history)
    assert record.ByteSize() < 1024 * 1024


def test_an_expired_message_is_not_requeued_after_a_failed_attempt() -> None:
    record = records.claim(records.new_record(message(ttl=5), NOW), NOW, "c", "r", 30)
    later = records.time_out(record, NOW + 31)
    assert later.state == records.EXPIRED and not later.dead_lettered
    assert later.history[-1].outcome == pb.ATTEMPT_OUTCOME_TIMED_OUT


def test_the_push_body_uses_the_rest_names() -> None:
    body = records.push_body(records.new_record(message(priority="PRIORITY_CRITICAL"), NOW).message)
    assert body["priority"] == "critical" and body["retryPolicy"]["maxAttempts"] == 3
    assert set(body) >= {"messageId", "source", "destination", "payload", "ttl"}
