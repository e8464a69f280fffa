"""Load-balancing choices among a service's eligible instances (pure, no I/O)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Sequence

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb

Instance = pb.ServiceInstance

# The preference among a service's instances: healthy, else degraded, else (only when asked)
# unhealthy or unknown. Draining instances are never eligible.
_TIERS = ((pb.HEALTH_STATE_HEALTHY,), (pb.HEALTH_STATE_DEGRADED,))
_LAST_RESORT = (pb.HEALTH_STATE_UNHEALTHY, pb.HEALTH_STATE_UNKNOWN, pb.HEALTH_STATE_UNSPECIFIED)


def eligible(
    instances: Iterable[Instance], *, version: str = "", include_unhealthy: bool = False
) -> list[Instance]:
    """The instances traffic may go to, sorted by serviceId: Resolve's choice, and what sidecar
    snapshots, message pushes and event pushes use. Never a draining one; of ``version`` when
    given; the best health tier that has any."""
    usable = [i for i in instances if not i.draining and (not version or i.version == version)]
    tiers = (*_TIERS, _LAST_RESORT) if include_unhealthy else _TIERS
    for states in tiers:
        chosen = [i for i in usable if i.status in states]
        if chosen:
            return sorted(chosen, key=lambda i: i.service_id)
    return []


class Balancer:
    """Holds the round-robin cursors; everything else is stateless.

    ``candidates`` must be in a stable order (the index gives them sorted by serviceId).
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._cursors: dict[str, int] = {}

    def pick(
        self,
        algorithm: int,
        candidates: Sequence[Instance],
        *,
        cursor_key: str,
        hash_key: str = "",
        connections: Callable[[str], int] = lambda _id: 0,
    ) -> Instance | None:
        if not candidates:
            return None
        if algorithm == pb.LOAD_BALANCE_RANDOM:
            return self._rng.choice(candidates)
        if algorithm == pb.LOAD_BALANCE_WEIGHTED:
            weighted = [c for c in candidates if c.weight > 0]
            if not weighted:
                return None
            return self._rng.choices(weighted, weights=[c.weight for c in weighted])[0]
        if algorithm == pb.LOAD_BALANCE_CONSISTENT_HASH:
            # ResolveRequest declares hashKey required with consistent-hash (a message rule that
            # validation enforces at the boundary); reaching here without one is a bug.
            assert hash_key, "consistent-hash without a hash key passed validation"
            return max(candidates, key=lambda c: _rendezvous(hash_key, c.service_id))
        if algorithm == pb.LOAD_BALANCE_LEAST_CONNECTIONS:
            loads = [connections(c.service_id) for c in candidates]
            fewest = min(loads)
            candidates = [c for c, load in zip(candidates, loads, strict=True) if load == fewest]
        return self._round_robin(candidates, cursor_key)

    def _round_robin(self, candidates: Sequence[Instance], cursor_key: str) -> Instance:
        position = self._cursors.get(cursor_key, 0)
        self._cursors[cursor_key] = position + 1
        return candidates[position % len(candidates)]


def _rendezvous(key: str, service_id: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{service_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
