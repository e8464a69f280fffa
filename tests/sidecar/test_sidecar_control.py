"""SidecarControl with fakes: discovery's view of the instances, a lagging index and a store
that changes under a policy update, on the memory store driven by a FakeClock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from google.protobuf import json_format

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.auth.tokens import Principal, Role
from lucid_cp.clock import FakeClock
from lucid_cp.discovery.keys import instance_key
from lucid_cp.sidecar import keys
from lucid_cp.sidecar.control import SidecarControl
from lucid_cp.sidecar.errors import (
    InstanceNotRegistered,
    SidecarResourceNotFound,
    TooManyConfigurations,
)
from lucid_cp.sidecar.index import SidecarIndex
from lucid_cp.store.base import MAX_REQUEST_BYTES, MAX_TXN_OPS, Put
from lucid_cp.store.memory import MemoryStore

from .conftest import config, policy

GW = Principal("api-gateway", Role.SERVICE)
SIDS = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 4)]


@dataclass
class Instances:
    """Discovery's index as the core sees it: ``leases`` is what it believes; ``pending``
    instances appear only once the core waits for the store's revision."""

    leases: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    waited: list[int] = field(default_factory=list)

    def get(self, sid: str) -> discovery_pb2.ServiceInstance | None:
        if sid not in self.leases:
            return None
        return discovery_pb2.ServiceInstance(service_id=sid, service_name="api-gateway")

    def lease_of(self, sid: str) -> int:
        return self.leases.get(sid, 0)

    def of_service(self, name: str) -> dict[str, discovery_pb2.ServiceInstance]:
        return {}

    async def wait_for(self, revision: int, timeout: float) -> bool:
        self.waited.append(revision)
        self.leases |= self.pending
        self.pending = {}
        return True


class Mesh:
    def mtls(self) -> None:
        return None


@dataclass
class Env:
    clock: FakeClock
    store: MemoryStore
    index: SidecarIndex
    instances: Instances

    def control(self, store: Any = None, index: Any = None) -> SidecarControl:
        return SidecarControl(
            store or self.store, index or self.index, self.instances, Mesh(), self.clock
        )

    async def register(self, sid: str, ttl: int = 1_000) -> int:
        lease = await self.store.grant_lease(ttl)
        await self.store.put(instance_key(sid), b"instance", lease=lease.id)
        self.instances.leases[sid] = lease.id
        return lease.id


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = FakeClock()
    store = MemoryStore(clock=clock, reap_interval=3_600.0)
    index = SidecarIndex(store, clock=clock)
    await index.start()
    try:
        yield Env(clock, store, index, Instances())
    finally:
        await index.stop()
        await store.close()


def parsed(**kw: Any) -> pb.SidecarPolicy:
    return json_format.ParseDict(policy(**kw), pb.SidecarPolicy())


async def _stored(env: Env, sid: str) -> bool:
    return await env.store.get(keys.config_key(sid)) is not None


# -- the lease binding of configure ----------------------------------------------------------


async def test_configure_refuses_an_unknown_lease(env: Env) -> None:
    await env.register(SIDS[0])
    env.instances.leases[SIDS[0]] = 0  # discovery has it, without a lease (gone meanwhile)
    with pytest.raises(InstanceNotRegistered):
        await env.control().configure(GW, config(SIDS[0]))
    assert not await _stored(env, SIDS[0])


async def test_configure_refuses_a_revoked_lease(env: Env) -> None:
    lease = await env.register(SIDS[0])
    await env.store.revoke_lease(lease)  # discovery's index has not seen it yet
    with pytest.raises(InstanceNotRegistered):
        await env.control().configure(GW, config(SIDS[0]))
    assert not await _stored(env, SIDS[0])


async def test_configure_refuses_a_lease_that_no_longer_holds_the_instance(env: Env) -> None:
    stale = await env.register(SIDS[0])
    # Re-registered under a new lease this replica has not seen; the old lease is still alive.
    fresh = await env.store.grant_lease(1_000)
    await env.store.put(instance_key(SIDS[0]), b"instance", lease=fresh.id)
    assert env.instances.lease_of(SIDS[0]) == stale
    with pytest.raises(InstanceNotRegistered):
        await env.control().configure(GW, config(SIDS[0]))
    assert not await _stored(env, SIDS[0])


