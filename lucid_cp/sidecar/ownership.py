"""Which service a sidecar request addresses: a service token always its own, an admin the one
it names (an admin must name one; naming another service with a service token is 403)."""

from __future__ import annotations

from lucid_cp.auth.tokens import Principal
from lucid_cp.errors import FieldViolation, InvalidArgument, PermissionDenied


def addressed_service(
    principal: Principal, service_name: str, invalid: type[InvalidArgument], what: str
) -> str:
    """``what`` names what is addressed, for the 403 ("the policies", "the sidecars");
    ``invalid`` is the 400 raised when an admin names no service."""
    if principal.is_admin:
        if not service_name:
            raise invalid(
                "serviceName: is required with an admin token",
                [FieldViolation("serviceName", "is required with an admin token")],
            )
        return service_name
    if service_name and service_name != principal.subject:
        raise PermissionDenied(
            f"token subject {principal.subject!r} may not address {what} of "
            f"service {service_name!r}",
            details={"subject": principal.subject, "serviceName": service_name},
        )
    return principal.subject
