"""SidecarService servicer: thin. Authentication, rate limits, validation and error mapping
happen in the policy interceptor, which hands each method the request and a ``Call``; each
method calls the core (``control.py``) with the caller's principal (ownership is the core's)."""

from __future__ import annotations

from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.call import Call
from lucid_cp.sidecar.control import SidecarControl


class SidecarServicer:
    """Implements the configuration methods of lucid.sidecar.v1.SidecarService."""

    def __init__(self, control: SidecarControl) -> None:
        self._control = control

    async def ConfigureSidecar(
        self, request: pb.ConfigureSidecarRequest, call: Call
    ) -> pb.SidecarConfigurationResponse:
        return await self._control.configure(call.principal, request.configuration)

    async def GetSidecarConfig(
        self, request: pb.GetSidecarConfigRequest, call: Call
    ) -> pb.SidecarConfigurationResponse:
        return self._control.get_config(call.principal, request.service_id)

    async def DeleteSidecarConfig(
        self, request: pb.DeleteSidecarConfigRequest, call: Call
    ) -> pb.DeleteSidecarConfigResponse:
        revision = await self._control.delete_config(call.principal, request.service_id)
        return pb.DeleteSidecarConfigResponse(revision=revision)

    async def UpdateSidecarPolicy(
        self, request: pb.UpdateSidecarPolicyRequest, call: Call
    ) -> pb.SidecarPolicyResponse:
        expected = request.expected_revision if request.HasField("expected_revision") else None
        return await self._control.update_policy(
            call.principal, request.policy_id, request.policy, request.service_name, expected
        )

    async def GetSidecarPolicy(
        self, request: pb.GetSidecarPolicyRequest, call: Call
    ) -> pb.SidecarPolicyResponse:
        return self._control.get_policy(call.principal, request.policy_id, request.service_name)