async def test_configure_lets_discovery_catch_up_before_404(env: Env) -> None:
    lease = await env.register(SIDS[0])
    registered = await env.store.current_revision()
    del env.instances.leases[SIDS[0]]
    env.instances.pending[SIDS[0]] = lease  # registered through another replica
    written = await env.control().configure(GW, config(SIDS[0]))
    assert written.configuration.service_id == SIDS[0]
    assert env.instances.waited == [registered]
    with pytest.raises(InstanceNotRegistered):  # not in the store either: 404 at once
        await env.control().configure(GW, config(SIDS[1]))
    assert env.instances.waited == [registered]


# -- policy updates --------------------------------------------------------------------------


async def test_update_policy_leaves_out_an_expired_unreaped_lease(env: Env) -> None:
    await env.register(SIDS[0], ttl=10)
    await env.register(SIDS[1], ttl=1_000)
    control = env.control()
    for sid in SIDS[:2]:
        await control.configure(GW, config(sid, policies=[policy()]))
    # SIDS[0]'s lease expires; the reaper is not woken (set_now), so its keys are still there.
    env.clock.set_now(env.clock.now() + 11)
    assert await _stored(env, SIDS[0])
    updated = await control.update_policy(GW, "rate-limit-api", parsed(requests=3), "", None)
    assert list(updated.service_ids) == [SIDS[1]]
    env.clock.set_now(env.clock.now() + 1_000)  # every holder expired: nothing left to update
    with pytest.raises(SidecarResourceNotFound):
        await control.update_policy(GW, "rate-limit-api", parsed(requests=4), "", None)


async def test_update_policy_refuses_more_bytes_than_one_txn(env: Env) -> None:
    note = "x" * 3_900
    rules = [
        {"action": "POLICY_ACTION_ALLOW", "match": {"path": f"/p{i}"}, "parameters": {"n": note}}
        for i in range(110)
    ]
    big = [policy("big-one", rules=rules), policy("big-two", rules=rules)]
    control = env.control()
    for sid in SIDS[:2]:
        await env.register(sid)
        await control.configure(GW, config(sid, policies=big))
    before = await env.store.current_revision()
    with pytest.raises(TooManyConfigurations) as caught:
        await control.update_policy(
            GW, "big-one", json_format.ParseDict(big[0], pb.SidecarPolicy()), "", None
        )
    assert str(MAX_REQUEST_BYTES) in caught.value.message
    assert str(MAX_TXN_OPS) in caught.value.message
    assert caught.value.details["byteLimit"] == MAX_REQUEST_BYTES
    assert caught.value.details["limit"] == MAX_TXN_OPS
    assert await env.store.current_revision() == before  # nothing written


class DeletingStore:
    """Deletes every configuration just before the update's write (deregistered meanwhile)."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner, self.done = inner, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def txn(self, compares: Any, success: Any, failure: Any = ()) -> Any:
        if not self.done and compares and all(isinstance(op, Put) for op in success):
            self.done = True
            for op in success:
                await self.inner.delete(op.key)
        return await self.inner.txn(compares, success, failure)


async def test_update_policy_answers_404_when_every_holder_is_deleted_meanwhile(
    env: Env,
) -> None:
    for sid in SIDS[:2]:
        await env.register(sid)
        await env.control().configure(GW, config(sid, policies=[policy()]))
    store = DeletingStore(env.store)
    control = env.control(store, env.index)
    with pytest.raises(SidecarResourceNotFound):
        await control.update_policy(GW, "rate-limit-api", parsed(requests=3), "", None)
    assert store.done  # the write lost its compares to the deletions, then found no holder


async def test_update_policy_does_not_wait_for_writes_outside_the_sidecar_prefix(
    env: Env,
) -> None:
    await env.register(SIDS[0])
    await env.control().configure(GW, config(SIDS[0], policies=[policy()]))
    # The newest store revision is a write the sidecar index never sees (another system's key):
    # waiting for the index to reach it would stall until the read-your-writes timeout.
    await env.store.put(b"/lucid/elsewhere/key", b"x")
    response = await asyncio.wait_for(
        env.control().update_policy(GW, "rate-limit-api", parsed(requests=3), "", None), 5
    )
    assert response.configurations_updated == 1
    assert env.index.read_your_writes_timeouts == 0
