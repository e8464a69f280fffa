"""MeshService servicer: thin. Authentication (admin only), rate limits, validation and error
mapping happen in the policy interceptor, which hands each method the request and a ``Call``;
each method calls the core (``control.py``)."""

from __future__ import annotations

from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as pb
from lucid_cp.call import Call
from lucid_cp.mesh.control import SECURITY, TRAFFIC, MeshControl


def _expected(
    request: pb.ReplaceTrafficPolicyRequest
    | pb.ReplaceSecurityPolicyRequest
    | pb.UpdateCircuitBreakerRequest
    | pb.UpdateMtlsRequest,
) -> int | None:
    return request.expected_revision if request.HasField("expected_revision") else None


class MeshServicer:
    """Implements every method of lucid.mesh.v1.MeshService."""

    def __init__(self, control: MeshControl) -> None:
        self._control = control

    # -- traffic policies --------------------------------------------------------------------

    async def CreateTrafficPolicy(
        self, request: pb.CreateTrafficPolicyRequest, call: Call
    ) -> pb.TrafficPolicyResponse:
        return await self._control.create_policy(TRAFFIC, request.policy)

    async def GetTrafficPolicy(
        self, request: pb.GetTrafficPolicyRequest, call: Call
    ) -> pb.TrafficPolicyResponse:
        return self._control.get_policy(TRAFFIC, request.namespace, request.name)

    async def ReplaceTrafficPolicy(
        self, request: pb.ReplaceTrafficPolicyRequest, call: Call
    ) -> pb.TrafficPolicyResponse:
        return await self._control.replace_policy(
            TRAFFIC, request.name, request.namespace, request.policy, _expected(request)
        )

    async def DeleteTrafficPolicy(
        self, request: pb.DeleteTrafficPolicyRequest, call: Call
    ) -> pb.DeleteTrafficPolicyResponse:
        revision = await self._control.delete_policy(TRAFFIC, request.namespace, request.name)
        return pb.DeleteTrafficPolicyResponse(revision=revision)

    async def ListTrafficPolicies(
        self, request: pb.ListTrafficPoliciesRequest, call: Call
    ) -> pb.ListTrafficPoliciesResponse:
        revision = self._control.revision
        page, total = self._control.list_policies(TRAFFIC, request)
        return pb.ListTrafficPoliciesResponse(
            policies=page,
            total=total,
            limit=request.limit,
            offset=request.offset,
            revision=revision,
        )

    # -- circuit breakers --------------------------------------------------------------------

    async def UpdateCircuitBreaker(
        self, request: pb.UpdateCircuitBreakerRequest, call: Call
    ) -> pb.CircuitBreakerResponse:
        return await self._control.update_circuit_breaker(
            request.service_name, request.config, _expected(request)
        )

    async def GetCircuitBreaker(
        self, request: pb.GetCircuitBreakerRequest, call: Call
    ) -> pb.CircuitBreakerResponse:
        return self._control.get_circuit_breaker(request.service_name)

    async def DeleteCircuitBreaker(
        self, request: pb.DeleteCircuitBreakerRequest, call: Call
    ) -> pb.DeleteCircuitBreakerResponse:
        revision = await self._control.delete_circuit_breaker(request.service_name)
        return pb.DeleteCircuitBreakerResponse(revision=revision)

    async def ListCircuitBreakers(
        self, request: pb.ListCircuitBreakersRequest, call: Call
    ) -> pb.ListCircuitBreakersResponse:
        revision = self._control.revision
        page, total = self._control.list_circuit_breakers(request)
        return pb.ListCircuitBreakersResponse(
            circuit_breakers=page,
            total=total,
            limit=request.limit,
            offset=request.offset,
            revision=revision,
        )

    # -- security policies -------------------------------------------------------------------

    async def CreateSecurityPolicy(
        self, request: pb.CreateSecurityPolicyRequest, call: Call
    ) -> pb.SecurityPolicyResponse:
        return await self._control.create_policy(SECURITY, request.policy)

    async def GetSecurityPolicy(
        self, request: pb.GetSecurityPolicyRequest, call: Call
    ) -> pb.SecurityPolicyResponse:
        return self._control.get_policy(SECURITY, request.namespace, request.name)

    async def ReplaceSecurityPolicy(
        self, request: pb.ReplaceSecurityPolicyRequest, call: Call
    ) -> pb.SecurityPolicyResponse:
        return await self._control.replace_policy(
            SECURITY, request.name, request.namespace, request.policy, _expected(request)
        )

    async def DeleteSecurityPolicy(
        self, request: pb.DeleteSecurityPolicyRequest, call: Call
    ) -> pb.DeleteSecurityPolicyResponse:
        revision = await self._control.delete_policy(SECURITY, request.namespace, request.name)
        return pb.DeleteSecurityPolicyResponse(revision=revision)

    async def ListSecurityPolicies(
        self, request: pb.ListSecurityPoliciesRequest, call: Call
    ) -> pb.ListSecurityPoliciesResponse:
        revision = self._control.revision
        page, total = self._control.list_policies(SECURITY, request)
        return pb.ListSecurityPoliciesResponse(
            policies=page,
            total=total,
            limit=request.limit,
            offset=request.offset,
            revision=revision,
        )

    # -- mTLS, Explain -----------------------------------------------------------------------

    async def UpdateMtls(self, request: pb.UpdateMtlsRequest, call: Call) -> pb.MTLSConfigResponse:
        return await self._control.update_mtls(request.config, _expected(request))

    async def GetMtls(self, request: pb.GetMtlsRequest, call: Call) -> pb.MTLSConfigResponse:
        return self._control.get_mtls()

    async def Explain(self, request: pb.ExplainRequest, call: Call) -> pb.ExplainResponse:
        return self._control.explain(request)
