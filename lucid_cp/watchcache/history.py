"""The changes a reflector applied, and a bounded ring of the recent ones.

The ring has a floor: it holds every change with revision >= floor, so a reader can tell
"nothing changed since R" (an empty list) from "the history no longer reaches back to R" (None:
re-read everything). A full re-list resets the floor to the listed revision + 1.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


class ChangeType(enum.Enum):
    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class Change(Generic[V]):
    """One applied change of one cache key. For REMOVED, ``value`` is the value that left."""

    revision: int
    type: ChangeType
    key: str
    value: V
    group: str = ""


class History(Generic[V]):
    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("history size cannot be negative")
        self._ring: deque[Change[V]] = deque(maxlen=size)
        self.floor = 0  # the ring holds every change with revision >= floor

    def __iter__(self) -> Iterator[Change[V]]:
        return iter(self._ring)

    def __len__(self) -> int:
        return len(self._ring)

    def reset(self, revision: int) -> None:
        """Forgets everything up to and including ``revision`` (after a full list at it)."""
        self._ring.clear()
        self.floor = revision + 1

    def append(self, change: Change[V]) -> None:
        if self._ring.maxlen == 0:
            self.floor = change.revision + 1
            return
        if len(self._ring) == self._ring.maxlen:
            # The oldest change falls out: resuming from its revision is no longer possible.
            self.floor = self._ring[0].revision + 1
        self._ring.append(change)

    def reaches(self, revision: int) -> bool:
        """Whether every change after ``revision`` is still held."""
        return revision + 1 >= self.floor

    def since(self, revision: int) -> list[Change[V]] | None:
        """Changes with revision > ``revision``, oldest first; None if history is gone."""
        if not self.reaches(revision):
            return None
        changes: list[Change[V]] = []
        for change in reversed(self._ring):
            if change.revision <= revision:
                break
            changes.append(change)
        changes.reverse()
        return changes
