"""SidecarService over gRPC against a real control plane: every method's success and error
codes, ownership (403), unregistered instances (404), write-time checks (1101/1103/1102),
policy updates across a service's configurations in one txn, and the lease binding."""

from __future__ import annotations

from dataclasses import replace

import grpc
from google.protobuf import json_format

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as mpb
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.config import RateLimit
from lucid_cp.sidecar import keys
from lucid_cp.sidecar.module import SidecarSystem
from lucid_cp.store.base import MAX_TXN_OPS

from .conftest import ADMIN, SETTINGS, Sidecars, auth, config, open_sidecars, policy, rpc_error

UNKNOWN = "00000000-0000-4000-8000-000000000000"
GW = auth("api-gateway")
OTHER = auth("wallet-service")


def parsed_policy(policy_id: str = "rate-limit-api", **kw: object) -> pb.SidecarPolicy:
    return json_format.ParseDict(policy(policy_id, **kw), pb.SidecarPolicy())  # type: ignore[arg-type]


async def test_configure_get_delete(sc: Sidecars) -> None:
    sid = await sc.register("api-gateway")
    await sc.register("blockchain-core")
    cfg = config(sid, policies=[policy()])
    cfg.security.mtls.client_key = "-----BEGIN PRIVATE KEY-----"
    cfg.version = "999"
    written = await sc.configure(cfg, GW)
    assert written.revision > 0 and written.version == str(written.revision)
    assert written.configuration.version == written.version
    assert written.service_name == "api-gateway"
    assert not written.configuration.security.mtls.client_key  # never stored nor returned
    assert written.configuration.policies[0].priority == 100  # defaults applied
    assert list(written.warnings) == []

    got = await sc.sidecar.GetSidecarConfig(pb.GetSidecarConfigRequest(service_id=sid), metadata=GW)
    assert got.configuration == written.configuration and got.revision == written.revision
    assert got.read_revision >= written.revision and got.created_at == written.created_at

    again = await sc.configure(config(sid, routing={"defaultRoute": "10.0.0.7:8443"}), ADMIN)
    assert again.revision > written.revision and again.created_at == written.created_at

    deleted = await sc.sidecar.DeleteSidecarConfig(
        pb.DeleteSidecarConfigRequest(service_id=sid), metadata=GW
    )
    assert deleted.revision > again.revision
    for call in (
        sc.sidecar.GetSidecarConfig(pb.GetSidecarConfigRequest(service_id=sid), metadata=GW),
        sc.sidecar.DeleteSidecarConfig(pb.DeleteSidecarConfigRequest(service_id=sid), metadata=GW),
    ):
        code, reason, _ = await rpc_error(call)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "LUCID_ERR_1907")


async def test_unregistered_instance_is_404(sc: Sidecars) -> None:
    code, reason, _ = await rpc_error(sc.configure(config(UNKNOWN)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "LUCID_ERR_1002")


async def test_a_service_token_acts_only_for_its_own_instances(sc: Sidecars) -> None:
    sid = await sc.register("api-gateway")
    code, reason, _ = await rpc_error(sc.configure(config(sid), OTHER))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "LUCID_ERR_1902")
    await sc.configure(config(sid), GW)
    for call in (
        sc.sidecar.GetSidecarConfig(pb.GetSidecarConfigRequest(service_id=sid), metadata=OTHER),
        sc.sidecar.DeleteSidecarConfig(
            pb.DeleteSidecarConfigRequest(service_id=sid), metadata=OTHER
        ),
    ):
        code, reason, _ = await rpc_error(call)
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "LUCID_ERR_1902")
    # An admin may do anything.
    await sc.sidecar.GetSidecarConfig(pb.GetSidecarConfigRequest(service_id=sid), metadata=ADMIN)


