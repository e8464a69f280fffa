"""A Store wrapper that can be cut off: while ``down``, every call fails as an unreachable
backend does (StoreUnavailableError), and open watches break. Models an etcd outage or a
partition of one replica without touching the backend underneath."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from lucid_cp.store.base import (
    Compare,
    KeyValue,
    Lease,
    RangeResult,
    Store,
    StoreUnavailableError,
    TxnOp,
    TxnResult,
    WatchBatch,
)


class FlakyStore:
    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.down = False
        self.txns = 0  # successful txns through this wrapper

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailableError("store unreachable (test outage)")

    async def current_revision(self) -> int:
        self._check()
        return await self.inner.current_revision()

    async def get(self, key: bytes) -> KeyValue | None:
        self._check()
        return await self.inner.get(key)

    async def range(
        self, prefix: bytes, *, limit: int = 0, revision: int = 0, start: bytes = b""
    ) -> RangeResult:
        self._check()
        return await self.inner.range(prefix, limit=limit, revision=revision, start=start)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        self._check()
        return await self.inner.put(key, value, lease=lease)

    async def delete(self, key: bytes, *, prefix: bool = False) -> tuple[int, int]:
        self._check()
        return await self.inner.delete(key, prefix=prefix)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        self._check()
        result = await self.inner.txn(compares, success, failure)
        self.txns += 1
        return result

    async def grant_lease(self, ttl: int) -> Lease:
        self._check()
        return await self.inner.grant_lease(ttl)

    async def keepalive(self, lease_id: int) -> int:
        self._check()
        return await self.inner.keepalive(lease_id)

    async def revoke_lease(self, lease_id: int) -> int:
        self._check()
        return await self.inner.revoke_lease(lease_id)

    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        self._check()
        async for batch in self.inner.watch(prefix, start_revision):
            self._check()
            yield batch

    async def compact(self, revision: int) -> None:
        self._check()
        await self.inner.compact(revision)

    async def close(self) -> None:
        await self.inner.close()
