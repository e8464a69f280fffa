"""Selectors: which services a policy's ``source`` / ``destination`` name.

Grammar (documented in proto/lucid/mesh/v1/mesh.proto as well): comma-separated terms, all of
which must match (AND); spaces around a term are ignored, spaces inside one are not allowed
(``plane = wallet`` is rejected). A term is an exact service name (``api-gateway``), ``*`` (every
service), a prefix glob (``tron-*``), ``cluster=<cluster>`` or ``plane=<plane>`` (the wire
strings of lucid.discovery.v1.Cluster / Plane). At most one name term (exact, ``*`` or glob) and
one term per label key. Anything else raises ``SelectorError``.

``parse`` compiles a selector once into a ``Selector``; ``Selector.matches`` is then a few
comparisons per request. ``Selector.canonical`` is the one text of what it selects (stored at
write time): the name term first, then cluster, then plane, no spaces; ``*`` only alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from lucid_cp.api.lucid.common.v1 import options_pb2
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2

SERVICE_NAME = re.compile(r"^[a-z0-9-]{3,50}$")
_PREFIX = re.compile(r"^[a-z0-9-]{1,49}\*$")
LABEL_KEYS = ("cluster", "plane")


def _wire_strings(enum: object) -> dict[int, str]:
    values = enum.DESCRIPTOR.values  # type: ignore[attr-defined]
    return {v.number: v.GetOptions().Extensions[options_pb2.wire] for v in values if v.number}


CLUSTERS = _wire_strings(discovery_pb2.Cluster)
PLANES = _wire_strings(discovery_pb2.Plane)
LABEL_VALUES: Mapping[str, frozenset[str]] = {
    "cluster": frozenset(CLUSTERS.values()),
    "plane": frozenset(PLANES.values()),
}


class SelectorError(ValueError):
    """A selector outside the grammar; the message says what is wrong and what is accepted."""


@dataclass(frozen=True, slots=True)
class Workload:
    """A service as selectors see it: its name and its labels (wire strings, "" when unknown)."""

    name: str
    cluster: str = ""
    plane: str = ""

    @property
    def labels(self) -> dict[str, str]:
        return {k: v for k, v in (("cluster", self.cluster), ("plane", self.plane)) if v}

    @classmethod
    def from_proto(cls, w: mesh_pb2.Workload) -> Workload:
        return cls(w.name, CLUSTERS.get(w.cluster, ""), PLANES.get(w.plane, ""))


@dataclass(frozen=True, slots=True)
class Selector:
    text: str
    name: str | None = None  # exact service name
    prefix: str | None = None  # prefix glob without its "*"
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str | None, str | None, tuple[tuple[str, str], ...]]:
        """What the selector selects, independent of how it was written."""
        return self.name, self.prefix, tuple(sorted(self.labels.items()))

    @property
    def canonical(self) -> str:
        """``tron-*,plane=wallet`` for `` plane=wallet , tron-* ``; ``*`` for ``*``; ``*`` is
        dropped next to labels (``*,plane=ops`` is ``plane=ops``): one text per ``key``."""
        terms = [self.name] if self.name is not None else []
        if self.prefix is not None:
            terms.append(f"{self.prefix}*")
        terms += [f"{k}={self.labels[k]}" for k in LABEL_KEYS if k in self.labels]
        return ",".join(terms) or "*"

    @property
    def is_wildcard(self) -> bool:
        """``*``: matches every service."""
        return self.name is None and self.prefix is None and not self.labels

    def matches(self, workload: Workload) -> bool:
        if self.name is not None and workload.name != self.name:
            return False
        if self.prefix is not None and not workload.name.startswith(self.prefix):
            return False
        if not self.labels:
            return True
        labels = workload.labels
        return all(labels.get(k) == v for k, v in self.labels.items())

    def covers(self, other: Selector) -> bool:
        """Every service ``other`` matches is matched by this selector (judged from the terms:
        a conservative answer, never a false yes)."""
        if self.name is not None and other.name != self.name:
            return False
        if self.prefix is not None:
            name = other.name if other.name is not None else other.prefix
            if name is None or not name.startswith(self.prefix):
                return False
        return all(other.labels.get(k) == v for k, v in self.labels.items())


ACCEPTED = (
    "an exact service name, '*', a prefix glob like 'tron-*', "
    "'cluster=<cluster>' or 'plane=<plane>', joined by commas"
)


@lru_cache(maxsize=4096)
def parse(text: str) -> Selector:
    """Compiles ``text``; raises SelectorError when it is outside the grammar."""
    terms = [t.strip() for t in text.split(",")]
    if any(not t for t in terms):
        raise SelectorError(f"empty term in selector {text!r}; expected {ACCEPTED}")
    name: str | None = None
    prefix: str | None = None
    wildcard = False
    labels: dict[str, str] = {}
    for term in terms:
        if any(c.isspace() for c in term):
            raise SelectorError(
                f"space inside term {term!r} of selector {text!r}; spaces are allowed only "
                "around terms"
            )
        if "=" in term:
            key, _, value = term.partition("=")
            if key not in LABEL_KEYS:
                raise SelectorError(
                    f"unknown label {key!r} in selector {text!r}; labels are cluster and plane"
                )
            if value not in LABEL_VALUES[key]:
                known = ", ".join(sorted(LABEL_VALUES[key]))
                raise SelectorError(f"unknown {key} {value!r} in selector {text!r}; one of {known}")
            if key in labels:
                raise SelectorError(f"{key} given twice in selector {text!r}")
            labels[key] = value
            continue
        if name is not None or prefix is not None or wildcard:
            raise SelectorError(f"more than one service name term in selector {text!r}")
        if term == "*":
            wildcard = True
        elif SERVICE_NAME.fullmatch(term):
            name = term
        elif _PREFIX.fullmatch(term):
            prefix = term[:-1]
        else:
            raise SelectorError(f"unknown selector term {term!r}; expected {ACCEPTED}")
    return Selector(text, name, prefix, labels)


def canonical(text: str) -> str:
    """The canonical text of selector ``text``; raises SelectorError as ``parse``."""
    return parse(text).canonical


def single_service(text: str) -> str:
    """The service a redirect, mirror or split target names (spaces around it dropped); raises
    SelectorError unless ``text`` is a selector naming exactly one service."""
    selector = parse(text)
    if selector.name is None or selector.labels:
        raise SelectorError(f"target {text!r} must name one service exactly, not a pattern")
    return selector.name
