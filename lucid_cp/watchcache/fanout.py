"""Keyed fan-out: a change reaches the subscribers of its group and the all-groups ("") ones,
without a scan over every subscriber. Each change is rendered once per render function."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from lucid_cp.watchcache.history import Change
from lucid_cp.watchcache.subscription import Subscription

V = TypeVar("V")

ALL_GROUPS = ""


@dataclass(frozen=True, slots=True)
class Route(Generic[V]):
    """What a subscription wants: the values it matches, and how a change becomes an item."""

    render: Callable[[Change[V]], Any]
    match: Callable[[V], bool] | None = None

    def wants(self, change: Change[V]) -> bool:
        return self.match is None or self.match(change.value)


class FanOut(Generic[V]):
    def __init__(self) -> None:
        self._groups: dict[str, dict[Subscription[Any], Route[V]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, sub: Subscription[Any], route: Route[V]) -> None:
        members = self._groups.setdefault(sub.group, {})
        if sub not in members:
            self._count += 1
        members[sub] = route

    def remove(self, sub: Subscription[Any]) -> None:
        members = self._groups.get(sub.group)
        if members is None or members.pop(sub, None) is None:
            return
        self._count -= 1
        if not members:
            del self._groups[sub.group]

    def subscribers(self) -> Iterable[Subscription[Any]]:
        for members in self._groups.values():
            yield from members

    def resync_all(self) -> None:
        for sub in list(self.subscribers()):
            sub.resync()

    def publish(self, change: Change[V]) -> None:
        rendered: dict[Callable[[Change[V]], Any], Any] = {}
        groups = (change.group, ALL_GROUPS) if change.group else (ALL_GROUPS,)
        for group in groups:
            members = self._groups.get(group)
            if not members:
                continue
            for sub, route in list(members.items()):
                if not route.wants(change):
                    continue
                if route.render not in rendered:
                    rendered[route.render] = route.render(change)
                sub.push(rendered[route.render])
