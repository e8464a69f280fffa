"""Explain with destination defaults (lucid_cp.mesh.defaults) handed to MeshControl: deny-all
destinations deny at step 3, targets carry the source's retry and timeout, the compiled
configuration follows both revisions. A fake provider over a real MeshIndex (memory store)."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as pb
from lucid_cp.clock import FakeClock
from lucid_cp.mesh.control import SECURITY, MeshControl
from lucid_cp.mesh.defaults import DestinationDefaults, Outbound
from lucid_cp.mesh.index import MeshIndex
from lucid_cp.store.memory import MemoryStore

from .conftest import NoServices, security

ROOT = Path(__file__).resolve().parents[2]
RETRY = pb.RetryConfig(max_attempts=3, initial_delay=200)
TIMEOUT = pb.TimeoutConfig(request=1500)


@dataclass
class FakeDefaults:
    revision: int = 0
    denied: set[str] = field(default_factory=set)
    routes: dict[tuple[str, str], Outbound] = field(default_factory=dict)
    deny_all_calls: int = 0

    def deny_all(self) -> frozenset[str]:
        self.deny_all_calls += 1
        return frozenset(self.denied)

    def outbound(self, source_service: str, destination_service: str) -> Outbound:
        return self.routes.get((source_service, destination_service), (None, None))


@dataclass
class Env:
    index: MeshIndex
    control: MeshControl
    defaults: FakeDefaults


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = FakeClock()
    store = MemoryStore(clock=clock, reap_interval=3_600.0)
    index = MeshIndex(store, clock=clock)
    await index.start()
    control = MeshControl(store, index, NoServices(), clock)
    defaults = FakeDefaults()
    provider: DestinationDefaults = defaults
    control.use_destination_defaults(provider)
    try:
        yield Env(index, control, defaults)
    finally:
        await index.stop()
        await store.close()


def explain(source: str = "api-gateway", destination: str = "blockchain-core") -> pb.ExplainRequest:
    return pb.ExplainRequest(
        source=pb.Workload(name=source), destination=pb.Workload(name=destination)
    )


async def test_a_deny_all_destination_is_denied_at_step_3(env: Env) -> None:
    assert env.control.explain(explain()).verdict.decision == pb.DECISION_ALLOW
    env.defaults.denied = {"blockchain-core"}
    env.defaults.revision += 1
    verdict = env.control.explain(explain()).verdict
    assert (verdict.decision, verdict.http_status, list(verdict.targets)) == (
        pb.DECISION_DENY,
        403,
        [],
    )
    [entry] = verdict.trace
    assert (entry.stage, entry.outcome, entry.action) == (
        pb.TRACE_STAGE_SECURITY_DEFAULT,
        pb.TRACE_OUTCOME_WON,
        "deny",
    )
    assert "SecurityConfig says deny-all" in entry.reason
    # Another destination keeps the mesh default.
    other = env.control.explain(explain(destination="tron-wallet")).verdict
    assert other.decision == pb.DECISION_ALLOW


async def test_an_allow_rule_still_beats_deny_all(env: Env) -> None:
    env.defaults.denied = {"blockchain-core"}
    await env.control.create_policy(SECURITY, security(enabled=True))
    verdict = env.control.explain(explain()).verdict
    assert verdict.decision == pb.DECISION_ALLOW
    assert verdict.trace[0].stage == pb.TRACE_STAGE_SECURITY_ACCESS


async def test_targets_carry_the_source_retry_and_timeout(env: Env) -> None:
    env.defaults.routes = {("api-gateway", "blockchain-core"): (RETRY, TIMEOUT)}
    [target] = env.control.explain(explain()).verdict.targets
    assert target.service == "blockchain-core"
    assert target.settings == pb.DestinationSettings(retry=RETRY, timeout=TIMEOUT)
    [target] = env.control.explain(explain(source="tron-wallet")).verdict.targets
    assert not target.HasField("settings")


async def test_the_configuration_is_recompiled_when_either_revision_moves(env: Env) -> None:
    env.control.explain(explain())
    env.control.explain(explain())
    assert env.defaults.deny_all_calls == 1  # compiled once
    env.defaults.denied = {"blockchain-core"}
    # Unchanged revision: the compiled configuration stands (the provider promises it is current).
    assert env.control.explain(explain()).verdict.decision == pb.DECISION_ALLOW
    env.defaults.revision = 100
    response = env.control.explain(explain())
    assert response.verdict.decision == pb.DECISION_DENY
    assert env.defaults.deny_all_calls == 2
    # The revision answered is the newer of the two.
    assert response.revision == 100
    written = await env.control.create_policy(SECURITY, security(enabled=True))
    response = env.control.explain(explain())
    assert env.defaults.deny_all_calls == 3
    assert response.verdict.decision == pb.DECISION_ALLOW
    assert written.revision < response.revision == 100
    env.defaults.revision = 0
    assert env.control.explain(explain()).revision == written.revision


async def test_another_provider_at_the_same_revision_is_compiled_anew(env: Env) -> None:
    assert env.control.explain(explain()).verdict.decision == pb.DECISION_ALLOW
    env.control.use_destination_defaults(FakeDefaults(denied={"blockchain-core"}))
    assert env.control.explain(explain()).verdict.decision == pb.DECISION_DENY


async def test_without_defaults_explain_is_as_before(env: Env) -> None:
    env.defaults.denied = {"blockchain-core"}
    env.defaults.routes = {("api-gateway", "blockchain-core"): (RETRY, TIMEOUT)}
    env.control.use_destination_defaults(None)
    response = env.control.explain(explain())
    assert response.verdict.decision == pb.DECISION_ALLOW
    assert not response.verdict.targets[0].HasField("settings")
    assert env.defaults.deny_all_calls == 0


def test_the_mesh_never_imports_the_systems_built_on_it() -> None:
    """The defaults come in through the Protocol: lucid_cp/mesh imports no lucid_cp.sidecar."""
    offending = []
    for path in sorted((ROOT / "lucid_cp" / "mesh").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offending += [f"{path.name}: {n}" for n in names if n.startswith("lucid_cp.sidecar")]
    assert offending == []
