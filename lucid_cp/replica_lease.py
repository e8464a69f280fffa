"""This process's store lease: one per replica, for what the replica holds only while it lives.

Its users write keys under it that must vanish when the replica dies: discovery's health-check
membership (``/lucid/replicas/<id>``), the sidecar status writer (the replica's progress record)
and the event owners (the owner keys of the jobs it runs). A dead replica's keys vanish when
the lease expires (``ttl`` seconds without a keepalive), all at once.

The composition root builds one, starts it before the systems (the first grant) and stops it
after them (the lease is revoked). Users only ``start()`` it again (a no-op once started, so a
part built alone in a test grants it lazily), read ``id`` when they write, and leave their own
keys at their stop (a user stopping alone still hands over at once).

One keepalive loop renews it every ``ttl / 3`` seconds. When the lease is found gone (the
replica was cut off from the store for longer than the ttl, or a user's write said so, see
:meth:`ReplicaLease.lost`), every key under it may already be taken over elsewhere: ``lost``
listeners run (stop what relied on those keys), a new lease is granted (retried every
``ttl / 3`` while the store refuses), then ``granted`` listeners run (write again what was held
under the old one). In between ``id`` is 0, and :meth:`ReplicaLease.require` raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from lucid_cp.clock import Clock
from lucid_cp.store.base import LeaseNotFoundError, Leases
from lucid_cp.tasks import cancel_and_wait

log = logging.getLogger("lucid_cp.replica_lease")

Lost = Callable[[], None]
Granted = Callable[[int], None]


class ReplicaLease:
    def __init__(self, store: Leases, clock: Clock, *, ttl: int) -> None:
        if ttl < 1:
            raise ValueError(f"replica lease ttl must be at least 1 s, got {ttl}")
        self.ttl = ttl
        self._store = store
        self._clock = clock
        self._id = 0
        self._lost: list[Lost] = []
        self._granted: list[Granted] = []
        self._check = asyncio.Event()  # a user reported the lease gone: keepalive at once
        self._starting = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def id(self) -> int:
        """The lease to write under; 0 before the first grant, while a lost lease is being
        replaced, and after stop. A write under it may still find it gone (expired, not yet
        noticed): report that with :meth:`lost`."""
        return self._id

    def require(self) -> int:
        """``id``, or LeaseNotFoundError when there is none (a write retries later)."""
        if not self._id:
            raise LeaseNotFoundError(0)
        return self._id

    async def start(self) -> None:
        """Grants the lease (store errors propagate: fail at start-up) and starts keeping it
        alive. Once started, a no-op."""
        async with self._starting:
            if self._stopped:
                raise RuntimeError("the replica lease was stopped")
            if self._task is not None:
                return
            self._id = (await self._store.grant_lease(self.ttl)).id
            log.info("replica lease %x granted (ttl %ds)", self._id, self.ttl)
            self._task = asyncio.create_task(self._keepalive(), name="replica-lease-keepalive")

    async def stop(self) -> None:
        """Ends the keepalive and revokes the lease: every key still under it vanishes now."""
        self._stopped = True
        task, self._task = self._task, None
        await cancel_and_wait(task)
        lease, self._id = self._id, 0
        if lease:
            try:
                await self._store.revoke_lease(lease)
            except LeaseNotFoundError:
                pass  # expired meanwhile: its keys are gone already
            except Exception as exc:
                log.warning("could not revoke the replica lease %x on stop: %s", lease, exc)

    def subscribe(self, *, lost: Lost | None = None, granted: Granted | None = None) -> Lost:
        """``lost()`` runs when the lease was found gone, before a new one is granted;
        ``granted(new_id)`` once a new one replaces it. Returns the unsubscribe function."""
        if lost is not None:
            self._lost.append(lost)
        if granted is not None:
            self._granted.append(granted)

        def unsubscribe() -> None:
            if lost is not None and lost in self._lost:
                self._lost.remove(lost)
            if granted is not None and granted in self._granted:
                self._granted.remove(granted)

        return unsubscribe

    def lost(self, lease_id: int) -> None:
        """A user's write found ``lease_id`` gone (LeaseNotFoundError): check it now rather
        than at the next keepalive. Another (older) lease id is ignored."""
        if lease_id and lease_id == self._id:
            self._check.set()

    async def _keepalive(self) -> None:
        period = max(self.ttl / 3, 0.1)
        while True:
            with contextlib.suppress(TimeoutError):
                async with self._clock.timeout(period):
                    await self._check.wait()
            self._check.clear()
            if self._id:
                try:
                    await self._store.keepalive(self._id)
                    continue
                except LeaseNotFoundError:
                    log.warning("replica lease %x expired; granting a new one", self._id)
                    self._id = 0
                    self._notify(self._lost)
                except Exception as exc:
                    log.warning("replica lease keepalive failed (%s); retrying", exc)
                    continue
            try:
                lease = await self._store.grant_lease(self.ttl)
            except Exception as exc:
                log.warning("could not grant a new replica lease (%s); retrying", exc)
                continue
            self._id = lease.id
            log.info("replica lease %x granted (ttl %ds)", self._id, self.ttl)
            self._notify(self._granted, lease.id)

    @staticmethod
    def _notify(listeners: Sequence[Callable[..., None]], *args: int) -> None:
        for listener in list(listeners):
            try:
                listener(*args)
            except Exception:  # one user's bug must not stop the lease for the others
                log.exception("replica lease listener failed")
