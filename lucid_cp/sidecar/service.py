"""SidecarService servicer: thin. Authentication, rate limits, validation and error mapping
happen in the policy interceptor, which hands each method the request and a ``Call``; each
method calls the core with the caller's principal (ownership is the core's): configurations and
policies (``control.py``), distribution (``distributor.py``, ``stream.py``) and reads of the
sidecars' state (``observe.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.call import Call
from lucid_cp.sidecar import stream
from lucid_cp.sidecar.control import SidecarControl
from lucid_cp.sidecar.distributor import Distributor
from lucid_cp.sidecar.errors import InstanceNotRegistered
from lucid_cp.sidecar.observe import Observer


class SidecarServicer:
    """Implements lucid.sidecar.v1.SidecarService."""

    def __init__(
        self, control: SidecarControl, distributor: Distributor, observer: Observer
    ) -> None:
        self._control = control
        self._distributor = distributor
        self._observer = observer

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

    async def GetEffectiveConfig(
        self, request: pb.GetEffectiveConfigRequest, call: Call
    ) -> pb.ConnectResponse:
        self._control.require_instance_access(call.principal, request.service_id)
        found = self._distributor.effective(request.service_id)
        if found is None:
            raise InstanceNotRegistered(
                f"no instance {request.service_id} is registered",
                details={"serviceId": request.service_id},
            )
        return found

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

    async def GetSidecarMetrics(
        self, request: pb.GetSidecarMetricsRequest, call: Call
    ) -> pb.SidecarMetrics:
        return await self._observer.metrics(call.principal, request)

    async def GetSidecarHealth(
        self, request: pb.GetSidecarHealthRequest, call: Call
    ) -> pb.SidecarHealth:
        return self._observer.health(call.principal, request.service_id, request.service_name)

    async def GetRollout(self, request: pb.GetRolloutRequest, call: Call) -> pb.RolloutStatus:
        return self._observer.rollout(request.revision if request.HasField("revision") else None)

    async def ListSidecars(self, request: pb.ListSidecarsRequest, call: Call) -> pb.SidecarList:
        return self._observer.sidecars(request)

    def Connect(
        self, requests: AsyncIterator[pb.ConnectRequest], call: Call
    ) -> AsyncIterator[pb.ConnectResponse]:
        return stream.connect(self._distributor, call.principal, requests, call.on_done)
