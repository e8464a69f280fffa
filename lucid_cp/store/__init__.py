"""Lucid's key-value store: the etcd-shaped contract (``base``) and its backends.

``open_store(url)`` picks a backend from a URL:

* ``memory://`` — in-process, lost on close (:class:`~lucid_cp.store.memory.MemoryStore`).
* ``sqlite:///<path>`` — a sqlite file; everything after ``sqlite:///`` is the path, as in
  SQLAlchemy: ``sqlite:///relative.db`` is relative to the working directory and
  ``sqlite:////abs/file.db`` (four slashes, i.e. ``f"sqlite:///{absolute_path}"``) is absolute.
  The file's directory must exist; when it does not, the error says how the path was read.
* ``etcd://host:port[,host:port...]`` — a real etcd cluster, failing over between endpoints.
"""

from __future__ import annotations

import os

from lucid_cp.clock import Clock
from lucid_cp.store.base import (
    MAX_LEASE_TTL,
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    MIN_LEASE_TTL,
    OP_OVERHEAD_BYTES,
    CompactedError,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    EventType,
    FutureRevisionError,
    Get,
    KeyReader,
    KeyValue,
    KeyWriter,
    Lease,
    LeaseNotFoundError,
    Leases,
    Put,
    RangeResult,
    RequestTooLargeError,
    Store,
    StoreError,
    StoreUnavailableError,
    TooManyOpsError,
    TxnOp,
    TxnResult,
    WatchBatch,
    WatchedPrefix,
    Watcher,
    WatchEvent,
    key_missing,
    mod_revision_is,
)
from lucid_cp.store.memory import MemoryStore
from lucid_cp.store.sqlite import SqliteStore

__all__ = [
    "MAX_LEASE_TTL",
    "MAX_REQUEST_BYTES",
    "MAX_TXN_OPS",
    "MIN_LEASE_TTL",
    "OP_OVERHEAD_BYTES",
    "CompactedError",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "Delete",
    "EventType",
    "FutureRevisionError",
    "Get",
    "KeyReader",
    "KeyValue",
    "KeyWriter",
    "Lease",
    "LeaseNotFoundError",
    "Leases",
    "MemoryStore",
    "Put",
    "RangeResult",
    "RequestTooLargeError",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "TooManyOpsError",
    "TxnOp",
    "TxnResult",
    "WatchBatch",
    "WatchEvent",
    "WatchedPrefix",
    "Watcher",
    "key_missing",
    "mod_revision_is",
    "open_store",
    "parse_etcd_endpoints",
]

_SQLITE = "sqlite:///"
_ETCD = "etcd://"


def parse_etcd_endpoints(spec: str) -> list[tuple[str, int]]:
    """``"h1:2379,h2:2379"`` -> ``[("h1", 2379), ("h2", 2379)]``; IPv6 hosts go in brackets."""
    endpoints: list[tuple[str, int]] = []
    for item in spec.split(","):
        host, sep, port_text = item.strip().rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or "/" in item or "@" in item or "?" in item:
            raise ValueError(f"bad etcd endpoint {item!r}: expected host:port")
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"bad etcd endpoint {item!r}: port is not a number") from None
        if not 0 < port < 65536:
            raise ValueError(f"bad etcd endpoint {item!r}: port out of range")
        endpoints.append((host, port))
    return endpoints


def _check_sqlite_dir(url: str, path: str) -> None:
    """sqlite cannot create a file in a missing directory; say how the URL was read, since
    ``sqlite:///tmp/x.db`` meaning the relative ``tmp/x.db`` surprises people."""
    if path == ":memory:":
        return
    directory = os.path.dirname(path) or "."
    if os.path.isdir(directory):
        return
    if os.path.isabs(path):
        raise ValueError(f"bad sqlite store URL {url!r}: directory {directory} does not exist")
    raise ValueError(
        f"bad sqlite store URL {url!r}: it names the relative path {path!r} (resolved against the "
        f"working directory, {os.path.abspath(directory)} does not exist); for an absolute path "
        f"use four slashes: sqlite:////{path}"
    )


def open_store(url: str, *, clock: Clock | None = None) -> Store:
    """A ready-to-use store for ``url`` (see the module docstring for the forms accepted).

    The sqlite and memory backends measure lease time with ``clock`` (default: the system
    clock); etcd keeps its own lease time, so the etcd backend only times its own waits
    (connecting, reconnect backoff) with it."""
    if url == "memory://":
        return MemoryStore(clock=clock)
    if url.startswith(_SQLITE):
        path = url[len(_SQLITE) :]
        if not path or "?" in path or "#" in path:
            raise ValueError(
                f"bad sqlite store URL {url!r}: expected sqlite:///relative.db or "
                "sqlite:////absolute/path.db (no query options)"
            )
        _check_sqlite_dir(url, path)
        return SqliteStore(path, clock=clock)
    if url.startswith(_ETCD):
        from lucid_cp.store.etcd import EtcdStore

        return EtcdStore(parse_etcd_endpoints(url[len(_ETCD) :]), clock=clock)
    raise ValueError(
        f"unsupported store URL {url!r}: expected memory://, sqlite:///<path> or "
        "etcd://host:port[,host:port...]"
    )
