"""Formatting shared by the charts and the page: times, numbers, escaping, the palette."""

from __future__ import annotations

import datetime as dt
import html
import math
from typing import Any

from collector.detect.findings import parse_rfc3339_ms

MS = 1000
MINUTE_MS = 60 * MS


def parse_ms(text: Any) -> int | None:
    """An RFC 3339 time in ms, or None for anything else."""
    if not isinstance(text, str):
        return None
    try:
        return parse_rfc3339_ms(text)
    except ValueError:
        return None


def utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / MS, tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def rfc3339(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / MS, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def sci(x: float) -> str:
    """1.2 × 10²³ as HTML."""
    if x <= 0:
        return "0"
    exp = math.floor(math.log10(x))
    mant = x / 10**exp
    return f"{mant:.1f}&#8239;×&#8239;10<sup>{exp}</sup>"


def duration(ms: int) -> str:
    minutes = max(0, ms) // MINUTE_MS
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} days {hours % 24} h"


def nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


TIME_STEPS_MS = [m * MINUTE_MS for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)]


def time_ticks(t0: int, t1: int, target: int = 8) -> list[int]:
    step = next((s for s in TIME_STEPS_MS if (t1 - t0) / s <= target), TIME_STEPS_MS[-1])
    first = t0 + (-t0) % step
    return list(range(first, t1 + 1, step))


def time_label(ms: int, span_ms: int) -> str:
    t = dt.datetime.fromtimestamp(ms / MS, tz=dt.UTC)
    return t.strftime("%m-%d %H:%M") if span_ms > 2 * 86_400_000 else t.strftime("%H:%M")


# Sequential palette (light to dark), for utilization 0..1.
PALETTE = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b")


def colour(v: float) -> str:
    """Linear interpolation in ``PALETTE`` for v in 0..1."""
    v = min(1.0, max(0.0, v))
    pos = v * (len(PALETTE) - 1)
    i = min(int(pos), len(PALETTE) - 2)
    f = pos - i
    a, b = PALETTE[i], PALETTE[i + 1]
    rgb = [round(int(a[k : k + 2], 16) * (1 - f) + int(b[k : k + 2], 16) * f) for k in (1, 3, 5)]
    return "#" + "".join(f"{c:02x}" for c in rgb)
