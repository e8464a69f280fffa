"""The README's `pip install -e '.[dev]'` is reproducible: every direct dependency in
pyproject.toml is pinned exactly, to the version the lock (constraints.txt) pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")


def _name(raw: str) -> str:
    return raw.lower().replace("_", "-").replace(".", "-")


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        match = REQUIREMENT.match(line.strip())
        if match:
            pins[_name(match.group(1))] = match.group(2)
    return pins


def test_every_direct_dependency_is_pinned_to_the_lock() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = project["dependencies"] + project["optional-dependencies"]["dev"]
    locked = _locked()
    problems = []
    for requirement in direct:
        match = REQUIREMENT.match(requirement)
        if match is None:
            problems.append(f"{requirement!r} is not pinned with ==")
        elif locked.get(_name(match.group(1))) != match.group(2):
            problems.append(f"{requirement!r}: the lock has {locked.get(_name(match.group(1)))!r}")
    assert not problems, problems
