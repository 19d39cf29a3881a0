"""Coverage of a period by signed windows: how much of it is accounted for, and every gap.

A GPU serial (or a node) is *covered* at an instant when a verified statement's window
naming it contains that instant. Everything else in the period is a gap, and each gap
says why, from what the bundle proves:

``dropped``
    the node's agent dropped statements unsent and signed a record saying so
    (``predicate.dropped``): usage in that time is unknown, and admitted;
``missing``
    statements are missing from the node's chain (a ``seq_gap`` failure);
``absent``
    the node reported, but its statements did not name this GPU (for a serial);
``silent``
    no statement covers the time, and the chain is unbroken: the agent was not running
    or not signing (for a node, or a serial on a node that was silent).

A gap also has a ``position``: ``start`` (from the period's start), ``end`` (to the
period's end) or ``middle``. For the start and end, ``proven`` says whether the bundle
proves that nothing was left out there: at the start, the chain begins there or a
statement before the period is included; at the end, the log's committed heads show that
the last statement included was the key's latest at the checkpoint, or one after the
period is included (docs/vendor-guide.md, "Completeness").
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CAUSES = ("dropped", "missing", "absent")  # in the order a gap is attributed to them


def merge(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping union of half-open intervals (empty ones dropped)."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(intervals):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _overlaps(merged: Sequence[tuple[int, int]], ends: Sequence[int], s: int, e: int) -> bool:
    i = bisect_right(ends, s)  # the first interval that ends after s
    return i < len(merged) and merged[i][0] < e


@dataclass(frozen=True)
class Gap:
    start_ms: int
    end_ms: int
    cause: str  # dropped | missing | absent | silent
    position: str  # start | middle | end | all
    proven: bool | None = None  # start/end only: nothing was left out there

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "duration_ms": self.duration_ms,
            "cause": self.cause,
            "position": self.position,
            "proven": self.proven,
        }


@dataclass
class Coverage:
    period_start_ms: int
    period_end_ms: int
    covered_ms: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    gaps: list[Gap] = field(default_factory=list)
    start_proven: bool = False
    end_proven: bool = False

    @property
    def period_ms(self) -> int:
        return max(0, self.period_end_ms - self.period_start_ms)

    @property
    def fraction(self) -> float:
        return self.covered_ms / self.period_ms if self.period_ms else 1.0

    @property
    def percent_text(self) -> str:
        """Rounded down, so that a period with any gap never shows 100.0%."""
        tenths = self.covered_ms * 1000 // self.period_ms if self.period_ms else 1000
        return f"{tenths // 10}.{tenths % 10}%"

    def dark_ms(self) -> int:
        return sum(g.duration_ms for g in self.gaps)

    def to_json(self) -> dict[str, Any]:
        return {
            "period_start_ms": self.period_start_ms,
            "period_end_ms": self.period_end_ms,
            "covered_ms": self.covered_ms,
            "covered": round(self.fraction, 6),
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "start_proven": self.start_proven,
            "end_proven": self.end_proven,
            "gaps": [g.to_json() for g in self.gaps],
        }


def coverage(
    windows: Iterable[tuple[int, int]],
    period: tuple[int, int],
    causes: Mapping[str, Iterable[tuple[int, int]]],
    *,
    start_proven: bool,
    end_proven: bool,
) -> Coverage:
    """The coverage of ``period`` by ``windows``; each gap attributed to the first of
    ``causes`` (dropped, missing, absent) it overlaps, else ``silent``."""
    p0, p1 = period
    cov = Coverage(p0, p1, start_proven=start_proven, end_proven=end_proven)
    merged = merge(windows)
    if merged:
        cov.first_ms, cov.last_ms = merged[0][0], merged[-1][1]
    clipped = [(max(s, p0), min(e, p1)) for s, e in merged if e > p0 and s < p1]
    cov.covered_ms = sum(e - s for s, e in clipped)
    index = {}
    for name in CAUSES:
        m = merge(causes.get(name, ()))
        index[name] = (m, [e for _, e in m])
    at = p0
    holes: list[tuple[int, int]] = []
    for s, e in clipped:
        if s > at:
            holes.append((at, s))
        at = max(at, e)
    if at < p1:
        holes.append((at, p1))
    for s, e in holes:
        cause = next((c for c in CAUSES if _overlaps(index[c][0], index[c][1], s, e)), "silent")
        if s == p0 and e == p1:
            position, proven = "all", start_proven and end_proven
        elif s == p0:
            position, proven = "start", start_proven
        elif e == p1:
            position, proven = "end", end_proven
        else:
            position, proven = "middle", None
        cov.gaps.append(Gap(s, e, cause, position, proven))
    return cov
