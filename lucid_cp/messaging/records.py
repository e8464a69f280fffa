"""A stored message's life, as pure functions: every transition takes a record and the time and
returns the next record (a copy; the input is never changed). No I/O: the queue core
(``queue.py``) writes what these return with a compare-and-swap.

    queued --claim--> processing --ack / push 2xx--> delivered
      ^  |                |
      |  |                +--nack, push failure, ack deadline passed--> queued (backoff)
      |  |                |                                          or failed (dead-lettered)
      |  +--expires_at passed before a claim--> expired
      +--replay-- failed (dead-lettered)

The backoff before attempt n+1 is min(initialDelay * multiplier^(n-1), maxDelay) ms; a message
with ``attempt >= maxAttempts`` is failed instead of re-queued.
"""

from __future__ import annotations

import hashlib
from functools import cache

from google.protobuf import json_format, timestamp_pb2

from lucid_cp.api.lucid.common.v1 import options_pb2
from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.api.lucid.messaging.v1 import queue_storage_pb2 as spb
from lucid_cp.validation import normalize

QUEUED = pb.MESSAGE_STATE_QUEUED
PROCESSING = pb.MESSAGE_STATE_PROCESSING
DELIVERED = pb.MESSAGE_STATE_DELIVERED
FAILED = pb.MESSAGE_STATE_FAILED
EXPIRED = pb.MESSAGE_STATE_EXPIRED
FINAL = frozenset({DELIVERED, FAILED, EXPIRED})

# Write-time limits on headers (the proto caps their number at 64): with the 256 KiB payload the
# whole record stays far below the store's 1.5 MiB request limit, history included.
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 8192
MAX_HEADERS_BYTES = 64 * 1024
# Attempts kept in a record's history (replays add more; the oldest are dropped beyond it) and
# characters kept of each attempt's error: a record holds at most 256 KiB of payload, 64 KiB of
# headers and 50 * 4 KiB of errors, far below the store's 1.5 MiB request limit, so no later
# write of it can be refused.
MAX_HISTORY = 50
MAX_ERROR_CHARS = 1024
# What one answer carrying messages (a pull, a dead-letter page) may hold, serialized: well under
# gRPC's 4 MiB message limit, and above the largest message with its status (~600 KiB), so an
# answer always holds at least one.
ANSWER_BYTES = 2 * 1024 * 1024


def ts(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def seconds(stamp: timestamp_pb2.Timestamp) -> float:
    return stamp.ToNanoseconds() / 1e9


def digest(message: pb.InterServiceMessage) -> bytes:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).digest()


def retry_policy(message: pb.InterServiceMessage) -> pb.RetryPolicy:
    """The message's retry policy with the RetryConfig defaults filled in."""
    policy = pb.RetryPolicy()
    policy.CopyFrom(message.retry_policy)
    normalize(policy)  # applies the declared defaults to absent fields
    return policy


