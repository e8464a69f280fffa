"""What Explain reads from the systems built on the mesh: the destinations' defaults that are not
mesh resources (today: sidecar configuration). The mesh declares this interface; the system that
holds the data implements it and is handed to ``MeshControl.use_destination_defaults``, so the
dependency keeps pointing at the mesh (the mesh never imports such a system).
"""

from __future__ import annotations

from typing import Protocol

from lucid_cp.mesh.engine import Outbound

__all__ = ["DestinationDefaults", "Outbound"]


class DestinationDefaults(Protocol):
    """Read-only views, answered from memory (no I/O): called while Explain decides. The
    messages returned are shared: callers copy them, never change them."""

    @property
    def revision(self) -> int:
        """The store revision the answers are read at. It changes whenever an answer may have
        changed: the mesh recompiles its configuration when it does, not otherwise."""
        ...

    def deny_all(self) -> frozenset[str]:
        """The services whose security configuration says deny-all (the engine's step 3)."""
        ...

    def outbound(self, source_service: str, destination_service: str) -> Outbound:
        """(retry, timeout) that ``source_service`` applies to its requests to
        ``destination_service``; None for what it does not configure."""
        ...
