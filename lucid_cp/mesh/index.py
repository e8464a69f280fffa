"""The mesh read path: an in-memory index of every mesh resource, on the watchcache reflector.

One reflector follows /lucid/mesh/ (``keys.py``); the handler decodes each kind into its read
response message (``revision`` = the record's mod_revision) and keeps one map per kind. Get,
List and Explain read only from here. Cached messages are immutable once inserted (replaced,
never mutated): readers copy before filling in anything.

``config()`` compiles the decision engine's effective configuration (enabled policies, circuit
breakers by destination, and what the destination defaults say: deny-all destinations, the
sources' retry and timeout settings) once per (applied revision, defaults revision), so Explain
does not recompile per call.
"""

from __future__ import annotations

from collections.abc import Callable

from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as pb
from lucid_cp.clock import Clock
from lucid_cp.mesh import keys
from lucid_cp.mesh.defaults import DestinationDefaults
from lucid_cp.mesh.engine import MeshConfig
from lucid_cp.store.base import KeyValue, WatchedPrefix
from lucid_cp.watchcache import Handler, Reflector

Record = (
    pb.TrafficPolicyResponse
    | pb.SecurityPolicyResponse
    | pb.CircuitBreakerResponse
    | pb.MTLSConfigResponse
)
_DECODERS: dict[keys.Kind, Callable[[bytes], Record]] = {
    keys.Kind.TRAFFIC: pb.TrafficPolicyResponse.FromString,
    keys.Kind.SECURITY: pb.SecurityPolicyResponse.FromString,
    keys.Kind.CIRCUIT_BREAKER: pb.CircuitBreakerResponse.FromString,
    keys.Kind.MTLS: pb.MTLSConfigResponse.FromString,
}


class _MeshKeys(Handler[Record]):
    """Decodes each kind and keeps the per-kind maps (cache key -> record) in step."""

    def __init__(self) -> None:
        self.by_kind: dict[keys.Kind, dict[str, Record]] = {k: {} for k in keys.Kind}

    def key(self, store_key: bytes) -> str | None:
        parsed = keys.parse(store_key)
        return store_key[len(keys.PREFIX) :].decode() if parsed is not None else None

    def decode(self, key: str, kv: KeyValue) -> Record:
        parsed = keys.parse(kv.key)
        assert parsed is not None  # key() let it through
        kind, ident = parsed
        record = _DECODERS[kind](kv.value)
        record.revision = kv.mod_revision
        if isinstance(record, (pb.TrafficPolicyResponse, pb.SecurityPolicyResponse)):
            if f"{record.policy.namespace}/{record.policy.name}" != ident:
                raise ValueError(f"the record holds {record.policy.namespace}/{record.policy.name}")
        elif isinstance(record, pb.CircuitBreakerResponse) and record.service_name != ident:
            raise ValueError(f"the record holds serviceName {record.service_name!r}")
        return record

    def reset(self) -> None:
        for records in self.by_kind.values():
            records.clear()

    def stored(self, key: str, value: Record, previous: Record | None) -> None:
        self.by_kind[_kind_of(key)][key] = value

    def removed(self, key: str, previous: Record) -> None:
        self.by_kind[_kind_of(key)].pop(key, None)


def _kind_of(cache_key: str) -> keys.Kind:
    parsed = keys.parse(keys.PREFIX + cache_key.encode())
    assert parsed is not None
    return parsed[0]


class MeshIndex:
    def __init__(self, store: WatchedPrefix, *, clock: Clock, history: int = 1_000) -> None:
        self._keys = _MeshKeys()
        self._cache: Reflector[Record] = Reflector(
            store, keys.PREFIX, self._keys, clock=clock, history=history, name="mesh"
        )
        # The last configuration compiled: (its revisions (index, defaults), defaults, it).
        self._compiled: tuple[tuple[int, int], DestinationDefaults | None, MeshConfig] | None = None
        self.read_your_writes_timeouts = 0  # fed by the core when wait_for gives up

    async def start(self) -> None:
        await self._cache.start()

    async def stop(self) -> None:
        await self._cache.stop()

    @property
    def revision(self) -> int:
        return self._cache.revision

    @property
    def connected(self) -> bool:
        return self._cache.connected

    def __len__(self) -> int:
        return len(self._cache)

    async def wait_for(self, revision: int, timeout: float) -> bool:
        """Waits until the index has applied ``revision`` (read-your-writes); False on timeout."""
        return await self._cache.wait_for(revision, timeout)

    # -- reads (the returned messages are shared: copy before changing them) -----------------

    def traffic_policy(self, namespace: str, name: str) -> pb.TrafficPolicyResponse | None:
        found = self._get(keys.policy_key(keys.Kind.TRAFFIC, namespace, name))
        assert found is None or isinstance(found, pb.TrafficPolicyResponse)
        return found

    def security_policy(self, namespace: str, name: str) -> pb.SecurityPolicyResponse | None:
        found = self._get(keys.policy_key(keys.Kind.SECURITY, namespace, name))
        assert found is None or isinstance(found, pb.SecurityPolicyResponse)
        return found

    def circuit_breaker(self, service_name: str) -> pb.CircuitBreakerResponse | None:
        found = self._get(keys.circuit_breaker_key(service_name))
        assert found is None or isinstance(found, pb.CircuitBreakerResponse)
        return found

    def mtls(self) -> pb.MTLSConfigResponse | None:
        found = self._get(keys.MTLS_KEY)
        assert found is None or isinstance(found, pb.MTLSConfigResponse)
        return found

    def traffic_policies(self) -> list[pb.TrafficPolicyResponse]:
        """In (namespace, name) order."""
        return self._sorted(keys.Kind.TRAFFIC)  # type: ignore[return-value]

    def security_policies(self) -> list[pb.SecurityPolicyResponse]:
        return self._sorted(keys.Kind.SECURITY)  # type: ignore[return-value]

    def circuit_breakers(self) -> list[pb.CircuitBreakerResponse]:
        """In service-name order."""
        return self._sorted(keys.Kind.CIRCUIT_BREAKER)  # type: ignore[return-value]

    def config(self, defaults: DestinationDefaults | None = None) -> tuple[MeshConfig, int]:
        """The decision engine's effective configuration and the store revision it was compiled
        at: the index's, or the defaults' when newer. ``defaults`` (None: none) give the deny-all
        destinations and the sources' retry and timeout settings."""
        revisions = (self.revision, defaults.revision if defaults is not None else 0)
        cached = self._compiled
        if cached is None or cached[0] != revisions or cached[1] is not defaults:
            destinations = {
                cb.service_name: pb.DestinationSettings(circuit_breaker=cb.config)
                for cb in self.circuit_breakers()
            }
            config = MeshConfig.compile(
                (r.policy for r in self.traffic_policies()),
                (r.policy for r in self.security_policies()),
                destinations,
                deny_all=defaults.deny_all() if defaults is not None else (),
                outbound=defaults.outbound if defaults is not None else None,
            )
            cached = self._compiled = (revisions, defaults, config)
        return cached[2], max(revisions)

    def _get(self, store_key: bytes) -> Record | None:
        return self._cache.get(store_key[len(keys.PREFIX) :].decode())

    def _sorted(self, kind: keys.Kind) -> list[Record]:
        """By the segments of the key: (namespace, name) for policies, "-" before "/" aside."""
        records = self._keys.by_kind[kind]
        return [records[k] for k in sorted(records, key=lambda k: k.split("/"))]
