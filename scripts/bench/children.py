"""Child processes of a benchmark run: each prints ``READY {json}`` on stdout once it serves and
exits when its stdin closes (or, started with ``start_server``, announces itself in its log and
stops on SIGTERM, as ``lucid-cp serve``); ``Children`` owns them all and stops them on the way out.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.bench.common import ROOT

READY_PREFIX = "READY "


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
