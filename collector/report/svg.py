"""The report's three charts as inline SVG: GPUs in use, the utilization heat map, cumulative FLOP."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from collector.report.data import ReportData, false_runs
from collector.report.fmt import colour, esc, nice_step, time_label, time_ticks
from collector.report.options import ReportOptions

_W = 1040  # chart width in SVG units
_ML, _MR, _MT, _MB = 72, 150, 40, 36  # margins: left (y labels), right (legends), top (markers), bottom


@dataclass(frozen=True)
class _Frame:
    t0: int
    t1: int
    height: int
    left: int = _ML

    @property
    def plot_w(self) -> int:
        return _W - self.left - _MR

    @property
    def plot_h(self) -> int:
        return self.height - _MT - _MB

    def x(self, t: float) -> float:
        return self.left + (t - self.t0) / max(self.t1 - self.t0, 1) * self.plot_w


def _svg_open(chart_id: str, height: int, title: str) -> list[str]:
    return [
        f'<svg id="{chart_id}" class="chart" viewBox="0 0 {_W} {height}" width="{_W}" height="{height}" '
        f'role="img" aria-label="{esc(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{esc(title)}</title>",
    ]


def _time_axis(fr: _Frame, out: list[str]) -> None:
    y = _MT + fr.plot_h
    out.append(f'<line x1="{fr.left}" y1="{y}" x2="{fr.left + fr.plot_w}" y2="{y}" class="axis"/>')
    for t in time_ticks(fr.t0, fr.t1):
        x = fr.x(t)
        out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 5}" class="axis"/>')
        out.append(
            f'<text x="{x:.1f}" y="{y + 19}" text-anchor="middle" class="tick">{time_label(t, fr.t1 - fr.t0)}</text>'
        )
    out.append(f'<text x="{fr.left + fr.plot_w}" y="{y + 33}" text-anchor="end" class="tick">time (UTC)</text>')


def _markers(fr: _Frame, marks: Sequence[tuple[int, str]], out: list[str]) -> None:
    for i, (t, label) in enumerate(marks):
        if not fr.t0 <= t <= fr.t1:
            continue
        x = fr.x(t)
        out.append(f'<line x1="{x:.1f}" y1="{_MT}" x2="{x:.1f}" y2="{_MT + fr.plot_h}" class="marker"/>')
        # Labels above the plot, staggered so that close markers do not overlap.
        out.append(
            f'<text x="{x:.1f}" y="{_MT - 22 + 14 * (i % 2)}" text-anchor="middle" class="marker-label">'
            f"{esc(label)}</text>"
        )


def _path(points: Iterable[tuple[float, float] | None]) -> str:
    d: list[str] = []
    pen = False
    for p in points:
        if p is None:
            pen = False
            continue
        d.append(f"{'L' if pen else 'M'}{p[0]:.1f},{p[1]:.1f}")
        pen = True
    return "".join(d)


def _hatch(x0: float, y0: float, x1: float, y1: float, step: float = 6.0) -> str:
    """A hatched rectangle: "no data". Drawn as lines, not an SVG pattern: a pattern is filled by
    ``url(#id)``, and the report keeps to markup that references nothing."""
    d: list[str] = []
    c = x0 + y0 + step
    while c < x1 + y1:
        # The line x + y = c, clipped to the rectangle.
        xa, xb = max(x0, c - y1), min(x1, c - y0)
        if xa < xb:
            d.append(f"M{xa:.1f},{c - xa:.1f}L{xb:.1f},{c - xb:.1f}")
        c += step
    return (
        f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" class="nodata"/>'
        f'<path d="{"".join(d)}" class="nodata-hatch"/>'
    )


def _no_data(fr: _Frame, data: ReportData, out: list[str]) -> None:
    """Hatch the time for which no node signed any statement, labelled where there is room."""
    for first, last in data.no_data_runs():
        x0 = fr.x(data.bucket_starts[first])
        x1 = fr.x(data.bucket_starts[last] + data.bucket_ms)
        out.append(_hatch(x0, _MT, x1, _MT + fr.plot_h))
        if x1 - x0 >= 48:
            out.append(
                f'<text x="{(x0 + x1) / 2:.1f}" y="{_MT + fr.plot_h / 2:.1f}" text-anchor="middle" '
                'class="nodata-label">no data</text>'
            )


def _legend_no_data(x: float, y: float, out: list[str]) -> None:
    out.append(_hatch(x, y, x + 14, y + 10, step=4.0))
    out.append(f'<text x="{x + 20}" y="{y + 9}" class="legend">no data</text>')
    out.append(f'<text x="{x + 20}" y="{y + 23}" class="legend small">(no statement)</text>')


def chart_gpus(data: ReportData, marks: Sequence[tuple[int, str]], threshold: int) -> str:
    height = 300
    fr = _Frame(data.span_from_ms, data.span_to_ms, height)
    vals = [v for v in data.gpus_in_use if v is not None]
    top = max([*vals, float(threshold), 1.0]) * 1.1
    step = nice_step(top, 5)
    top = math.ceil(top / step) * step

    def y(v: float) -> float:
        return _MT + fr.plot_h * (1 - v / top)

    out = _svg_open("chart-gpus", height, "GPUs in use by the tenant over time")
    k = 0.0
    while k <= top + 1e-9:
        out.append(f'<line x1="{_ML}" y1="{y(k):.1f}" x2="{_ML + fr.plot_w}" y2="{y(k):.1f}" class="grid"/>')
        out.append(f'<text x="{_ML - 8}" y="{y(k) + 4:.1f}" text-anchor="end" class="tick">{k:,.0f}</text>')
        k += step
    half = data.bucket_ms / 2
    pts_use = [
        None if v is None else (fr.x(t + half), y(v)) for t, v in zip(data.bucket_starts, data.gpus_in_use, strict=True)
    ]
    pts_eq = [
        None if v is None else (fr.x(t + half), y(v))
        for t, v in zip(data.bucket_starts, data.gpu_equivalents, strict=True)
    ]
    _no_data(fr, data, out)
    # The area under the line, one polygon per stretch with data (a gap of no data is no area).
    base = y(0)
    for first, last in false_runs([p is None for p in pts_use]):
        area = [p for p in pts_use[first : last + 1] if p is not None]
        poly = " ".join(f"{px:.1f},{py:.1f}" for px, py in area)
        out.append(
            f'<polygon points="{area[0][0]:.1f},{base:.1f} {poly} {area[-1][0]:.1f},{base:.1f}" class="area-use"/>'
        )
    out.append(f'<path d="{_path(pts_use)}" class="line-use"/>')
    out.append(f'<path d="{_path(pts_eq)}" class="line-eq"/>')
    out.append(
        f'<line x1="{_ML}" y1="{y(threshold):.1f}" x2="{_ML + fr.plot_w}" y2="{y(threshold):.1f}" class="threshold"/>'
    )
    out.append(
        f'<text x="{_ML + fr.plot_w + 6}" y="{y(threshold) + 4:.1f}" class="threshold-label">'
        f"detector: {threshold:,} GPUs</text>"
    )
    _markers(fr, marks, out)
    _time_axis(fr, out)
    out.append(
        f'<text transform="translate(16 {_MT + fr.plot_h / 2:.0f}) rotate(-90)" text-anchor="middle" '
        f'class="axis-label">GPUs</text>'
    )
    lx = _ML + fr.plot_w + 12
    out.append(f'<rect x="{lx}" y="{_MT + 40}" width="14" height="10" class="area-use line-use"/>')
    out.append(f'<text x="{lx + 20}" y="{_MT + 49}" class="legend">GPUs in use</text>')
    out.append(f'<line x1="{lx}" y1="{_MT + 70}" x2="{lx + 14}" y2="{_MT + 70}" class="line-eq"/>')
    out.append(f'<text x="{lx + 20}" y="{_MT + 74}" class="legend">GPU-equivalents</text>')
    out.append(f'<text x="{lx + 20}" y="{_MT + 88}" class="legend small">(attributed time)</text>')
    _legend_no_data(lx, _MT + 106, out)
    out.append("</svg>")
    return "\n".join(out)


def chart_heatmap(data: ReportData, marks: Sequence[tuple[int, str]]) -> str:
    rows = data.heat_rows
    row_h = max(7, min(18, 420 // max(len(rows), 1)))
    height = _MT + row_h * len(rows) + _MB
    fr = _Frame(data.span_from_ms, data.span_to_ms, height, left=_ML + 70)  # node names need room
    cell_w = fr.plot_w / max(len(data.bucket_starts), 1)
    label_every = max(1, math.ceil(11 / row_h))
    out = _svg_open("chart-heatmap", height, "Utilization of the tenant's GPUs, node by node, over time")
    for r, (label, values) in enumerate(rows):
        y = _MT + r * row_h
        covered = data.heat_covered[r] if r < len(data.heat_covered) else [True] * len(values)
        if r % label_every == 0:
            out.append(
                f'<text x="{fr.left - 6}" y="{y + min(row_h, 12) - 2}" text-anchor="end" class="tick node">'
                f"{esc(label)}</text>"
            )
        for i, v in enumerate(values):
            if not covered[i]:
                continue  # no data: hatched below, never drawn as "not in use"
            fill = "#eeeeee" if v is None else colour(v)
            out.append(
                f'<rect x="{fr.left + i * cell_w:.1f}" y="{y}" width="{cell_w + 0.5:.1f}" height="{row_h - 1}" '
                f'fill="{fill}"/>'
            )
        for first, last in false_runs(covered):
            out.append(_hatch(fr.left + first * cell_w, y, fr.left + (last + 1) * cell_w, y + row_h - 1, step=5.0))
    _markers(fr, marks, out)
    _time_axis(fr, out)
    lx = fr.left + fr.plot_w + 12
    out.append(f'<text x="{lx}" y="{_MT + 10}" class="legend">utilization</text>')
    for j in range(11):
        out.append(f'<rect x="{lx}" y="{_MT + 18 + j * 12}" width="16" height="12" fill="{colour(1 - j / 10)}"/>')
    out.append(f'<text x="{lx + 22}" y="{_MT + 28}" class="legend">100%</text>')
    out.append(f'<text x="{lx + 22}" y="{_MT + 28 + 60}" class="legend">50%</text>')
    out.append(f'<text x="{lx + 22}" y="{_MT + 28 + 120}" class="legend">0%</text>')
    out.append(f'<rect x="{lx}" y="{_MT + 158}" width="16" height="12" fill="#eeeeee"/>')
    out.append(f'<text x="{lx + 22}" y="{_MT + 168}" class="legend">not in use</text>')
    _legend_no_data(lx, _MT + 180, out)
    out.append("</svg>")
    return "\n".join(out)


def chart_flop(data: ReportData, options: ReportOptions, marks: Sequence[tuple[int, str]]) -> str:
    height = 320
    fr = _Frame(data.span_from_ms, data.span_to_ms, height)
    highest = max([hi for _, hi in data.flop_cum] + [1.0])
    positive = [lo for lo, _ in data.flop_cum if lo > 0]
    lo_exp = min(int(math.floor(math.log10(min(positive)))) if positive else 18, 21)
    hi_exp = max(int(math.ceil(math.log10(highest))), int(math.log10(options.thresholds[-1][0])) + 1)

    def y(v: float) -> float:
        if v <= 0:
            return _MT + fr.plot_h
        ly = min(max(math.log10(v), lo_exp), hi_exp)
        return _MT + fr.plot_h * (1 - (ly - lo_exp) / (hi_exp - lo_exp))

    out = _svg_open("chart-flop", height, "Cumulative estimated compute against the reporting thresholds")
    for e in range(lo_exp, hi_exp + 1):
        out.append(
            f'<line x1="{_ML}" y1="{y(10.0**e):.1f}" x2="{_ML + fr.plot_w}" y2="{y(10.0**e):.1f}" class="grid"/>'
        )
        out.append(
            f'<text x="{_ML - 8}" y="{y(10.0**e) + 4:.1f}" text-anchor="end" class="tick">10<tspan dy="-6" '
            f'font-size="9">{e}</tspan></text>'
        )
    _no_data(fr, data, out)
    ends = [t + data.bucket_ms for t in data.bucket_starts]
    upper = [(fr.x(t), y(hi)) for t, (_, hi) in zip(ends, data.flop_cum, strict=True) if hi > 0]
    lower = [(fr.x(t), y(lo)) for t, (lo, _) in zip(ends, data.flop_cum, strict=True) if lo > 0]
    if upper and lower:
        pts = upper + lower[::-1]
        out.append(f'<polygon points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in pts)}" class="band"/>')
        out.append(f'<path d="{_path(upper)}" class="line-hi"/>')
        out.append(f'<path d="{_path(lower)}" class="line-lo"/>')
    for value, name in options.thresholds:
        ty = y(value)
        out.append(f'<line x1="{_ML}" y1="{ty:.1f}" x2="{_ML + fr.plot_w}" y2="{ty:.1f}" class="threshold"/>')
        exp = round(math.log10(value))
        mant = value / 10**exp
        num = f"10<tspan dy='-5' font-size='9'>{exp}</tspan>" if abs(mant - 1) < 1e-9 else f"{value:.1e}"
        out.append(
            f'<text x="{_ML + fr.plot_w + 6}" y="{ty + 4:.1f}" class="threshold-label">{num}'
            f'<tspan dy="5"> {esc(name)}</tspan></text>'
        )
    _markers(fr, marks, out)
    _time_axis(fr, out)
    out.append(
        f'<text transform="translate(16 {_MT + fr.plot_h / 2:.0f}) rotate(-90)" text-anchor="middle" '
        f'class="axis-label">FLOP (log scale)</text>'
    )
    lx = _ML + 12
    out.append(
        f'<rect x="{lx - 6}" y="{_MT + 2}" width="330" height="{40 if data.no_data_runs() else 22}" class="legend-bg"/>'
    )
    out.append(f'<rect x="{lx}" y="{_MT + 8}" width="14" height="10" class="band"/>')
    out.append(
        f'<text x="{lx + 20}" y="{_MT + 17}" class="legend">estimate, MFU {options.mfu[0]:g} (lower line) '
        f"to {options.mfu[1]:g} (upper line)</text>"
    )
    if data.no_data_runs():
        out.append(_hatch(lx, _MT + 26, lx + 14, _MT + 36, step=4.0))
        out.append(f'<text x="{lx + 20}" y="{_MT + 35}" class="legend">no data (no statement from any node)</text>')
    out.append("</svg>")
    return "\n".join(out)
