"""Which gRPC services the gateway exposes: found in the generated package's descriptors."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

from google.protobuf.descriptor import ServiceDescriptor

DEFAULT_PACKAGE = "lucid_cp.api"


class ServiceNotFound(LookupError):
    """A service the gateway was asked to expose is not in the generated package."""


def package_services(package: str = DEFAULT_PACKAGE) -> list[ServiceDescriptor]:
    """Every service declared by the ``*_pb2`` modules under ``package``, by full name."""
    root = importlib.import_module(package)
    found: dict[str, ServiceDescriptor] = {}
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(info.name)
        for service in module.DESCRIPTOR.services_by_name.values():
            found[service.full_name] = service
    return [found[name] for name in sorted(found)]


def select_services(
    wanted: Sequence[str | ServiceDescriptor] | None, package: str = DEFAULT_PACKAGE
) -> list[ServiceDescriptor]:
    """Resolves ``wanted`` (full names or descriptors); None selects the whole package.

    Raises ServiceNotFound naming every missing service, so a misconfigured gateway fails at
    startup rather than answering 404 later.
    """
    if wanted is None:
        return package_services(package)
    available: dict[str, ServiceDescriptor] | None = None
    out: list[ServiceDescriptor] = []
    missing: list[str] = []
    for item in wanted:
        if isinstance(item, ServiceDescriptor):
            out.append(item)
            continue
        if available is None:
            available = {s.full_name: s for s in package_services(package)}
        service = available.get(item)
        if service is None:
            missing.append(item)
        else:
            out.append(service)
    if missing:
        raise ServiceNotFound(
            f"gRPC service(s) not found in {package}: {', '.join(missing)}"
            f" (available: {', '.join(sorted(available or {})) or 'none'})"
        )
    return out
