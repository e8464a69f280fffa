"""Method policies, read from the descriptors: ``(lucid.common.v1.policy)`` on every method says
its rate-limit bucket and whether it is admin-only. Fail closed: a served method without a
policy has none here (the interceptor refuses it), and a policy naming a bucket that is not
configured stops start-up. Only the services in ``PUBLIC_SERVICES`` are served without one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor, FileDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2

from lucid_cp.api.grpc.reflection.v1 import reflection_pb2 as reflection_v1_pb2
from lucid_cp.api.lucid.common.v1 import options_pb2
from lucid_cp.errors import InvalidRequestError

# Served without authentication, by explicit allowlist: health checking and server reflection.
PUBLIC_SERVICES: frozenset[str] = frozenset(
    {
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection_v1alpha_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name,
        reflection_v1_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name,
    }
)


class PolicyError(ValueError):
    """The served descriptors and the configuration disagree (raised at start-up)."""


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    full_method: str  # "/lucid.discovery.v1.DiscoveryService/Register"
    bucket: str
    admin_only: bool
    # Raised for a request that breaks its declared field rules (the system's own subclass).
    invalid: InvalidRequestError
    # A batch: the repeated request field whose items take a token each (at least one).
    items: str = ""
    # A client stream: each request message takes a token (besides the call's own).
    each_request: bool = False


def policies_from(
    files: Iterable[FileDescriptor],
    invalid: InvalidRequestError,
    per_method: Mapping[str, InvalidRequestError] | None = None,
) -> dict[str, MethodPolicy]:
    """The policy of every method of every service in ``files``; methods that declare none are
    left out, so they are refused. ``per_method`` (method full name, as in its descriptor ->
    error) overrides ``invalid`` for those methods; naming a method not in ``files`` is a
    PolicyError (a typo would otherwise fall back silently)."""
    per_method = per_method or {}
    known = {m.full_name for f in files for s in f.services_by_name.values() for m in s.methods}
    unknown = sorted(set(per_method) - known)
    if unknown:
        raise PolicyError(f"invalid-request errors given for unknown methods: {', '.join(unknown)}")
    table: dict[str, MethodPolicy] = {}
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(options_pb2.policy):
                    continue
                declared = options.Extensions[options_pb2.policy]
                full = f"/{service.full_name}/{method.name}"
                items = declared.rate_limit_items
                if items:
                    field = method.input_type.fields_by_name.get(items)
                    if field is None or not _repeated(field) or method.client_streaming:
                        raise PolicyError(
                            f"{full}: rate_limit_items {items!r} is not a repeated field of a "
                            "unary request"
                        )
                if declared.rate_limit_each_request and not method.client_streaming:
                    raise PolicyError(f"{full}: rate_limit_each_request needs a client stream")
                table[full] = MethodPolicy(
                    full,
                    declared.rate_limit_bucket,
                    declared.admin_only,
                    per_method.get(method.full_name, invalid),
                    items,
                    declared.rate_limit_each_request,
                )
    return table


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def check_buckets(policies: Mapping[str, MethodPolicy], configured: Iterable[str]) -> None:
    """Every policy names a configured bucket; raises PolicyError naming each that does not."""
    known = set(configured)
    problems = [
        f"{p.full_method}: rate-limit bucket {p.bucket!r} is not configured"
        if p.bucket
        else f"{p.full_method}: its policy names no rate-limit bucket"
        for p in policies.values()
        if p.bucket not in known
    ]
    if problems:
        raise PolicyError("; ".join(problems))
