"""The sidecar read path: an in-memory index of every stored sidecar configuration, on the
watchcache reflector (one watch on /lucid/sidecar/, ``keys.py``).

Records are SidecarConfigurationResponse messages with ``revision`` and ``version`` set from the
key's mod_revision, kept by serviceId and grouped by service name (a policy belongs to a
service: its configurations are looked up here). Cached messages are immutable once inserted:
readers copy before filling in anything.
"""

from __future__ import annotations

from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.clock import Clock
from lucid_cp.sidecar import keys
from lucid_cp.store.base import KeyValue, WatchedPrefix
from lucid_cp.watchcache import Handler, Reflector

Record = pb.SidecarConfigurationResponse


class _ConfigKeys(Handler[Record]):
    def __init__(self) -> None:
        self.by_service: dict[str, dict[str, Record]] = {}

    def key(self, store_key: bytes) -> str | None:
        return keys.parse(store_key)

    def decode(self, key: str, kv: KeyValue) -> Record:
        record = Record.FromString(kv.value)
        if record.configuration.service_id != key:
            raise ValueError(f"the record holds serviceId {record.configuration.service_id!r}")
        record.revision = kv.mod_revision
        record.version = record.configuration.version = str(kv.mod_revision)
        return record

    def group(self, value: Record) -> str:
        return value.service_name

    def reset(self) -> None:
        self.by_service.clear()

    def stored(self, key: str, value: Record, previous: Record | None) -> None:
        if previous is not None and previous.service_name != value.service_name:
            self._unlink(key, previous.service_name)
        self.by_service.setdefault(value.service_name, {})[key] = value

    def removed(self, key: str, previous: Record) -> None:
        self._unlink(key, previous.service_name)

    def _unlink(self, service_id: str, service_name: str) -> None:
        siblings = self.by_service.get(service_name)
        if siblings is not None:
            siblings.pop(service_id, None)
            if not siblings:
                del self.by_service[service_name]


class SidecarIndex:
    def __init__(self, store: WatchedPrefix, *, clock: Clock, history: int = 1_000) -> None:
        self._keys = _ConfigKeys()
        self._cache: Reflector[Record] = Reflector(
            store, keys.CONFIGS, self._keys, clock=clock, history=history, name="sidecar"
        )
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

    def get(self, service_id: str) -> Record | None:
        return self._cache.get(service_id)

    def items(self) -> list[tuple[str, Record]]:
        """(serviceId, configuration) of every stored configuration."""
        return list(self._cache.items())

    def services(self) -> list[str]:
        """The names of the services with stored configurations, in order."""
        return sorted(self._keys.by_service)

    def of_service(self, service_name: str) -> dict[str, Record]:
        """serviceId -> configuration, for the service's stored configurations."""
        return dict(self._keys.by_service.get(service_name, {}))

    def holding(self, service_name: str, policy_id: str) -> list[Record]:
        """The service's configurations holding the policy, in serviceId order."""
        found = self._keys.by_service.get(service_name, {})
        return [
            found[sid]
            for sid in sorted(found)
            if any(p.policy_id == policy_id for p in found[sid].configuration.policies)
        ]
