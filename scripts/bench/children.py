"""Child processes of a benchmark run: each prints ``READY {json}`` on stdout once it serves and
exits when its stdin closes (or, started with ``start_server``, announces itself in its log and
stops on SIGTERM, as ``lucid-cp serve``); ``Children`` owns them all and stops them on the way out.
Also how to start the two servers most benchmarks need: ``lucid-cp serve`` (``serve_argv``) and a
throwaway etcd (``start_etcd``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scripts.bench.common import LOOPBACK, ROOT

if TYPE_CHECKING:
    from tests.etcd_server import EtcdProcess

READY_PREFIX = "READY "
# ``lucid-cp serve``'s banner once it serves gRPC.
CP_READY = re.compile(r"lucid-cp: gRPC on (?P<host>[0-9.]+):(?P<port>[0-9]+)")


@dataclass
class Child:
    """A child process that prints ``READY {json}`` on stdout once it serves, and exits when
    its stdin closes (so it also dies with us if we are killed)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)
    # Stopped with SIGTERM first: it does not watch its stdin (e.g. ``lucid-cp serve``).
    terminate_first: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def stop(self, timeout: float = 15.0) -> int | None:
        """Closes stdin (asks it to exit; SIGTERM instead when ``terminate_first``), then
        SIGTERM, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            if self.terminate_first:
                self.proc.terminate()
            else:
                try:
                    if self.proc.stdin is not None:
                        self.proc.stdin.close()
                except OSError:
                    pass
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
            try:
                return self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


class Children:
    """Owns every child process of a run; ``close()`` (also on signals) stops them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._children: list[Child] = []
        self._cleanups: list[Any] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        ready_timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> Child:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            # From the checkout's root, so ``python -m scripts.bench....`` children import.
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, cwd=ROOT
            )
        child = Child(name, proc, log_path)
        self._children.append(child)
        child.info = self._await_ready(child, ready_timeout)
        return child

    def start_server(
        self,
        name: str,
        argv: list[str],
        ready: re.Pattern[str],
        *,
        ready_timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> Child:
        """A server that announces itself in its log (stdout and stderr), e.g. ``lucid-cp
        serve``'s "gRPC on HOST:PORT" banner: ready once a line matches ``ready`` (its named
        groups become ``info``); stopped with SIGTERM."""
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=ROOT
            )
        child = Child(name, proc, log_path, terminate_first=True)
        self._children.append(child)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            found = ready.search(log_path.read_text(errors="replace"))
            if found:
                child.info = {**found.groupdict(), "pid": proc.pid}
                return child
            time.sleep(0.05)
        child.stop(5)
        raise RuntimeError(f"{name} did not become ready:\n{child.log_tail()}")

    @staticmethod
    def _await_ready(child: Child, timeout: float) -> dict[str, Any]:
        assert child.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buffer = b""
        with selectors.DefaultSelector() as sel:
            sel.register(child.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=min(0.2, max(0.0, deadline - time.monotonic()))):
                    if child.proc.poll() is not None:
                        break
                    continue
                chunk = os.read(child.proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buffer += chunk
                for line in buffer.decode(errors="replace").splitlines():
                    if line.startswith(READY_PREFIX):
                        return dict(json.loads(line[len(READY_PREFIX) :]))
        child.stop(5)
        raise RuntimeError(f"{child.name} did not become ready:\n{child.log_tail()}")

    def on_close(self, cleanup: Any) -> None:
        """Registers a zero-argument callable run by ``close()`` (e.g. an etcd's cleanup)."""
        self._cleanups.append(cleanup)

    def stop(self, child: Child) -> int | None:
        if child in self._children:
            self._children.remove(child)
        return child.stop()

    def close(self) -> None:
        while self._children:
            self._children.pop().stop(timeout=5)
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception as exc:
                print(f"cleanup failed: {exc}", file=sys.stderr)


DONE_PREFIX = "DONE "


async def ask(child: Child, line: str) -> dict[str, Any]:
    """Sends a command line to a child and returns its ``DONE {json}`` answer."""
    child.send(line)
    assert child.proc.stdout is not None
    answer = await asyncio.to_thread(child.proc.stdout.readline)
    text = answer.decode(errors="replace").strip()
    if not text.startswith(DONE_PREFIX):
        raise RuntimeError(f"{child.name} answered {text!r}:\n{child.log_tail()}")
    return dict(json.loads(text[len(DONE_PREFIX) :]))


def answer_done(**info: Any) -> None:
    """Called by a child: the answer to the command it was sent (see ``ask``)."""
    sys.stdout.write(DONE_PREFIX + json.dumps(info) + "\n")
    sys.stdout.flush()


def announce_ready(**info: Any) -> None:
    """Called by a child once it serves."""
    sys.stdout.write(READY_PREFIX + json.dumps(info) + "\n")
    sys.stdout.flush()


async def wait_for_stdin_eof() -> None:
    """In a child: returns when the parent closes our stdin (or dies)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        pass


# -- the servers ---------------------------------------------------------------------------------


def serve_argv(
    data_dir: Path,
    secret_file: Path,
    *,
    store: str | None = None,
    profile: Path | None = None,
) -> list[str]:
    """A real ``lucid-cp serve`` on loopback port 0: gRPC only, rate limits and active health
    checks off, WARNING logs; ``store`` a store URL (None: the default, sqlite in ``data_dir``);
    under cProfile (stats written to ``profile`` when it stops) when given. Start it with
    ``Children.start_server(name, argv, CP_READY, ...)``."""
    # ``python -m lucid_cp.cli`` (the ``lucid-cp`` entry point) run from the checkout's root (see
    # ``Children``): this checkout's code, whatever the installed ``lucid-cp`` script would import.
    cli = [sys.executable, "-m", "lucid_cp.cli"]
    if profile is not None:
        cli = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "lucid_cp.cli"]
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        *cli,
        "serve",
        *(["--store", store] if store is not None else []),
        "--grpc-addr",
        f"{LOOPBACK}:0",
        "--no-gateway",
        "--no-rate-limits",
        "--no-health-checks",
        "--log-level",
        "WARNING",
        "--data-dir",
        str(data_dir),
        "--jwt-secret-file",
        str(secret_file),
    ]


def start_etcd(children: Children, workdir: Path) -> EtcdProcess:
    """A single-member etcd on loopback (the tests' throwaway-etcd helper, fsync on), data under
    ``workdir``; stopped and removed by ``children.close()``."""
    from tests.etcd_server import EtcdProcess

    etcd = EtcdProcess(_etcd_dying_with_us(workdir), data_dir=workdir / "etcd")
    children.on_close(etcd.cleanup)
    etcd.start()
    return etcd


def etcd_pid(etcd: EtcdProcess) -> int | None:
    proc = getattr(etcd, "_proc", None)
    return proc.pid if proc is not None else None


def _etcd_dying_with_us(workdir: Path) -> str | None:
    """An etcd launcher that dies with this process even if we are SIGKILLed (EtcdProcess puts
    etcd in its own session, out of reach of our process group): a shell script exec-ing etcd
    under ``setpriv --pdeathsig KILL``. None (EtcdProcess's own lookup) without setpriv."""
    from tests.etcd_server import find_etcd_binary

    binary, setpriv = find_etcd_binary(), shutil.which("setpriv")
    if binary is None or setpriv is None:
        return None
    launcher = workdir / "etcd-pdeathsig.sh"
    launcher.write_text(
        f'#!/bin/sh\nexec {shlex.quote(setpriv)} --pdeathsig KILL -- {shlex.quote(binary)} "$@"\n'
    )
    launcher.chmod(0o755)
    return str(launcher)
