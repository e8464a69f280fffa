"""The store contract on stdlib sqlite3: a persistent, single-process emulation of etcd's MVCC.

Layout (one database file, WAL mode):

* ``meta``    — one row: the current ``revision`` and the ``compact_revision``.
* ``kv``      — the live keyspace (the latest version of every existing key), for cheap reads.
* ``history`` — one row per event (put or delete tombstone) ever written, tagged with its
  revision; ``prev_revision`` points at the version it replaced. Ranges at a pinned revision and
  watches read from here. ``compact(R)`` deletes every row not needed to answer a range at a
  revision >= R (etcd's rule), so watching from R or below is no longer possible.
* ``leases``  — id, granted ttl and ``expires_at`` in *wall-clock* seconds (``clock.now()``), so
  a lease's deadline survives a restart: a lease that expired while the process was down is reaped
  right after reopening.

One store owns the file (sqlite EXCLUSIVE locking): a second store opening it, in this process or
another, fails with StoreUnavailableError.

Every sqlite call runs on one dedicated worker thread, which also serializes writes; the event
loop never blocks on disk. After each commit the worker schedules a wake-up of the in-process
watchers whose prefix was touched; watchers then pull the new history rows themselves (by
revision), so a slow watcher holds no buffer and never slows a writer down.

A background task (started on first use) deletes the keys of expired leases: one atomic write
per lease, producing ordinary DELETE events. It waits for the next deadline on the injected
clock. ``reap_expired_leases()`` runs one pass on demand, which is what tests driving a
:class:`~lucid_cp.clock.FakeClock` call to make a jump take effect at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lucid_cp.clock import Clock, SystemClock
from lucid_cp.store._contract import (
    check_key,
    check_put,
    check_txn,
    granted_ttl,
    holds,
    prefix_end,
)
from lucid_cp.store.base import (
    CompactedError,
    Compare,
    Delete,
    EventType,
    FutureRevisionError,
    KeyValue,
    Lease,
    LeaseNotFoundError,
    Put,
    RangeResult,
    StoreUnavailableError,
    TxnOp,
    TxnResult,
    WatchBatch,
    WatchEvent,
)

# Revisions of history kept (older ones are compacted; see _compact_old_history).
HISTORY_KEPT = 100_000

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL,
    compact_revision INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (id, revision, compact_revision) VALUES (1, 1, 0);
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    revision INTEGER NOT NULL,
    key BLOB NOT NULL,
    deleted INTEGER NOT NULL,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_revision ON history (revision);
CREATE UNIQUE INDEX IF NOT EXISTS history_by_key ON history (key, revision);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY,
    ttl INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_by_expiry ON leases (expires_at);
COMMIT;
"""

_KV_COLUMNS = "key, value, create_revision, mod_revision, version, lease"
_WATCH_CHUNK_ROWS = 512
_REAP_BATCH = 256


def _key_range_sql(column: str, end: bytes | None) -> str:
    return f"{column} >= ? AND {column} < ?" if end is not None else f"{column} >= ?"


def _key_range_args(start: bytes, end: bytes | None) -> tuple[bytes, ...]:
    return (start, end) if end is not None else (start,)


@dataclass(slots=True)
class _Commit:
    """What one committed write changed (for waking watchers)."""

    revision: int
    keys: list[bytes]


@dataclass(slots=True)
class _Write:
    """An open write transaction: the revision its changes get, and the keys it changed."""

    revision: int
    keys: list[bytes] = field(default_factory=list)
    # Rows the txn's compares read, by key (None: missing), until a put of the key uses them
    # (a compare-and-swap then reads its row once).
    compared: dict[bytes, tuple[int, int, int] | None] = field(default_factory=dict)