async def test_write_time_checks(sc: Sidecars) -> None:
    sid = await sc.register("api-gateway")
    # Routing only: 1103.
    routes = [
        {"match": {"path": "/a"}, "destination": "svc-one", "weight": 50},
        {"match": {"path": "/a"}, "destination": "svc-two", "weight": 40},
    ]
    bad = config(
        sid,
        routing={
            "defaultRoute": "10.0.0.1:70000",
            "routes": routes,
            "loadBalancing": {"healthCheck": {"interval": 5, "timeout": 5}},
        },
    )
    code, reason, violations = await rpc_error(sc.configure(bad))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "LUCID_ERR_1103")
    assert [f for f, _ in violations] == [
        "configuration.routing.defaultRoute",
        "configuration.routing.routes[0].weight",
        "configuration.routing.loadBalancing.healthCheck.timeout",
    ]
    # Anything else: 1101.
    bad = config(
        sid,
        policies=[
            policy(),
            policy(conditions={"source": "nope!"}),
            policy(
                "breaker",
                type="POLICY_TYPE_CIRCUIT_BREAKER",
                rules=[
                    {
                        "action": "POLICY_ACTION_CIRCUIT_BREAK",
                        "parameters": {
                            "failureThreshold": 5,
                            "recoveryTimeout": 30,
                            "halfOpenMaxCalls": 1,
                            "errorTypes": ["5xx"],
                        },
                    }
                ],
            ),
            policy("retries", rules=[{"action": "POLICY_ACTION_RETRY", "parameters": {}}]),
        ],
        resources={
            "limits": {"cpu": "500m", "memory": "1Gi"},
            "requests": {"cpu": "1", "memory": "2Gi"},
        },
    )
    code, reason, violations = await rpc_error(sc.configure(bad))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "LUCID_ERR_1101")
    assert [f for f, _ in violations] == [
        "configuration.policies[1].policyId",
        "configuration.policies[1].conditions.source",
        "configuration.policies[2].rules[0].parameters.halfOpenMaxCalls",
        "configuration.policies[3].rules[0].parameters.maxAttempts",
        "configuration.resources.requests.cpu",
        "configuration.resources.requests.memory",
    ]
    # A declared rule: the interceptor's violation, with the reason the same routing rule
    # picks (only routing at fault: 1103; anything else too: 1101).
    code, reason, violations = await rpc_error(sc.configure(config(sid, routing={})))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "LUCID_ERR_1103")
    assert [f for f, _ in violations] == ["configuration.routing.defaultRoute"]
    bad_name = config(sid, routing={"defaultRoute": "Bad Name!"})
    code, reason, violations = await rpc_error(sc.configure(bad_name))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "LUCID_ERR_1103")
    code, reason, violations = await rpc_error(sc.configure(config("not-a-uuid", routing={})))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "LUCID_ERR_1101")
    assert sorted(f for f, _ in violations) == [
        "configuration.routing.defaultRoute",
        "configuration.serviceId",
    ]
    # Nothing was stored.
    code, _, _ = await rpc_error(
        sc.sidecar.GetSidecarConfig(pb.GetSidecarConfigRequest(service_id=sid), metadata=ADMIN)
    )
    assert code == grpc.StatusCode.NOT_FOUND


