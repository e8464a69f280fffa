"""Running the real `lucid-cp` CLI as a child process of a test (from this checkout)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> list[str]:
    """The command line running this checkout's CLI (not an installed console script)."""
    return [sys.executable, "-m", "lucid_cp.cli", *args]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment without any LUCID_* setting, this checkout first on PYTHONPATH."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("LUCID_") or k == "LUCID_ETCD_BIN"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**env, **extra}


def wait_for(
    proc: subprocess.Popen[str], pattern: str, timeout: float = 20.0
) -> tuple[re.Match[str], str]:
    """Reads the process's stderr until a line matches; returns the match and all text read."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen += line
        match = re.search(pattern, line)
        if match:
            return match, seen
    raise AssertionError(f"{pattern!r} not printed within {timeout}s; output so far:\n{seen}")