class _Engine:
    """All sqlite work. Every method runs on the store's single worker thread."""

    def __init__(self, path: str, clock: Clock) -> None:
        self._clock = clock
        # timeout=0: a file held by another store fails at once instead of waiting.
        self._db = sqlite3.connect(path, isolation_level=None, cached_statements=512, timeout=0)
        try:
            # The revision counters are cached in memory, so one store must own the file:
            # EXCLUSIVE locking keeps the write lock from the first write (the schema script
            # below) until close. It also lets WAL run without a shared-memory index.
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise
        revision, compact_revision = self._db.execute(
            "SELECT revision, compact_revision FROM meta WHERE id = 1"
        ).fetchone()
        self.revision: int = revision
        self.compact_revision: int = compact_revision
        self.on_commit: Callable[[_Commit], None] = lambda commit: None

    def close(self) -> None:
        self._db.close()

    # -- write machinery -------------------------------------------------------------------

    def _write(self, body: Callable[[_Write], T]) -> T:
        """Run ``body`` as one atomic sqlite transaction at revision ``current + 1``; the revision
        only advances if ``body`` changed a key."""
        w = _Write(self.revision + 1)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = body(w)
            if w.keys:
                self._db.execute("UPDATE meta SET revision = ? WHERE id = 1", (w.revision,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if w.keys:
            self.revision = w.revision
            self.on_commit(_Commit(w.revision, w.keys))
        return result

    def _require_lease(self, lease_id: int) -> None:
        row = self._db.execute("SELECT expires_at FROM leases WHERE id = ?", (lease_id,)).fetchone()
        if row is None or row[0] <= self._clock.now():
            raise LeaseNotFoundError(lease_id)

    def _put(self, w: _Write, key: bytes, value: bytes, lease: int) -> None:
        self._put_all(w, [Put(key, value, lease)])

    def _delete_rows(self, w: _Write, rows: list[tuple[bytes, int]]) -> int:
        if not rows:
            return 0
        self._db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k, _ in rows])
        self._db.executemany(
            "INSERT INTO history (revision, key, deleted, value, create_revision, version, lease,"
            " prev_revision) VALUES (?, ?, 1, X'', 0, 0, 0, ?)",
            [(w.revision, k, mod) for k, mod in rows],
        )
        w.keys.extend(k for k, _ in rows)
        return len(rows)

    def _delete(self, w: _Write, key: bytes, prefix: bool) -> int:
        if prefix:
            end = prefix_end(key)
            rows = self._db.execute(
                f"SELECT key, mod_revision FROM kv WHERE {_key_range_sql('key', end)} ORDER BY key",
                _key_range_args(key, end),
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT key, mod_revision FROM kv WHERE key = ?", (key,)
            ).fetchall()
        return self._delete_rows(w, rows)

    def _revoke(self, w: _Write, lease_id: int) -> None:
        rows = self._db.execute(
            "SELECT key, mod_revision FROM kv WHERE lease = ? ORDER BY key", (lease_id,)
        ).fetchall()
        self._delete_rows(w, rows)
        self._db.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

    # -- writes ----------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, lease: int) -> int:
        self._write(lambda w: self._put(w, key, value, lease))
        return self.revision

    def delete(self, key: bytes, prefix: bool) -> tuple[int, int]:
        deleted = self._write(lambda w: self._delete(w, key, prefix))
        return deleted, self.revision

    def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp]
    ) -> TxnResult:
        def body(w: _Write) -> tuple[bool, list[KeyValue | int | None]]:
            succeeded = self._compare_all(compares, w)
            ops = success if succeeded else failure
            if len(ops) > 1 and all(type(op) is Put for op in ops):
                self._put_all(w, ops)  # type: ignore[arg-type]
                return succeeded, [None] * len(ops)
            responses: list[KeyValue | int | None] = []
            for op in ops:
                if isinstance(op, Put):
                    self._put(w, op.key, op.value, op.lease)
                    responses.append(None)
                elif isinstance(op, Delete):
                    responses.append(self._delete(w, op.key, op.prefix))
                else:
                    responses.append(self.get(op.key))
            return succeeded, responses

        succeeded, responses = self._write(body)
        return TxnResult(succeeded, self.revision, responses)

    def _rows(self, keys: Sequence[bytes]) -> dict[bytes, tuple[bytes, int, int, int, int]]:
        """(value, create_revision, mod_revision, version, lease) of each existing key, in one
        query (a txn holds at most MAX_TXN_OPS keys: within sqlite's parameter limit)."""
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        cursor = self._db.execute(
            "SELECT key, value, create_revision, mod_revision, version, lease FROM kv"
            f" WHERE key IN ({marks})",
            list(keys),
        )
        return {row[0]: row[1:] for row in cursor}

    def _compare_all(self, compares: Sequence[Compare], w: _Write) -> bool:
        """Every compare, against the rows read in one query (each kept for a put of its key
        in the same txn, so a compare-and-swap reads its row once)."""
        rows = self._rows(list(dict.fromkeys(c.key for c in compares)))
        held = True
        for c in compares:
            row = rows.get(c.key)
            w.compared[c.key] = None if row is None else (row[1], row[2], row[3])
            held = held and holds(c, None if row is None else KeyValue(c.key, *row))
        return held

    def _put_all(self, w: _Write, puts: Sequence[Put]) -> None:
        """A branch of puts only (of distinct keys: validated), written with two statements."""
        for lease in {p.lease for p in puts if p.lease}:
            self._require_lease(lease)
        unread = [p.key for p in puts if p.key not in w.compared]
        fetched = self._rows(unread)
        kv_rows = []
        history_rows = []
        for p in puts:
            if p.key in w.compared:
                known = w.compared.pop(p.key)
            else:
                row = fetched.get(p.key)
                known = None if row is None else (row[1], row[2], row[3])
            if known is None:
                create, prev, version = w.revision, 0, 1
            else:
                create, prev, version = known[0], known[1], known[2] + 1
            kv_rows.append((p.key, p.value, create, w.revision, version, p.lease))
            history_rows.append((w.revision, p.key, p.value, create, version, p.lease, prev))
        self._db.executemany(
            f"INSERT OR REPLACE INTO kv ({_KV_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", kv_rows
        )
        self._db.executemany(
            "INSERT INTO history (revision, key, deleted, value, create_revision, version, lease,"
            " prev_revision) VALUES (?, ?, 0, ?, ?, ?, ?, ?)",
            history_rows,
        )
        w.keys.extend(p.key for p in puts)

    def grant_lease(self, ttl: int) -> Lease:
        while True:
            lease_id = secrets.randbelow(2**62) + 1
            if self._db.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone():
                continue
            self._db.execute(
                "INSERT INTO leases (id, ttl, expires_at) VALUES (?, ?, ?)",
                (lease_id, ttl, self._clock.now() + ttl),
            )
            return Lease(lease_id, ttl)

    def keepalive(self, lease_id: int) -> int:
        row = self._db.execute(
            "SELECT ttl, expires_at FROM leases WHERE id = ?", (lease_id,)
        ).fetchone()
        now = self._clock.now()
        if row is None or row[1] <= now:
            raise LeaseNotFoundError(lease_id)
        self._db.execute("UPDATE leases SET expires_at = ? WHERE id = ?", (now + row[0], lease_id))
        return int(row[0])

    def revoke_lease(self, lease_id: int) -> int:
        if self._db.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone() is None:
            raise LeaseNotFoundError(lease_id)
        self._write(lambda w: self._revoke(w, lease_id))
        return self.revision

    def reap_expired(self) -> tuple[int, float | None]:
        """Revoke up to a batch of expired leases, one atomic write each. Returns how many were
        reaped and the earliest remaining deadline (None if no lease is left)."""
        now = self._clock.now()
        expired = [
            lease_id
            for (lease_id,) in self._db.execute(
                "SELECT id FROM leases WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
                (now, _REAP_BATCH),
            )
        ]
        for lease_id in expired:
            self._write(functools.partial(self._revoke, lease_id=lease_id))
        (next_deadline,) = self._db.execute("SELECT MIN(expires_at) FROM leases").fetchone()
        return len(expired), next_deadline

    def compact(self, revision: int) -> None:
        if revision > self.revision:
            raise FutureRevisionError(f"cannot compact at {revision}: store is at {self.revision}")
        if revision <= self.compact_revision:
            raise CompactedError(self.compact_revision)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "DELETE FROM history WHERE revision <= :rev AND (deleted = 1 OR EXISTS ("
                " SELECT 1 FROM history AS newer WHERE newer.key = history.key"
                " AND newer.revision > history.revision AND newer.revision <= :rev))",
                {"rev": revision},
            )
            self._db.execute("UPDATE meta SET compact_revision = ? WHERE id = 1", (revision,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.compact_revision = revision

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: bytes) -> KeyValue | None:
        row = self._db.execute(f"SELECT {_KV_COLUMNS} FROM kv WHERE key = ?", (key,)).fetchone()
        return KeyValue(*row) if row else None

    def range(self, prefix: bytes, limit: int, revision: int, start: bytes) -> RangeResult:
        rev = revision or self.revision
        if rev > self.revision:
            raise FutureRevisionError(f"revision {rev} is newer than the store's {self.revision}")
        if rev < self.compact_revision:
            raise CompactedError(self.compact_revision)
        end = prefix_end(prefix)
        args: tuple[bytes | int, ...] = _key_range_args(max(prefix, start), end)
        if rev == self.revision:
            source = f"SELECT {_KV_COLUMNS} FROM kv WHERE {_key_range_sql('key', end)}"
        else:
            source = (
                "SELECT h.key, h.value, h.create_revision, h.revision, h.version, h.lease"
                " FROM history AS h JOIN ("
                f"  SELECT key, MAX(revision) AS rev FROM history"
                f"  WHERE {_key_range_sql('key', end)} AND revision <= ? GROUP BY key"
                ") AS latest ON h.key = latest.key AND h.revision = latest.rev"
                " WHERE h.deleted = 0"
            )
            args = (*args, rev)
        rows = self._db.execute(
            f"{source} ORDER BY 1 LIMIT ?", (*args, limit if limit > 0 else -1)
        ).fetchall()
        kvs = [KeyValue(*row) for row in rows]
        if limit > 0 and len(kvs) == limit:
            (count,) = self._db.execute(f"SELECT COUNT(*) FROM ({source})", args).fetchone()
        else:
            count = len(kvs)
        return RangeResult(kvs, rev, more=count > len(kvs), count=count)

    def read_events(
        self, prefix: bytes, from_revision: int, max_rows: int
    ) -> tuple[list[tuple[Any, ...]], int, bool]:
        """History rows for ``prefix`` from ``from_revision`` on, whole revisions only.

        Returns (rows, scanned_through, caught_up): every matching event up to revision
        ``scanned_through`` is in ``rows``; ``caught_up`` says that is the current revision."""
        if from_revision <= self.compact_revision:
            raise CompactedError(self.compact_revision)
        end = prefix_end(prefix)
        select = (
            "SELECT h.revision, h.key, h.deleted, h.value, h.create_revision, h.version, h.lease,"
            " p.revision, p.value, p.create_revision, p.version, p.lease"
            # By revision: a watcher reads only what is new. (Left to itself the planner walks
            # every history row of the prefix by key, ever slower as history grows.)
            " FROM history AS h INDEXED BY history_by_revision LEFT JOIN history AS p"
            " ON p.key = h.key AND p.revision = h.prev_revision"
            f" WHERE {_key_range_sql('h.key', end)}"
        )
        args = _key_range_args(prefix, end)
        rows = self._db.execute(
            f"{select} AND h.revision >= ? ORDER BY h.revision, h.id LIMIT ?",
            (*args, from_revision, max_rows),
        ).fetchall()
        if len(rows) < max_rows:
            return rows, self.revision, True
        last = rows[-1][0]
        if rows[0][0] != last:
            # The chunk may have cut the last revision short: leave it for the next read.
            return [r for r in rows if r[0] != last], last - 1, False
        # One revision bigger than a chunk: return it whole.
        rows = self._db.execute(
            f"{select} AND h.revision = ? ORDER BY h.id", (*args, last)
        ).fetchall()
        return rows, last, last == self.revision


def _batches(rows: list[tuple[Any, ...]]) -> list[WatchBatch]:
    batches: list[WatchBatch] = []
    for rev, key, deleted, value, create, version, lease, p_rev, *prev in rows:
        prev_kv = KeyValue(key, prev[0], prev[1], p_rev, prev[2], prev[3]) if p_rev else None
        if deleted:
            event = WatchEvent(EventType.DELETE, KeyValue(key, b"", 0, rev, 0, 0), prev_kv)
        else:
            event = WatchEvent(
                EventType.PUT, KeyValue(key, value, create, rev, version, lease), prev_kv
            )
        if batches and batches[-1].revision == rev:
            batches[-1].events.append(event)
        else:
            batches.append(WatchBatch(rev, [event]))
    return batches


@dataclass(eq=False, slots=True)
class _Watcher:
    prefix: bytes
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # While caught up and waiting: the newest commit seen that did not touch the prefix. The
    # watcher has then seen everything up to it, so its position moves on with the store, as an
    # etcd watch's does: a compaction never fails a watcher that is merely quiet.
    waiting: bool = False
    through: int = 0


class SqliteStore:
    """The store contract on a sqlite file (see the module docstring).

    ``path`` is a filesystem path or ``":memory:"``. The store binds to the event loop of its
    first use; ``close()`` ends every open watch with :class:`StoreUnavailableError`.
    """

    shared = False  # see Store.shared

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        reap_interval: float = 1.0,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._reap_interval = reap_interval
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lucid-sqlite")
        try:
            self._engine = self._executor.submit(_Engine, os.fspath(path), self._clock).result()
        except sqlite3.Error as e:
            self._executor.shutdown(wait=False)
            if "locked" in str(e):  # another store holds the EXCLUSIVE lock (see above)
                raise StoreUnavailableError(
                    f"sqlite store {os.fspath(path)} is in use by another process "
                    "(another lucid-cp on the same data dir?)"
                ) from e
            raise StoreUnavailableError(f"cannot open sqlite store {path!r}: {e}") from e
        self._engine.on_commit = self._on_commit_in_worker
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchers: set[_Watcher] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._reaper_wakeup = asyncio.Event()
        self._closed = False

    @property
    def active_watches(self) -> int:
        """How many watch iterators are currently open."""
        return len(self._watchers)

    # -- plumbing --------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._closed:
            raise StoreUnavailableError("store is closed")
        if self._reaper is None:
            self._loop = asyncio.get_running_loop()
            self._reaper = self._loop.create_task(self._reap_forever(), name="lucid-lease-reaper")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        self._ensure_running()
        try:
            return await asyncio.wrap_future(self._executor.submit(fn, *args))
        except sqlite3.Error as e:
            raise StoreUnavailableError(f"sqlite failure: {e}") from e

    def _on_commit_in_worker(self, commit: _Commit) -> None:
        # Must not raise: the write it reports has already committed.
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
                loop.call_soon_threadsafe(self._notify, commit)

    def _notify(self, commit: _Commit) -> None:
        for watcher in self._watchers:
            prefix = watcher.prefix
            if any(key.startswith(prefix) for key in commit.keys):
                watcher.waiting = False
                watcher.wakeup.set()
            elif watcher.waiting:
                watcher.through = commit.revision

    async def _reap_forever(self) -> None:
        while True:
            self._reaper_wakeup.clear()
            try:
                _, next_deadline = await self._run(self._engine.reap_expired)
                await self._compact_old_history()
            except Exception:
                if self._closed:
                    return
                log.exception("lease reaper pass failed; retrying")
                next_deadline = None
            delay = self._reap_interval
            if next_deadline is not None:
                # A hair past the deadline, so the lease is surely expired when we look again.
                delay = min(delay, max(next_deadline - self._clock.now(), 0.0) + 0.002)
            with contextlib.suppress(TimeoutError):
                async with self._clock.timeout(delay):
                    await self._reaper_wakeup.wait()

    async def _compact_old_history(self) -> None:
        """Keeps the history to the last HISTORY_KEPT revisions (etcd's auto-compaction, which
        an embedded store must do itself): the file stops growing with every write ever made.
        A watcher further behind than that gets CompactedError and re-lists, as on etcd."""
        engine = self._engine
        if engine.revision - engine.compact_revision >= 2 * HISTORY_KEPT:
            await self._run(engine.compact, engine.revision - HISTORY_KEPT)

    # -- the contract ----------------------------------------------------------------------

    async def current_revision(self) -> int:
        self._ensure_running()
        return self._engine.revision

    async def get(self, key: bytes) -> KeyValue | None:
        check_key(key)
        return await self._run(self._engine.get, key)

    async def range(
        self, prefix: bytes, *, limit: int = 0, revision: int = 0, start: bytes = b""
    ) -> RangeResult:
        if limit < 0 or revision < 0:
            raise ValueError("limit and revision must not be negative")
        return await self._run(self._engine.range, prefix, limit, revision, start)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        check_put(key, value)
        return await self._run(self._engine.put, key, value, lease)

    async def delete(self, key: bytes, *, prefix: bool = False) -> tuple[int, int]:
        if not prefix:
            check_key(key)
        return await self._run(self._engine.delete, key, prefix)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        check_txn(compares, success, failure)
        return await self._run(self._engine.txn, list(compares), list(success), list(failure))

    async def grant_lease(self, ttl: int) -> Lease:
        lease = await self._run(self._engine.grant_lease, granted_ttl(ttl))
        self._reaper_wakeup.set()
        return lease

    async def keepalive(self, lease_id: int) -> int:
        return await self._run(self._engine.keepalive, lease_id)

    async def revoke_lease(self, lease_id: int) -> int:
        return await self._run(self._engine.revoke_lease, lease_id)

    async def reap_expired_leases(self) -> int:
        """Delete the keys of every lease already expired by the store's clock; returns how
        many leases were reaped. The background reaper does this by itself; call it to make a
        :class:`~lucid_cp.clock.FakeClock` jump take effect at once."""
        total = 0
        while True:
            reaped, _ = await self._run(self._engine.reap_expired)
            total += reaped
            if reaped < _REAP_BATCH:
                return total

    def watch(
        self, prefix: bytes, start_revision: int, *, prev_kv: bool = False
    ) -> AsyncIterator[WatchBatch]:
        # The history table yields the previous value at no extra cost, so it is always set.
        return self._watch(prefix, start_revision)

    async def _watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        if start_revision < 1:
            raise ValueError("start_revision must be >= 1")
        self._ensure_running()
        watcher = _Watcher(prefix)
        # Subscribe before the first read: a commit landing after that read wakes us up, and
        # reading by revision from next_revision on can neither skip nor repeat an event.
        self._watchers.add(watcher)
        try:
            next_revision = start_revision
            while True:
                watcher.wakeup.clear()
                rows, scanned_through, caught_up = await self._run(
                    self._engine.read_events, prefix, next_revision, _WATCH_CHUNK_ROWS
                )
                for batch in _batches(rows):
                    yield batch
                next_revision = max(next_revision, scanned_through + 1)
                if caught_up:
                    watcher.through = scanned_through
                    watcher.waiting = not watcher.wakeup.is_set()
                    await watcher.wakeup.wait()
                    watcher.waiting = False
                    if self._closed:
                        raise StoreUnavailableError("store closed while watching")
                    next_revision = max(next_revision, watcher.through + 1)
        finally:
            self._watchers.discard(watcher)

    async def compact(self, revision: int) -> None:
        await self._run(self._engine.compact, revision)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for watcher in self._watchers:
            watcher.wakeup.set()
        await asyncio.wrap_future(self._executor.submit(self._engine.close))
        self._executor.shutdown(wait=False)
