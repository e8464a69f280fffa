"""How a reflector reads its prefix: the owner's handler maps store keys to cache keys, decodes
values and hears about every change, so one prefix may hold more than one kind of key.

Subclass :class:`Handler` and override ``decode`` (and whatever else you need); the hooks are
called synchronously while a watch batch or a list is applied, in store order. Keys that ``key``
maps to None are not cached: they reach ``other`` (list entries as PUT events), which is where
an owner keeps side records (e.g. discovery's per-instance load counters).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Generic, TypeVar

from google.protobuf.message import Message

from lucid_cp.store.base import KeyValue, WatchEvent

V = TypeVar("V")
M = TypeVar("M", bound=Message)


class Handler(abc.ABC, Generic[V]):
    def key(self, store_key: bytes) -> str | None:
        """The cache key ``store_key`` holds a value for, or None when it is not a cached value.
        May raise (e.g. a key that is not UTF-8): the record is logged and skipped."""
        return store_key.decode()

    @abc.abstractmethod
    def decode(self, key: str, kv: KeyValue) -> V:
        """The value stored at ``kv``. Raise anything for a bad record: it is logged and the key
        treated as absent (a bad record never stalls the cache)."""

    def group(self, value: V) -> str:
        """The fan-out group of a value (e.g. its service name); "" = no group."""
        return ""

    def other(self, event: WatchEvent) -> None:
        """A write to a key under the prefix that ``key`` maps to None."""

    def reset(self) -> None:
        """A full list is about to replace the cache: drop state derived from it."""

    def stored(self, key: str, value: V, previous: V | None) -> None:
        """``key`` now holds ``value`` (``previous`` is what it held, None if it was absent)."""

    def removed(self, key: str, previous: V) -> None:
        """``key`` no longer holds a value (deleted, or its new record is bad)."""

    def applied(self, revision: int) -> None:
        """Every change up to ``revision`` has been applied (after each batch and each list)."""


class MessageHandler(Handler[M]):
    """Protobuf messages stored under ``prefix + <cache key>``."""

    def __init__(
        self, message: type[M], prefix: bytes, group: Callable[[M], str] | None = None
    ) -> None:
        self._message = message
        self._prefix = prefix
        self._group = group

    def key(self, store_key: bytes) -> str | None:
        if not store_key.startswith(self._prefix):
            return None
        return store_key[len(self._prefix) :].decode()

    def decode(self, key: str, kv: KeyValue) -> M:
        return self._message.FromString(kv.value)

    def group(self, value: M) -> str:
        return self._group(value) if self._group is not None else ""
