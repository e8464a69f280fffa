"""Checks and helpers of the store contract shared by every backend (see ``base``).

Each backend validates a request with these before it runs or sends it, so all of them refuse
the same requests with the same errors, etcd's limits included.
"""

from __future__ import annotations

from collections.abc import Sequence

from lucid_cp.store.base import (
    MAX_LEASE_TTL,
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    MIN_LEASE_TTL,
    OP_OVERHEAD_BYTES,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Get,
    KeyValue,
    Put,
    RequestTooLargeError,
    TooManyOpsError,
    TxnOp,
)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``; None if unbounded."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def check_key(key: bytes) -> None:
    if not isinstance(key, bytes):
        raise TypeError(f"keys are bytes, got {type(key).__name__}")
    if not key:
        raise ValueError("key must not be empty")


def validate_txn_branch(ops: Sequence[TxnOp]) -> None:
    """etcd's rule for one txn branch: a key is put at most once, and no delete covers a put key."""
    put_keys: set[bytes] = set()
    deletes: list[Delete] = []
    for op in ops:
        if isinstance(op, Put):
            check_key(op.key)
            if op.key in put_keys:
                raise ValueError(f"key {op.key!r} is put twice in one txn branch")
            put_keys.add(op.key)
        elif isinstance(op, Delete):
            if not op.prefix:
                check_key(op.key)
            deletes.append(op)
        elif isinstance(op, Get):
            check_key(op.key)
        else:
            raise TypeError(f"unknown txn op {op!r}")
    for d in deletes:
        for key in put_keys:
            if key.startswith(d.key) if d.prefix else key == d.key:
                raise ValueError(f"key {key!r} is both put and deleted in one txn branch")


def validate_compare(c: Compare) -> None:
    check_key(c.key)
    if c.target is CompareTarget.VALUE:
        if not isinstance(c.value, bytes):
            raise TypeError("a VALUE compare needs a bytes value")
    elif not isinstance(c.value, int) or isinstance(c.value, bool):
        raise TypeError(f"a {c.target.name} compare needs an int value")


def compare_holds(op: CompareOp, actual: int | bytes, expected: int | bytes) -> bool:
    if op is CompareOp.EQUAL:
        return actual == expected
    if op is CompareOp.NOT_EQUAL:
        return actual != expected
    if op is CompareOp.GREATER:
        return actual > expected  # type: ignore[operator]
    return actual < expected  # type: ignore[operator]


def holds(c: Compare, kv: KeyValue | None) -> bool:
    """Whether ``c`` holds for the key as ``kv`` shows it (None: the key does not exist)."""
    if kv is None:
        if c.target is CompareTarget.VALUE:
            return False  # as etcd: a value compare on a missing key never holds
        actual: int | bytes = 0
    elif c.target is CompareTarget.VALUE:
        actual = kv.value
    elif c.target is CompareTarget.CREATE:
        actual = kv.create_revision
    elif c.target is CompareTarget.MOD:
        actual = kv.mod_revision
    elif c.target is CompareTarget.VERSION:
        actual = kv.version
    else:
        actual = kv.lease
    return compare_holds(c.op, actual, c.value)


def op_bytes(op: TxnOp) -> int:
    if isinstance(op, Put):
        return len(op.key) + len(op.value) + OP_OVERHEAD_BYTES
    if isinstance(op, Delete) and op.prefix:
        return 2 * len(op.key) + OP_OVERHEAD_BYTES  # etcd sends the range end too
    return len(op.key) + OP_OVERHEAD_BYTES


def check_request_size(size: int) -> None:
    if size > MAX_REQUEST_BYTES:
        raise RequestTooLargeError(
            f"request of {size} bytes is larger than the {MAX_REQUEST_BYTES} bytes allowed"
        )


def check_put(key: bytes, value: bytes) -> None:
    """A single put: a valid key and a request within :data:`MAX_REQUEST_BYTES`."""
    check_key(key)
    check_request_size(op_bytes(Put(key, value)))


def check_txn(
    compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp]
) -> None:
    """Every rule a txn must satisfy before it runs: etcd's op-count and size limits (checked
    first, as etcd does at its API boundary), then the compares and each branch."""
    longest = max(len(compares), len(success), len(failure))
    if longest > MAX_TXN_OPS:
        raise TooManyOpsError(
            f"a txn holds at most {MAX_TXN_OPS} compares, success ops and failure ops each;"
            f" got {len(compares)}, {len(success)} and {len(failure)}"
        )
    size = sum(op_bytes(op) for op in (*success, *failure))
    for c in compares:
        value = c.value if isinstance(c.value, bytes) else b""
        size += len(c.key) + len(value) + OP_OVERHEAD_BYTES
    check_request_size(size)
    for c in compares:
        validate_compare(c)
    validate_txn_branch(success)
    validate_txn_branch(failure)


def granted_ttl(ttl: int) -> int:
    """The ttl etcd grants for a request of ``ttl`` seconds: at least :data:`MIN_LEASE_TTL`."""
    if ttl > MAX_LEASE_TTL:
        raise ValueError(f"a lease ttl is at most {MAX_LEASE_TTL} seconds")
    return max(ttl, MIN_LEASE_TTL)
