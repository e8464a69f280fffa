"""The status writer against a real (memory) store: batching, races, gone records, coalescing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.clock import SystemClock
from lucid_cp.discovery import keys
from lucid_cp.discovery.health.writer import StatusWriter, WriteOutcome
from lucid_cp.discovery.records import decode_record, encode_record
from lucid_cp.store.base import Compare, TxnOp, TxnResult
from lucid_cp.store.memory import MemoryStore

from .flaky import FlakyStore
from .targets import wait_until

HEALTHY, UNHEALTHY = pb.HEALTH_STATE_HEALTHY, pb.HEALTH_STATE_UNHEALTHY


class Store(FlakyStore):
    """Runs ``after_read`` once, right after the writer's first (read) txn."""

    after_read: object = None

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        result = await super().txn(compares, success, failure)
        hook, self.after_read = self.after_read, None
        if hook is not None:
            await hook()  # type: ignore[operator]
        return result


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    backend = Store(MemoryStore())
    try:
        yield backend
    finally:
        await backend.close()


async def put_instance(store: Store, n: int) -> tuple[str, pb.ServiceInstance]:
    lease = await store.grant_lease(300)
    instance = pb.ServiceInstance(
        service_id=f"00000000-0000-4000-8000-{n:012d}",
        status=pb.HEALTH_STATE_UNKNOWN,
    )
    instance.health.status = pb.HEALTH_STATE_UNKNOWN
    await store.put(
        keys.instance_key(instance.service_id), encode_record(instance, lease.id), lease=lease.id
    )
    return instance.service_id, instance


async def lease_of(store: Store, service_id: str) -> int:
    kv = await store.get(keys.instance_key(service_id))
    assert kv is not None
    return decode_record(kv.value, kv.mod_revision)[1]


async def read(store: Store, service_id: str) -> pb.ServiceInstance | None:
    kv = await store.get(keys.instance_key(service_id))
    return decode_record(kv.value, kv.mod_revision)[0] if kv is not None else None


async def test_a_batch_is_one_txn_and_a_raced_record_only_costs_itself(store: Store) -> None:
    instances = [await put_instance(store, n) for n in range(10)]
    outcomes: dict[str, WriteOutcome] = {}
    writer = StatusWriter(
        store, lambda s, o, r: outcomes.__setitem__(s, o), SystemClock(), concurrency=1
    )
    raced_id, raced = instances[3]

    async def manual_update() -> None:
        updated = pb.ServiceInstance()
        updated.CopyFrom(raced)
        updated.health.status = UNHEALTHY
        updated.health.source = pb.HEALTH_SOURCE_MANUAL
        key = keys.instance_key(raced_id)
        lease = await lease_of(store, raced_id)
        await store.inner.put(key, encode_record(updated, lease), lease=lease)

    store.after_read = manual_update
    for service_id, instance in instances:
        writer.submit(service_id, pb.HealthStatus(status=HEALTHY), instance.health)
    txns = store.txns
    writer.start()
    try:
        await wait_until(lambda: len(outcomes) == 10, 5, "every write settled")
    finally:
        await writer.stop()
    assert outcomes.pop(raced_id) is WriteOutcome.SUPERSEDED
    assert set(outcomes.values()) == {WriteOutcome.WRITTEN}
    # read, failed batch txn, then per instance: 9 (read + txn) and the raced one's re-read
    assert store.txns - txns == 2 + 9 * 2 + 1
    assert (await read(store, raced_id)).health.source == pb.HEALTH_SOURCE_MANUAL  # type: ignore[union-attr]
    for service_id, _ in instances:
        if service_id != raced_id:
            assert (await read(store, service_id)).status == HEALTHY  # type: ignore[union-attr]


async def test_a_record_deregistered_mid_batch_is_never_recreated(store: Store) -> None:
    instances = [await put_instance(store, n) for n in range(4)]
    outcomes: dict[str, WriteOutcome] = {}
    writer = StatusWriter(
        store, lambda s, o, r: outcomes.__setitem__(s, o), SystemClock(), concurrency=1
    )
    gone_id, _ = instances[1]

    async def deregister() -> None:
        await store.inner.revoke_lease(await lease_of(store, gone_id))

    store.after_read = deregister
    for service_id, instance in instances:
        writer.submit(service_id, pb.HealthStatus(status=UNHEALTHY), instance.health)
    writer.start()
    try:
        await wait_until(lambda: len(outcomes) == 4, 5, "every write settled")
    finally:
        await writer.stop()
    assert outcomes.pop(gone_id) is WriteOutcome.GONE
    assert set(outcomes.values()) == {WriteOutcome.WRITTEN}
    assert await read(store, gone_id) is None


async def test_only_the_latest_of_several_pending_transitions_is_written(store: Store) -> None:
    service_id, instance = await put_instance(store, 1)
    written: list[pb.ServiceInstance | None] = []
    writer = StatusWriter(store, lambda s, o, r: written.append(r), SystemClock())
    writer.submit(service_id, pb.HealthStatus(status=HEALTHY), instance.health)
    writer.submit(service_id, pb.HealthStatus(status=UNHEALTHY, error="down"), instance.health)
    assert writer.backlog == 1
    revision = await store.current_revision()
    writer.start()
    try:
        await wait_until(lambda: len(written) == 1, 5, "the write")
    finally:
        await writer.stop()
    assert await store.current_revision() == revision + 1
    assert (await read(store, service_id)).health.error == "down"  # type: ignore[union-attr]


async def test_a_transition_back_to_the_stored_status_writes_nothing(store: Store) -> None:
    service_id, instance = await put_instance(store, 1)
    outcomes: list[WriteOutcome] = []
    writer = StatusWriter(store, lambda s, o, r: outcomes.append(o), SystemClock())
    writer.submit(service_id, pb.HealthStatus(status=pb.HEALTH_STATE_UNKNOWN), instance.health)
    revision = await store.current_revision()
    writer.start()
    try:
        await wait_until(lambda: outcomes == [WriteOutcome.UNCHANGED], 5, "the outcome")
    finally:
        await writer.stop()
    assert await store.current_revision() == revision and writer.backlog == 0


async def test_writes_wait_out_an_outage(store: Store) -> None:
    service_id, instance = await put_instance(store, 1)
    outcomes: list[WriteOutcome] = []
    writer = StatusWriter(store, lambda s, o, r: outcomes.append(o), SystemClock())
    store.down = True
    writer.submit(service_id, pb.HealthStatus(status=HEALTHY), instance.health)
    writer.start()
    try:
        await wait_until(lambda: writer.failures >= 2, 5, "failed attempts")
        assert outcomes == [] and writer.pending(service_id) is not None
        store.down = False
        await wait_until(lambda: outcomes == [WriteOutcome.WRITTEN], 5, "the write")
    finally:
        await writer.stop()
    assert (await read(store, service_id)).status == HEALTHY  # type: ignore[union-attr]
