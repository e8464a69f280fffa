"""The sidecars as every replica sees them: a watch-fed index of the session records and replica
progress records under /lucid/sidecar/status/ (``keys.py``; written by ``writer.py``).

A session record says which replica holds the sidecar's stream; it is only believed while that
replica is live, i.e. while its progress record (under the replica's own lease) exists. Rollout
status, the sidecar list and health read from here, so any replica answers for all of them.
"""

from __future__ import annotations

from collections.abc import Callable

from lucid_cp.api.lucid.sidecar.v1 import storage_pb2 as spb
from lucid_cp.clock import Clock
from lucid_cp.sidecar import keys
from lucid_cp.store.base import KeyValue, WatchedPrefix
from lucid_cp.watchcache import Handler, Reflector

Record = spb.SidecarSession | spb.ReplicaProgress
_SESSIONS = keys.SESSIONS[len(keys.STATUS) :].decode()
_REPLICAS = keys.REPLICAS[len(keys.STATUS) :].decode()


class _StatusKeys(Handler[Record]):
    def __init__(self) -> None:
        self.sessions: dict[str, spb.SidecarSession] = {}
        self.replicas: dict[str, spb.ReplicaProgress] = {}
        self.on_session: Callable[[spb.SidecarSession], None] | None = None

    def key(self, store_key: bytes) -> str | None:
        key = store_key[len(keys.STATUS) :].decode()
        return key if key.startswith((_SESSIONS, _REPLICAS)) else None

    def decode(self, key: str, kv: KeyValue) -> Record:
        if key.startswith(_SESSIONS):
            session = spb.SidecarSession.FromString(kv.value)
            if session.service_id != key[len(_SESSIONS) :]:
                raise ValueError(f"the record holds serviceId {session.service_id!r}")
            return session
        progress = spb.ReplicaProgress.FromString(kv.value)
        if progress.replica != key[len(_REPLICAS) :]:
            raise ValueError(f"the record holds replica {progress.replica!r}")
        return progress

    def reset(self) -> None:
        self.sessions.clear()
        self.replicas.clear()

    def stored(self, key: str, value: Record, previous: Record | None) -> None:
        if isinstance(value, spb.SidecarSession):
            self.sessions[value.service_id] = value
            if self.on_session is not None:
                self.on_session(value)
        else:
            self.replicas[value.replica] = value

    def removed(self, key: str, previous: Record) -> None:
        if isinstance(previous, spb.SidecarSession):
            self.sessions.pop(previous.service_id, None)
        else:
            self.replicas.pop(previous.replica, None)


class StatusIndex:
    def __init__(self, store: WatchedPrefix, *, clock: Clock) -> None:
        self._keys = _StatusKeys()
        self._cache: Reflector[Record] = Reflector(
            store, keys.STATUS, self._keys, clock=clock, history=0, name="sidecar-status"
        )

    def on_session(self, callback: Callable[[spb.SidecarSession], None]) -> None:
        """Calls ``callback`` with every session record written (from any replica)."""
        self._keys.on_session = callback

    async def start(self) -> None:
        await self._cache.start()

    async def stop(self) -> None:
        await self._cache.stop()

    @property
    def revision(self) -> int:
        return self._cache.revision

    async def wait_for(self, revision: int, timeout: float) -> bool:
        return await self._cache.wait_for(revision, timeout)

    # -- reads (shared messages: copy before changing them) ----------------------------------

    def session(self, service_id: str) -> spb.SidecarSession | None:
        return self._keys.sessions.get(service_id)

    def sessions(self) -> list[spb.SidecarSession]:
        """Every session record, in serviceId order."""
        found = self._keys.sessions
        return [found[k] for k in sorted(found)]

    def replicas(self) -> dict[str, spb.ReplicaProgress]:
        """The live replicas (their progress records exist while their lease does)."""
        return dict(self._keys.replicas)

    def live(self, session: spb.SidecarSession) -> bool:
        """Its stream is open: the record says connected and its replica is live."""
        return session.connected and session.replica in self._keys.replicas
