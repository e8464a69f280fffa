"""The Markdown report: one row per figure (ours, baseline, ratio, target, met?) plus notes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Row:
    benchmark: str
    ours: str
    baseline: str
    ratio: str
    target: str
    met: str


def fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def fmt_ratio(ours: float | None, baseline: float | None) -> tuple[str, float | None]:
    if not ours or not baseline or math.isnan(ours) or math.isnan(baseline):
        return "n/a", None
    ratio = ours / baseline
    return f"{ratio:.3g}x", ratio


def markdown_table(rows: Sequence[Row], notes: Sequence[str]) -> str:
    lines = [
        "| benchmark | ours | baseline | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.benchmark} | {r.ours} | {r.baseline} | {r.ratio} | {r.target} | {r.met} |"
        )
    if notes:
        lines.append("")
        lines.append("Notes:")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines)


def met(ok: bool | None) -> str:
    """The "met?" column: yes, **no**, or n/a when the figure could not be judged."""
    return "n/a" if ok is None else ("yes" if ok else "**no**")