def backoff(policy: pb.RetryPolicy, attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
    delay_ms = policy.initial_delay * policy.backoff_multiplier ** max(0, attempt - 1)
    return min(delay_ms, policy.max_delay) / 1000.0


def header_errors(message: pb.InterServiceMessage) -> list[tuple[str, str]]:
    """(field, description) of every header over the write-time limits."""
    out: list[tuple[str, str]] = []
    total = 0
    for name, value in sorted(message.headers.items()):
        total += len(name.encode()) + len(value.encode())
        if len(name) > MAX_HEADER_NAME:
            out.append(
                (f"message.headers.{name[:40]}", f"names are at most {MAX_HEADER_NAME} chars")
            )
        elif len(value) > MAX_HEADER_VALUE:
            out.append((f"message.headers.{name}", f"must be at most {MAX_HEADER_VALUE} chars"))
    if total > MAX_HEADERS_BYTES:
        out.append(("message.headers", f"must be at most {MAX_HEADERS_BYTES} bytes in all"))
    return out


def new_record(message: pb.InterServiceMessage, now: float) -> spb.StoredMessage:
    """The record of a new message, with its defaults applied; its digest is of the message as
    stored (defaults applied), so a re-send that spells a default out is the same content."""
    record = spb.StoredMessage(state=QUEUED)
    record.message.CopyFrom(message)
    if record.message.priority == pb.PRIORITY_UNSPECIFIED:
        record.message.priority = pb.PRIORITY_NORMAL
    record.message.retry_policy.CopyFrom(retry_policy(message))
    record.digest = digest(record.message)
    record.queued_at.CopyFrom(ts(now))
    record.expires_at.CopyFrom(ts(now + message.ttl))
    record.updated_at.CopyFrom(ts(now))
    record.accepted.CopyFrom(
        pb.MessageResponse(
            message_id=message.message_id,
            status=QUEUED,
            queued_at=record.queued_at,
            expires_at=record.expires_at,
        )
    )
    return record


def _copy(record: spb.StoredMessage) -> spb.StoredMessage:
    out = spb.StoredMessage()
    out.CopyFrom(record)
    return out


def due(record: spb.StoredMessage, now: float) -> bool:
    """Queued and past its backoff (it may still have expired: check ``expired`` first)."""
    return record.state == QUEUED and (
        not record.HasField("next_attempt_at") or seconds(record.next_attempt_at) <= now
    )


def expired(record: spb.StoredMessage, now: float) -> bool:
    return seconds(record.expires_at) <= now


def deadline_passed(record: spb.StoredMessage, now: float) -> bool:
    return record.state == PROCESSING and seconds(record.claim.ack_deadline) <= now


def claim(
    record: spb.StoredMessage, now: float, consumer: str, replica: str, ack_wait: float
) -> spb.StoredMessage:
    """queued -> processing: the next attempt, held by ``consumer`` until now + ack_wait."""
    out = _copy(record)
    out.state = PROCESSING
    out.attempt += 1
    out.ClearField("next_attempt_at")
    out.claim.CopyFrom(
        spb.Claim(consumer=consumer, replica=replica, ack_deadline=ts(now + ack_wait))
    )
    out.history.append(
        pb.Attempt(
            number=out.attempt,
            started_at=ts(now),
            outcome=pb.ATTEMPT_OUTCOME_PENDING,
            consumer=consumer,
        )
    )
    del out.history[:-MAX_HISTORY]
    out.updated_at.CopyFrom(ts(now))
    return out


def _end_attempt(out: spb.StoredMessage, now: float, outcome: int, error: str) -> None:
    last = out.history[-1] if out.history else None
    if last is None or last.number != out.attempt or last.outcome != pb.ATTEMPT_OUTCOME_PENDING:
        last = out.history.add(number=out.attempt, started_at=ts(now))
    last.ended_at.CopyFrom(ts(now))
    last.outcome = outcome  # type: ignore[assignment]
    last.error = error[:MAX_ERROR_CHARS]
    del out.history[:-MAX_HISTORY]
    out.ClearField("claim")
    out.updated_at.CopyFrom(ts(now))


def deliver(
    record: spb.StoredMessage, now: float, delivered_to: str, outcome: int
) -> spb.StoredMessage:
    """processing -> delivered (an ack, or a push answered 2xx)."""
    out = _copy(record)
    _end_attempt(out, now, outcome, "")
    out.state = DELIVERED
    out.delivered_to = delivered_to
    out.processing_time = round((now - seconds(out.queued_at)) * 1000.0, 3)
    return out


def fail_attempt(
    record: spb.StoredMessage, now: float, outcome: int, error: str, *, retryable: bool
) -> spb.StoredMessage:
    """The current attempt failed: expired when its TTL passed meanwhile (even if it was the
    last attempt: a message past its TTL is never dead-lettered); otherwise queued again after
    the backoff, or failed (dead-lettered) when it may not be retried or was the last one."""
    out = _copy(record)
    _end_attempt(out, now, outcome, error)
    out.ClearField("next_attempt_at")
    if expired(out, now):
        out.state = EXPIRED
        return out
    policy = retry_policy(out.message)
    if not retryable or out.attempt >= policy.max_attempts:
        out.state = FAILED
        out.dead_lettered = True
        return out
    out.state = QUEUED
    out.next_attempt_at.CopyFrom(ts(now + backoff(policy, out.attempt)))
    return out


def nack_retryable(record: spb.StoredMessage, error: str, retryable: bool) -> bool:
    """A nack is retried when the consumer says so and, if the message lists retryable errors,
    its error starts with one of them."""
    prefixes = list(record.message.retry_policy.retryable_errors)
    return retryable and (not prefixes or any(error.startswith(p) for p in prefixes))


def time_out(record: spb.StoredMessage, now: float) -> spb.StoredMessage:
    """The ack deadline passed: a timed-out attempt, then as any failed attempt."""
    waited = now - seconds(record.history[-1].started_at) if record.history else 0.0
    error = f"no ack before the ack deadline ({waited:.1f}s after it was handed out)"
    return fail_attempt(record, now, pb.ATTEMPT_OUTCOME_TIMED_OUT, error, retryable=True)


def expire(record: spb.StoredMessage, now: float) -> spb.StoredMessage:
    out = _copy(record)
    out.state = EXPIRED
    out.ClearField("next_attempt_at")
    out.updated_at.CopyFrom(ts(now))
    return out


def no_instance(record: spb.StoredMessage, now: float, service: str) -> spb.StoredMessage:
    """Push found no healthy instance to send to: a failed attempt of its own."""
    out = _copy(record)
    out.attempt += 1
    out.history.add(number=out.attempt, started_at=ts(now), outcome=pb.ATTEMPT_OUTCOME_PENDING)
    return fail_attempt(
        out,
        now,
        pb.ATTEMPT_OUTCOME_NO_INSTANCE,
        f"no healthy instance of {service} to push to",
        retryable=True,
    )


def replay(record: spb.StoredMessage, now: float) -> spb.StoredMessage:
    """failed (dead-lettered) -> queued: attempts from zero, a new TTL, the history kept."""
    out = _copy(record)
    out.state = QUEUED
    out.attempt = 0
    out.dead_lettered = False
    out.delivered_to = ""
    out.processing_time = 0.0
    out.ClearField("claim")
    out.ClearField("next_attempt_at")
    out.queued_at.CopyFrom(ts(now))
    out.expires_at.CopyFrom(ts(now + out.message.ttl))
    out.updated_at.CopyFrom(ts(now))
    return out


def visible_to(record: spb.StoredMessage, subject: str, is_admin: bool) -> bool:
    """The source, the destination and admins may see a message; nobody else learns it exists."""
    return is_admin or subject in (record.message.source, record.message.destination)


def status(record: spb.StoredMessage, revision: int) -> pb.MessageStatus:
    out = pb.MessageStatus(
        message_id=record.message.message_id,
        status=record.state,
        attempts=record.attempt,
        delivered_to=record.delivered_to,
        processing_time=record.processing_time,
        source=record.message.source,
        destination=record.message.destination,
        priority=record.message.priority,
        dead_lettered=record.dead_lettered,
        revision=revision,
        correlation_id=record.message.correlation_id,
    )
    out.timestamp.CopyFrom(record.updated_at)
    out.queued_at.CopyFrom(record.queued_at)
    out.expires_at.CopyFrom(record.expires_at)
    out.history.extend(record.history)
    if record.history:
        last = record.history[-1]
        out.last_attempt.CopyFrom(last.started_at)
        out.error = last.error
    if record.state == QUEUED and record.HasField("next_attempt_at"):
        out.next_attempt_at.CopyFrom(record.next_attempt_at)
    return out


def delivery(record: spb.StoredMessage) -> pb.Delivery:
    return pb.Delivery(
        message=record.message, attempt=record.attempt, ack_deadline=record.claim.ack_deadline
    )


def accepted(record: spb.StoredMessage, revision: int) -> pb.MessageResponse:
    out = pb.MessageResponse()
    out.CopyFrom(record.accepted)
    out.revision = revision
    return out


@cache
def _priority_wire() -> dict[str, str]:
    return {
        v.name: v.GetOptions().Extensions[options_pb2.wire]
        for v in pb.Priority.DESCRIPTOR.values
        if v.GetOptions().HasExtension(options_pb2.wire)
    }


def push_body(message: pb.InterServiceMessage) -> dict[str, object]:
    """The message as the REST API shows it (proto3 JSON names, the enum wire strings): what a
    push POSTs."""
    body = json_format.MessageToDict(message)
    priority = body.get("priority")
    if isinstance(priority, str):
        body["priority"] = _priority_wire().get(priority, priority)
    return body