async def test_warnings(sc: Sidecars) -> None:
    sid = await sc.register("api-gateway")
    other = await sc.register("api-gateway")
    await sc.mesh.UpdateMtls(
        mpb.UpdateMtlsRequest(
            config=mpb.MTLSConfig(
                mode=mpb.MTLS_MODE_STRICT,
                cert_authority="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            )
        ),
        metadata=ADMIN,
    )
    await sc.configure(config(other, policies=[policy(requests=5)]))
    cfg = config(
        sid,
        routing={
            "defaultRoute": "api-gateway",
            "routes": [
                {"match": {}, "destination": "ghost-svc"},
                {"match": {"path": "/x"}, "destination": "api-gateway"},
            ],
        },
        security={"mTLS": {"enabled": False}},
        policies=[
            policy(
                rules=[
                    {"action": "POLICY_ACTION_ALLOW"},
                    {"action": "POLICY_ACTION_DENY", "match": {"method": "GET"}},
                ]
            )
        ],
    )
    written = await sc.configure(cfg)
    got = [(pb.WarningCode.Name(w.code), w.field) for w in written.warnings]
    assert got == [
        ("WARNING_CODE_UNKNOWN_DESTINATION", "routing.routes[0].destination"),
        ("WARNING_CODE_SHADOWED_ROUTE", "routing.routes[1]"),
        ("WARNING_CODE_MTLS_OVERRIDDEN", "security.mTLS.enabled"),
        ("WARNING_CODE_SHADOWED_RULE", "policies[0].rules[1]"),
        ("WARNING_CODE_POLICY_DIVERGES", "policies[0]"),
    ]


async def test_policy_update_touches_every_configuration_of_the_service(sc: Sidecars) -> None:
    ids = sorted([await sc.register("api-gateway") for _ in range(3)])
    elsewhere = await sc.register("wallet-service")
    for sid in ids[:2]:
        await sc.configure(
            config(
                sid,
                policies=[
                    policy(
                        "audit-log",
                        type="POLICY_TYPE_LOGGING",
                        rules=[{"action": "POLICY_ACTION_ALLOW"}],
                    ),
                    policy(),
                ],
            ),
            GW,
        )
    await sc.configure(config(ids[2]), GW)  # holds no policy
    await sc.configure(config(elsewhere, policies=[policy()]), OTHER)  # another service's

    updated = await sc.sidecar.UpdateSidecarPolicy(
        pb.UpdateSidecarPolicyRequest(policy_id="rate-limit-api", policy=parsed_policy(requests=7)),
        metadata=GW,
    )
    assert updated.configurations_updated == 2 and list(updated.service_ids) == ids[:2]
    assert updated.service_name == "api-gateway" and updated.policy.priority == 100
    for sid in ids[:2]:
        got = await sc.sidecar.GetSidecarConfig(
            pb.GetSidecarConfigRequest(service_id=sid), metadata=GW
        )
        assert got.revision == updated.revision  # one txn: one revision
        assert got.configuration.policies[1].rules[0].parameters["requests"] == 7
        assert got.configuration.policies[0].policy_id == "audit-log"  # others untouched
    theirs = await sc.sidecar.GetSidecarConfig(
        pb.GetSidecarConfigRequest(service_id=elsewhere), metadata=ADMIN
    )
    assert theirs.configuration.policies[0].rules[0].parameters["requests"] == 100

    # Reads: own service by token, any by admin with serviceName.
    read = await sc.sidecar.GetSidecarPolicy(
        pb.GetSidecarPolicyRequest(policy_id="rate-limit-api"), metadata=GW
    )
    assert read.revision == updated.revision and list(read.service_ids) == ids[:2]
    assert read.policy == updated.policy and read.read_revision >= updated.revision
    read = await sc.sidecar.GetSidecarPolicy(
        pb.GetSidecarPolicyRequest(policy_id="rate-limit-api", service_name="wallet-service"),
        metadata=ADMIN,
    )
    assert list(read.service_ids) == [elsewhere]

    # Compare-and-swap on the revision a read returned.
    stale = updated.revision - 1
    code, reason, _ = await rpc_error(
        sc.sidecar.UpdateSidecarPolicy(
            pb.UpdateSidecarPolicyRequest(
                policy_id="rate-limit-api", policy=parsed_policy(), expected_revision=stale
            ),
            metadata=GW,
        )
    )
    assert (code, reason) == (grpc.StatusCode.ABORTED, "LUCID_ERR_1905")
    await sc.sidecar.UpdateSidecarPolicy(
        pb.UpdateSidecarPolicyRequest(
            policy_id="rate-limit-api", policy=parsed_policy(), expected_revision=updated.revision
        ),
        metadata=GW,
    )


async def test_policy_errors(sc: Sidecars) -> None:
    sid = await sc.register("api-gateway")
    await sc.configure(config(sid, policies=[policy()]), GW)

    def update(md: object, **kw: object) -> object:
        request = pb.UpdateSidecarPolicyRequest(policy_id="rate-limit-api", policy=parsed_policy())
        for k, v in kw.items():
            if k == "policy":
                request.policy.CopyFrom(v)  # type: ignore[arg-type]
            else:
                setattr(request, k, v)
        return sc.sidecar.UpdateSidecarPolicy(request, metadata=md)

    cases = [
        (
            update(GW, policy_id="no-such-policy", policy=parsed_policy("no-such-policy")),
            grpc.StatusCode.NOT_FOUND,
            "LUCID_ERR_1907",
        ),
        (update(OTHER), grpc.StatusCode.NOT_FOUND, "LUCID_ERR_1907"),  # its own service has none
        (
            update(GW, service_name="wallet-service"),
            grpc.StatusCode.PERMISSION_DENIED,
            "LUCID_ERR_1902",
        ),
        (
            update(ADMIN),
            grpc.StatusCode.INVALID_ARGUMENT,
            "LUCID_ERR_1102",
        ),  # admin names the service
        (update(GW, policy_id="other-id"), grpc.StatusCode.INVALID_ARGUMENT, "LUCID_ERR_1102"),
        (
            update(
                GW,
                policy=parsed_policy(
                    rules=[{"action": "POLICY_ACTION_RATE_LIMIT", "parameters": {"seconds": 9999}}]
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "LUCID_ERR_1102",
        ),
        (
            update(GW, policy=pb.SidecarPolicy(policy_id="rate-limit-api")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "LUCID_ERR_1102",
        ),
        (
            sc.sidecar.GetSidecarPolicy(
                pb.GetSidecarPolicyRequest(policy_id="rate-limit-api", service_name="api-gateway"),
                metadata=OTHER,
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "LUCID_ERR_1902",
        ),
        (
            sc.sidecar.GetSidecarPolicy(
                pb.GetSidecarPolicyRequest(policy_id="nope-nope"), metadata=GW
            ),
            grpc.StatusCode.NOT_FOUND,
            "LUCID_ERR_1907",
        ),
        (
            sc.sidecar.GetSidecarPolicy(pb.GetSidecarPolicyRequest(policy_id="x"), metadata=GW),
            grpc.StatusCode.INVALID_ARGUMENT,
            "LUCID_ERR_1102",
        ),
    ]
    for call, want_code, want_reason in cases:
        code, reason, _ = await rpc_error(call)
        assert (code, reason) == (want_code, want_reason)


async def test_a_policy_held_by_more_configurations_than_one_txn_is_refused(sc: Sidecars) -> None:
    """More than MAX_TXN_OPS configurations: refused whole (1911), nothing written. The
    configurations are put straight into the store (registering 129 instances is slow)."""
    sid = await sc.register("api-gateway")
    first = await sc.configure(config(sid, policies=[policy()]), GW)
    record = pb.SidecarConfigurationResponse()
    record.CopyFrom(first)
    record.ClearField("revision")
    record.ClearField("version")
    record.configuration.ClearField("version")
    store = sc.plane.store
    revision = 0
    for i in range(MAX_TXN_OPS):
        other = f"00000000-0000-4000-8000-{i:012d}"
        record.configuration.service_id = other
        revision = await store.put(keys.config_key(other), record.SerializeToString())
    code, reason, _ = await rpc_error(
        sc.sidecar.UpdateSidecarPolicy(
            pb.UpdateSidecarPolicyRequest(
                policy_id="rate-limit-api", policy=parsed_policy(requests=1)
            ),
            metadata=GW,
        )
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "LUCID_ERR_1911")
    # Nothing written: no configuration changed (other systems write meanwhile: the event
    # feed, the sidecar status writer, so the store revision itself may move).
    after = await store.range(keys.CONFIGS)
    assert max(kv.mod_revision for kv in after.kvs) == revision
    assert len(after.kvs) == MAX_TXN_OPS + 1


async def test_deregistration_deletes_the_configuration(sc: Sidecars) -> None:
    sid = await sc.register("api-gateway")
    await sc.configure(config(sid), GW)
    gone = await sc.discovery.Deregister(dpb.DeregisterRequest(service_id=sid), metadata=GW)
    # Revoking the lease deleted it in the same store write.
    assert await sc.plane.system(SidecarSystem).index.wait_for(gone.revision, 2.0)
    assert await sc.plane.store.get(keys.config_key(sid)) is None
    code, _, _ = await rpc_error(
        sc.sidecar.GetSidecarConfig(pb.GetSidecarConfigRequest(service_id=sid), metadata=ADMIN)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    # And it cannot be configured again: the instance is gone.
    code, reason, _ = await rpc_error(sc.configure(config(sid), GW))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "LUCID_ERR_1002")


async def test_config_writes_have_their_own_bucket() -> None:
    limits = {"sidecar-config": RateLimit(1)}
    settings = replace(SETTINGS, rate_limits_enabled=True, rate_limits=limits)
    async for sc in open_sidecars(settings):
        sid = await sc.register("api-gateway")
        await sc.configure(config(sid), GW)
        code, reason, _ = await rpc_error(sc.configure(config(sid), GW))
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LUCID_ERR_1903")


async def test_sidecar_policies_draw_on_the_policy_bucket() -> None:
    """The seed's "policy management" limit (50/min): PUT and GET of sidecar policies share it,
    apart from configuration writes."""
    limits = {"policy": RateLimit(1)}
    settings = replace(SETTINGS, rate_limits_enabled=True, rate_limits=limits)
    async for sc in open_sidecars(settings):
        sid = await sc.register("api-gateway")
        await sc.configure(config(sid, policies=[policy()]), GW)
        await sc.configure(config(sid, policies=[policy()]), GW)  # not the policy bucket
        get = pb.GetSidecarPolicyRequest(policy_id="rate-limit-api")
        await sc.sidecar.GetSidecarPolicy(get, metadata=GW)
        code, reason, _ = await rpc_error(sc.sidecar.GetSidecarPolicy(get, metadata=GW))
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LUCID_ERR_1903")
