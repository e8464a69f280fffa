"""SidecarDefaults: the mesh's destination defaults read from stored sidecar configurations (a
SidecarIndex over the memory store, records written as the core stores them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf import json_format

from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as mesh_pb
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.clock import FakeClock
from lucid_cp.mesh.control import MeshControl
from lucid_cp.mesh.defaults import DestinationDefaults
from lucid_cp.mesh.index import MeshIndex
from lucid_cp.sidecar import keys
from lucid_cp.sidecar.defaults import SidecarDefaults
from lucid_cp.sidecar.index import SidecarIndex
from lucid_cp.store.base import Put
from lucid_cp.store.memory import MemoryStore
from tests.mesh.conftest import NoServices

SIDS = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 5)]
DENY_ALL = {"authorization": {"enabled": True, "policy": "AUTHORIZATION_POLICY_DENY_ALL"}}
RETRY = {"maxAttempts": 2}
TIMEOUT = {"connect": 500, "request": 4000}


@dataclass
class Env:
    store: MemoryStore
    index: SidecarIndex
    defaults: SidecarDefaults

    async def write(self, sid: str, service: str, **over: Any) -> int:
        """Stores the configuration of ``sid`` (of ``service``) and waits for the index."""
        body: dict[str, Any] = {"serviceId": sid, "routing": {"defaultRoute": "blockchain-core"}}
        configuration = json_format.ParseDict(body | over, pb.SidecarConfiguration())
        record = pb.SidecarConfigurationResponse(configuration=configuration, service_name=service)
        revision = await self.store.put(keys.config_key(sid), record.SerializeToString())
        assert await self.index.wait_for(revision, 5.0)
        return revision

    async def delete(self, sid: str) -> None:
        deleted, revision = await self.store.delete(keys.config_key(sid))
        assert deleted == 1
        assert await self.index.wait_for(revision, 5.0)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = FakeClock()
    store = MemoryStore(clock=clock, reap_interval=3_600.0)
    index = SidecarIndex(store, clock=clock)
    await index.start()
    try:
        yield Env(store, index, SidecarDefaults(index))
    finally:
        await index.stop()
        await store.close()


def retry(**kw: Any) -> mesh_pb.RetryConfig:
    return json_format.ParseDict(RETRY | kw, mesh_pb.RetryConfig())


def timeout(**kw: Any) -> mesh_pb.TimeoutConfig:
    return json_format.ParseDict(TIMEOUT | kw, mesh_pb.TimeoutConfig())


def route(destination: str, **kw: Any) -> dict[str, Any]:
    return {"match": {"path": "/api/*"}, "destination": destination, **kw}


async def test_nothing_stored_means_no_defaults(env: Env) -> None:
    provider: DestinationDefaults = env.defaults
    assert provider.deny_all() == frozenset()
    assert provider.outbound("api-gateway", "blockchain-core") == (None, None)
    assert env.index.services() == []


async def test_deny_all_takes_the_newest_configuration_of_each_service(env: Env) -> None:
    await env.write(SIDS[0], "blockchain-core", security=DENY_ALL)
    await env.write(
        SIDS[1], "tron-wallet", security={"authorization": {"policy": "AUTHORIZATION_POLICY_RBAC"}}
    )
    assert env.defaults.deny_all() == {"blockchain-core"}
    # A newer write of another instance of the service decides.
    await env.write(SIDS[2], "blockchain-core")
    assert env.defaults.deny_all() == frozenset()
    await env.write(SIDS[0], "blockchain-core", security=DENY_ALL)
    assert env.defaults.deny_all() == {"blockchain-core"}
    # Deleting the newest falls back to the next newest.
    await env.delete(SIDS[0])
    assert env.defaults.deny_all() == frozenset()
    assert env.index.services() == ["blockchain-core", "tron-wallet"]


@pytest.mark.parametrize(
    ("authorization", "denies"),
    [
        ({"policy": "AUTHORIZATION_POLICY_DENY_ALL"}, True),  # enabled absent: enabled
        ({"enabled": True, "policy": "AUTHORIZATION_POLICY_DENY_ALL"}, True),
        ({"enabled": False, "policy": "AUTHORIZATION_POLICY_DENY_ALL"}, False),
        ({"enabled": True, "policy": "AUTHORIZATION_POLICY_ALLOW_ALL"}, False),
        ({"enabled": True}, False),
        (None, False),
    ],
)
async def test_deny_all_needs_an_enabled_deny_all_policy(
    env: Env, authorization: dict[str, Any] | None, denies: bool
) -> None:
    security = {} if authorization is None else {"authorization": authorization}
    await env.write(SIDS[0], "blockchain-core", security=security)
    assert ("blockchain-core" in env.defaults.deny_all()) is denies


async def test_outbound_from_the_first_route_to_the_destination(env: Env) -> None:
    routing = {
        "defaultRoute": "blockchain-core",
        "retry": RETRY,
        "timeout": TIMEOUT,
        "routes": [
            route("10.0.0.7:8443", retry={"maxAttempts": 9}),
            route("tron-wallet", retry={"maxAttempts": 5}, timeout=250),
            route("tron-wallet", retry={"maxAttempts": 7}, timeout=900),
            route("chain-v2", timeout=1500),
            route("chain-v3", retry={"maxAttempts": 4}),
        ],
    }
    await env.write(SIDS[0], "api-gateway", routing=routing)
    outbound = env.defaults.outbound
    # The first route to tron-wallet: its own retry, its timeout as the request timeout.
    assert outbound("api-gateway", "tron-wallet") == (retry(maxAttempts=5), timeout(request=250))
    # A route without its own retry: routing.retry.
    assert outbound("api-gateway", "chain-v2") == (retry(), timeout(request=1500))
    # A route without its own timeout: routing.timeout.
    assert outbound("api-gateway", "chain-v3") == (retry(maxAttempts=4), timeout())
    # No route to it (the default route included): routing.retry and routing.timeout.
    assert outbound("api-gateway", "blockchain-core") == (retry(), timeout())
    # Another source has none.
    assert outbound("tron-wallet", "api-gateway") == (None, None)


async def test_outbound_absent_settings_stay_absent(env: Env) -> None:
    routing = {"defaultRoute": "blockchain-core", "routes": [route("tron-wallet", timeout=250)]}
    await env.write(SIDS[0], "api-gateway", routing=routing)
    outbound = env.defaults.outbound
    assert outbound("api-gateway", "blockchain-core") == (None, None)
    # A route timeout without routing.timeout: only the request timeout.
    assert outbound("api-gateway", "tron-wallet") == (None, mesh_pb.TimeoutConfig(request=250))


async def test_outbound_takes_the_newest_configuration_of_the_source(env: Env) -> None:
    await env.write(SIDS[0], "api-gateway", routing={"defaultRoute": "x-y-z", "retry": RETRY})
    await env.write(SIDS[1], "api-gateway", routing={"defaultRoute": "x-y-z", "timeout": TIMEOUT})
    assert env.defaults.outbound("api-gateway", "blockchain-core") == (None, timeout())
    await env.write(SIDS[0], "api-gateway", routing={"defaultRoute": "x-y-z", "retry": RETRY})
    assert env.defaults.outbound("api-gateway", "blockchain-core") == (retry(), None)


async def test_revision_follows_the_index(env: Env) -> None:
    assert env.defaults.revision == env.index.revision
    written = await env.write(SIDS[0], "api-gateway")
    assert env.defaults.revision == env.index.revision == written


async def test_one_transaction_picks_the_highest_service_id(env: Env) -> None:
    """Configurations written at one revision (one txn): the choice is still deterministic."""
    records = []
    for sid, security in ((SIDS[3], DENY_ALL), (SIDS[2], {})):
        configuration = json_format.ParseDict(
            {"serviceId": sid, "routing": {"defaultRoute": "x-y-z"}, "security": security},
            pb.SidecarConfiguration(),
        )
        record = pb.SidecarConfigurationResponse(configuration=configuration, service_name="core")
        records.append(Put(keys.config_key(sid), record.SerializeToString()))
    result = await env.store.txn([], records)
    assert await env.index.wait_for(result.revision, 5.0)
    assert env.defaults.deny_all() == {"core"}  # SIDS[3] > SIDS[2]


async def test_explain_reads_the_sidecar_configurations(env: Env) -> None:
    """MeshControl with SidecarDefaults over the same store (what the sidecar module wires)."""
    clock = FakeClock()
    mesh_index = MeshIndex(env.store, clock=clock)
    await mesh_index.start()
    try:
        control = MeshControl(env.store, mesh_index, NoServices(), clock)
        control.use_destination_defaults(env.defaults)
        request = mesh_pb.ExplainRequest(
            source=mesh_pb.Workload(name="api-gateway"),
            destination=mesh_pb.Workload(name="blockchain-core"),
        )
        assert not control.explain(request).verdict.targets[0].HasField("settings")
        routing = {"defaultRoute": "x-y-z", "routes": [route("blockchain-core", timeout=800)]}
        await env.write(SIDS[0], "api-gateway", routing=routing | {"retry": RETRY})
        response = control.explain(request)
        assert response.revision == env.index.revision
        [target] = response.verdict.targets
        assert target.settings == mesh_pb.DestinationSettings(
            retry=retry(), timeout=mesh_pb.TimeoutConfig(request=800)
        )
        await env.write(SIDS[1], "blockchain-core", security=DENY_ALL)
        verdict = control.explain(request).verdict
        assert (verdict.decision, verdict.http_status) == (mesh_pb.DECISION_DENY, 403)
        assert verdict.trace[-1].stage == mesh_pb.TRACE_STAGE_SECURITY_DEFAULT
    finally:
        await mesh_index.stop()
