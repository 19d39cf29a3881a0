"""Evidence reports: one self-contained HTML file per finding, for compliance staff.

``gpuaudit-collector report FINDING_ID --out report.html`` writes a page that a compliance
officer can read, print and forward without any tool: the finding in plain words, three
charts (GPUs in use, utilization across the tenant's nodes, cumulative compute against the
reporting thresholds), both axes of its severity (why the tenant counts as opaque, and its
end-use risk: countries of concern, restricted-party screening with the list's date, a
declared use the run contradicts), the signed statements behind it and the commands that
let anyone verify them offline.

The file fetches nothing: CSS is inline, the charts are SVG generated here, there is no
script, and a Content-Security-Policy forbids every fetch (a forwarded report must not
call home). Every string that came from a node (tenant, node and workload names) is
HTML-escaped.

Data come from the store: the finding's JSON, and the statements of the finding's tenants
in the finding's span. The store holds only statements that were verified and
schema-checked at ingest (``collector.ingest``), so their payloads are read with
``json.loads`` and the fields the charts need, without a second full schema parse (3x
faster on the demo's 45,000 statements). A payload is only parsed when it names one of the
tenants (a byte search first). Charts are downsampled to at most ``max_time_buckets``
columns and ``max_heat_rows`` rows; the statements table has one row per node key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import html
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from collector.detect import flops
from collector.detect.findings import parse_rfc3339_ms
from collector.errors import CollectorError
from collector.store.base import FindingRecord, StatementRecord

_logger = logging.getLogger(__name__)

_MS = 1000
_MINUTE_MS = 60 * _MS


class ReportStore(Protocol):
    """What the report reads from a store (``collector.store.base.Store`` has it)."""

    def findings(self, tenant: str | None = None) -> list[FindingRecord]: ...

    def iter_statements(
        self,
        key_id: str | None = None,
        *,
        from_seq: int = 0,
        window_from_ms: int | None = None,
        window_to_ms: int | None = None,
    ) -> Iterator[StatementRecord]: ...


class ReportError(CollectorError):
    """The report cannot be made (unknown finding, nothing stored for it)."""

    reason = "report"

    def __init__(self, message: str, remedy: str = "") -> None:
        super().__init__(message)
        self.remedy = remedy

    def diagnostics(self) -> str:
        return f"{self}\n{self.remedy}" if self.remedy else str(self)


@dataclass(frozen=True)
class ReportOptions:
    """What the report needs besides the store. ``from_detect_config`` fills it from ``[detect]``."""

    mfu: tuple[float, float] = (0.25, 0.55)
    # (FLOP, name) in increasing order: the detector's watch/flag/report thresholds.
    thresholds: tuple[tuple[float, str], ...] = (
        (1e23, "watch"),
        (1e24, "flag"),
        (1e25, "report"),
        (1e26, "report (high)"),
    )
    min_gpus: int = 64
    # Minutes of context shown before the run started.
    lead_in_ms: int = 30 * _MINUTE_MS
    max_time_buckets: int = 180
    max_heat_rows: int = 48
    # Rows of the statements table (one per node key); more keys are counted, not listed.
    max_keys: int = 1000
    # How the verification commands name the store (``--db PATH`` or ``--config PATH``).
    store_args: str = ""
    tenant_facts: dict[str, dict[str, str]] = field(default_factory=dict)


def from_detect_config(
    dcfg: Any, store_args: str = "", tenant_facts: dict[str, dict[str, str]] | None = None
) -> ReportOptions:
    """Options from a ``collector.detect.config.DetectConfig``."""
    return ReportOptions(
        mfu=(float(dcfg.mfu_low), float(dcfg.mfu_high)),
        thresholds=(
            (float(dcfg.flop_watch), "watch"),
            (float(dcfg.flop_flag), "flag"),
            (float(dcfg.flop_report), "report"),
            (float(dcfg.flop_report_high), "report (high)"),
        ),
        min_gpus=int(dcfg.min_gpus),
        store_args=store_args,
        tenant_facts=tenant_facts or {},
    )


# ---------------------------------------------------------------------------
# Data


@dataclass
class KeySummary:
    """The statements of one node key behind the report."""

    key_id: str
    node_id: str
    count: int = 0
    first_seq: int = -1
    last_seq: int = -1
    first_start_ms: int = 0
    last_end_ms: int = 0
    first_digest: str = ""
    last_digest: str = ""

    @property
    def contiguous(self) -> bool:
        return self.last_seq - self.first_seq + 1 == self.count


@dataclass
class ReportData:
    finding: dict[str, Any]
    tenants: tuple[str, ...]
    span_from_ms: int
    span_to_ms: int
    bucket_ms: int
    bucket_starts: list[int]
    gpus_in_use: list[float | None]  # time-weighted mean GPUs running the tenants' work
    gpu_equivalents: list[float | None]  # attributed GPU time / bucket time
    heat_rows: list[tuple[str, list[float | None]]]  # label, mean utilization 0..1 per bucket
    heat_nodes_per_row: int
    flop_cum: list[tuple[float, float]]  # cumulative (low, high) at each bucket's end
    flop_unavailable_gpu_s: float
    keys: list[KeySummary]
    statements: int
    statements_scanned: int
    evidence_sha256: str
    nodes: int


def _parse_rfc3339_ms(text: Any) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        return parse_rfc3339_ms(text)
    except ValueError:
        return None


def _finding(store: ReportStore, finding_id: str) -> tuple[dict[str, Any], int, int]:
    records = store.findings()
    for r in records:
        if r.finding_id == finding_id:
            return json.loads(r.json_text), r.started_ms, r.detected_ms
    known = ", ".join(r.finding_id for r in records[:5]) or "none"
    raise ReportError(
        f"no finding {finding_id!r} in the store",
        f"List the recorded findings with `gpuaudit-collector findings` (this store has: {known}"
        + (", ..." if len(records) > 5 else "")
        + "). Give the same --config or --db as the collector that recorded it.",
    )


def collect(store: ReportStore, finding_id: str, options: ReportOptions) -> ReportData:
    """Read the finding and its statements from ``store`` and summarise them for the charts."""
    doc, started_ms, detected_ms = _finding(store, finding_id)
    tenants = tuple(t for t in (doc.get("tenants") or [doc.get("tenant")]) if isinstance(t, str) and t)
    if doc.get("kind") != "large_training" or not tenants:
        raise ReportError(
            f"finding {finding_id} is a {doc.get('kind')!r} finding: evidence reports cover large_training findings",
            "Its JSON is printed by `gpuaudit-collector findings --json`.",
        )
    last_end = _parse_rfc3339_ms((doc.get("evidence") or {}).get("last_window_end"))
    span_to = max(last_end or detected_ms, detected_ms)
    span_from = started_ms - options.lead_in_ms
    needles = {json.dumps(t).encode() for t in tenants} | {json.dumps(t, ensure_ascii=False).encode() for t in tenants}
    wanted = set(tenants)

    # Per window start: GPUs with the tenants' work, attributed GPU time, FLOP; per node: utilization.
    gpu_ms_in_use: dict[int, float] = defaultdict(float)  # start -> GPUs x window duration
    attributed_ms: dict[int, float] = defaultdict(float)
    flop_lo: dict[int, float] = defaultdict(float)
    flop_hi: dict[int, float] = defaultdict(float)
    util: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    keys: dict[str, KeySummary] = {}
    evidence = hashlib.sha256()
    lines: list[str] = []
    unavailable_gpu_s = 0.0
    scanned = 0
    mfu_lo, mfu_hi = options.mfu
    peaks: dict[str, flops.GpuPeak | None] = {}
    actual_to = span_to
    for rec in store.iter_statements(window_from_ms=span_from, window_to_ms=span_to):
        scanned += 1
        if not any(n in rec.payload for n in needles):
            continue
        pred = json.loads(rec.payload)["predicate"]
        window = pred["window"]
        start, end = int(window["start_ms"]), int(window["end_ms"])
        interval_ms = int(window["sample_interval_ms"])
        duration = end - start
        ours = False
        node_util = util[rec.node_id]
        for g in pred["gpus"]:
            mine = [w for w in g["workloads"] if w["tenant"] in wanted]
            if not mine:
                continue
            ours = True
            gpu_ms = float(sum(w["gpu_ms"] for w in mine))
            gpu_ms_in_use[start] += duration
            attributed_ms[start] += gpu_ms
            u = g.get("util_mean_permille")
            if u is not None:
                cell = node_util[start]
                cell[0] += u / 1000.0
                cell[1] += 1
            model = g["model"]
            if model not in peaks:
                peaks[model] = flops.lookup(model)
            peak = peaks[model]
            active = g.get("sm_active_mean_permille")
            if active is None:
                active = u
            if peak is None or active is None or not g["samples"] or not interval_ms:
                unavailable_gpu_s += gpu_ms / _MS
                continue
            done = peak.bf16_dense_flops * (active / 1000.0) * gpu_ms / _MS
            flop_lo[start] += mfu_lo * done
            flop_hi[start] += mfu_hi * done
        if not ours:
            continue
        actual_to = max(actual_to, end)
        ks = keys.get(rec.key_id)
        if ks is None:
            ks = keys[rec.key_id] = KeySummary(
                rec.key_id, rec.node_id, first_seq=rec.seq, first_start_ms=start, first_digest=rec.digest
            )
        ks.count += 1
        ks.last_seq, ks.last_end_ms, ks.last_digest = rec.seq, end, rec.digest
        lines.append(f"{rec.key_id} {rec.seq} {rec.digest}\n")
    for line in sorted(lines):
        evidence.update(line.encode())
    if not keys:
        raise ReportError(
            f"finding {finding_id}: no stored statement names tenant(s) {', '.join(tenants)} "
            f"between {_utc(span_from)} and {_utc(span_to)}",
            "Give the store of the collector that recorded the finding (--config or --db).",
        )

    # Time buckets: whole windows, at most max_time_buckets of them.
    window_ms = min((k.last_end_ms - k.first_start_ms) // max(k.count, 1) for k in keys.values()) or _MINUTE_MS
    window_ms = max(window_ms, 1)
    span_from = span_from - span_from % window_ms
    total = max(actual_to - span_from, window_ms)
    per = max(1, math.ceil(total / window_ms / options.max_time_buckets))
    bucket_ms = per * window_ms
    n = math.ceil(total / bucket_ms)
    starts = [span_from + i * bucket_ms for i in range(n)]

    def bucket(t: int) -> int:
        return min(n - 1, max(0, (t - span_from) // bucket_ms))

    in_use: list[float | None] = [None] * n
    equiv: list[float | None] = [None] * n
    lo_b = [0.0] * n
    hi_b = [0.0] * n
    for t, v in gpu_ms_in_use.items():
        b = bucket(t)
        in_use[b] = (in_use[b] or 0.0) + v / bucket_ms
    for t, v in attributed_ms.items():
        b = bucket(t)
        equiv[b] = (equiv[b] or 0.0) + v / bucket_ms
    for t, v in flop_lo.items():
        lo_b[bucket(t)] += v
    for t, v in flop_hi.items():
        hi_b[bucket(t)] += v
    # Buckets before the tenants' first statement show 0, not "no data": the statements
    # of every node in the span were read, and none named the tenants.
    first_b = min(bucket(k.first_start_ms) for k in keys.values())
    for i in range(first_b):
        in_use[i] = equiv[i] = 0.0
    cum: list[tuple[float, float]] = []
    clo = chi = 0.0
    for i in range(n):
        clo += lo_b[i]
        chi += hi_b[i]
        cum.append((clo, chi))

    # Heat map: one row per node, or per group of nodes when there are more than max_heat_rows.
    nodes = sorted(util)
    per_row = max(1, math.ceil(len(nodes) / options.max_heat_rows))
    rows: list[tuple[str, list[float | None]]] = []
    for i in range(0, len(nodes), per_row):
        group = nodes[i : i + per_row]
        sums = [[0.0, 0.0] for _ in range(n)]
        for node in group:
            for t, (s, c) in util[node].items():
                cell = sums[bucket(t)]
                cell[0] += s
                cell[1] += c
        label = group[0] if len(group) == 1 else f"{group[0]} … {group[-1]}"
        rows.append((label, [s / c if c else None for s, c in sums]))
    _logger.info(
        "report %s: %d statements of %d in the span, %d keys, %d buckets of %d s",
        finding_id,
        len(lines),
        scanned,
        len(keys),
        n,
        bucket_ms // _MS,
    )
    return ReportData(
        finding=doc,
        tenants=tenants,
        span_from_ms=span_from,
        span_to_ms=span_from + n * bucket_ms,
        bucket_ms=bucket_ms,
        bucket_starts=starts,
        gpus_in_use=in_use,
        gpu_equivalents=equiv,
        heat_rows=rows,
        heat_nodes_per_row=per_row,
        flop_cum=cum,
        flop_unavailable_gpu_s=unavailable_gpu_s,
        keys=sorted(keys.values(), key=lambda k: (k.node_id, k.key_id)),
        statements=len(lines),
        statements_scanned=scanned,
        evidence_sha256=evidence.hexdigest(),
        nodes=len(nodes),
    )


# ---------------------------------------------------------------------------
# Formatting helpers


def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / _MS, tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _rfc3339(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / _MS, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _sci(x: float) -> str:
    """1.2 × 10²³ as HTML."""
    if x <= 0:
        return "0"
    exp = math.floor(math.log10(x))
    mant = x / 10**exp
    return f"{mant:.1f}&#8239;×&#8239;10<sup>{exp}</sup>"


def _duration(ms: int) -> str:
    minutes = max(0, ms) // _MINUTE_MS
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} days {hours % 24} h"


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


_TIME_STEPS_MS = [m * _MINUTE_MS for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)]


def _time_ticks(t0: int, t1: int, target: int = 8) -> list[int]:
    step = next((s for s in _TIME_STEPS_MS if (t1 - t0) / s <= target), _TIME_STEPS_MS[-1])
    first = t0 + (-t0) % step
    return list(range(first, t1 + 1, step))


def _time_label(ms: int, span_ms: int) -> str:
    t = dt.datetime.fromtimestamp(ms / _MS, tz=dt.UTC)
    return t.strftime("%m-%d %H:%M") if span_ms > 2 * 86_400_000 else t.strftime("%H:%M")


# Sequential palette (light to dark), for utilization 0..1.
_PALETTE = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b")


def _colour(v: float) -> str:
    """Linear interpolation in ``_PALETTE`` for v in 0..1."""
    v = min(1.0, max(0.0, v))
    pos = v * (len(_PALETTE) - 1)
    i = min(int(pos), len(_PALETTE) - 2)
    f = pos - i
    a, b = _PALETTE[i], _PALETTE[i + 1]
    rgb = [round(int(a[k : k + 2], 16) * (1 - f) + int(b[k : k + 2], 16) * f) for k in (1, 3, 5)]
    return "#" + "".join(f"{c:02x}" for c in rgb)


# ---------------------------------------------------------------------------
# Charts (inline SVG)

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
        f'role="img" aria-label="{_e(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{_e(title)}</title>",
    ]


def _time_axis(fr: _Frame, out: list[str]) -> None:
    y = _MT + fr.plot_h
    out.append(f'<line x1="{fr.left}" y1="{y}" x2="{fr.left + fr.plot_w}" y2="{y}" class="axis"/>')
    for t in _time_ticks(fr.t0, fr.t1):
        x = fr.x(t)
        out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 5}" class="axis"/>')
        out.append(
            f'<text x="{x:.1f}" y="{y + 19}" text-anchor="middle" class="tick">{_time_label(t, fr.t1 - fr.t0)}</text>'
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
            f"{_e(label)}</text>"
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


def chart_gpus(data: ReportData, marks: Sequence[tuple[int, str]], threshold: int) -> str:
    height = 300
    fr = _Frame(data.span_from_ms, data.span_to_ms, height)
    vals = [v for v in data.gpus_in_use if v is not None]
    top = max([*vals, float(threshold), 1.0]) * 1.1
    step = _nice_step(top, 5)
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
    area = [p for p in pts_use if p is not None]
    if area:
        base = y(0)
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
        if r % label_every == 0:
            out.append(
                f'<text x="{fr.left - 6}" y="{y + min(row_h, 12) - 2}" text-anchor="end" class="tick node">'
                f"{_e(label)}</text>"
            )
        for i, v in enumerate(values):
            fill = "#eeeeee" if v is None else _colour(v)
            out.append(
                f'<rect x="{fr.left + i * cell_w:.1f}" y="{y}" width="{cell_w + 0.5:.1f}" height="{row_h - 1}" '
                f'fill="{fill}"/>'
            )
    _markers(fr, marks, out)
    _time_axis(fr, out)
    lx = fr.left + fr.plot_w + 12
    out.append(f'<text x="{lx}" y="{_MT + 10}" class="legend">utilization</text>')
    for j in range(11):
        out.append(f'<rect x="{lx}" y="{_MT + 18 + j * 12}" width="16" height="12" fill="{_colour(1 - j / 10)}"/>')
    out.append(f'<text x="{lx + 22}" y="{_MT + 28}" class="legend">100%</text>')
    out.append(f'<text x="{lx + 22}" y="{_MT + 28 + 60}" class="legend">50%</text>')
    out.append(f'<text x="{lx + 22}" y="{_MT + 28 + 120}" class="legend">0%</text>')
    out.append(f'<rect x="{lx}" y="{_MT + 158}" width="16" height="12" fill="#eeeeee"/>')
    out.append(f'<text x="{lx + 22}" y="{_MT + 168}" class="legend">not in use</text>')
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
            f'<tspan dy="5"> {_e(name)}</tspan></text>'
        )
    _markers(fr, marks, out)
    _time_axis(fr, out)
    out.append(
        f'<text transform="translate(16 {_MT + fr.plot_h / 2:.0f}) rotate(-90)" text-anchor="middle" '
        f'class="axis-label">FLOP (log scale)</text>'
    )
    lx = _ML + 12
    out.append(f'<rect x="{lx}" y="{_MT + 8}" width="14" height="10" class="band"/>')
    out.append(
        f'<text x="{lx + 20}" y="{_MT + 17}" class="legend">estimate, MFU {options.mfu[0]:g} (lower line) '
        f"to {options.mfu[1]:g} (upper line)</text>"
    )
    out.append("</svg>")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# The page

_CSS = """
:root { --ink:#1b1f24; --muted:#5b6470; --line:#d8dde3; --accent:#08519c; --bg:#ffffff; }
* { box-sizing: border-box; }
body { margin:0; background:#f3f5f7; color:var(--ink);
  font: 15px/1.5 -apple-system, "Segoe UI", "Helvetica Neue", Arial, "Liberation Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; background: var(--bg); padding: 36px 40px 48px;
  box-shadow: 0 0 0 1px var(--line); }
header.top { border-bottom: 3px solid var(--accent); padding-bottom: 14px; margin-bottom: 22px; }
.kicker { text-transform: uppercase; letter-spacing: .08em; font-size: 12px; color: var(--muted); margin: 0; }
h1 { font-size: 26px; margin: 4px 0 6px; }
h2 { font-size: 19px; margin: 34px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p { margin: 6px 0 10px; }
.meta { color: var(--muted); font-size: 13px; }
.badge { display:inline-block; padding: 2px 10px; border-radius: 10px; font-weight: 600; font-size: 13px;
  color: #fff; vertical-align: middle; text-transform: uppercase; letter-spacing: .04em; }
.sev-critical { background:#a50f15; } .sev-high { background:#de2d26; } .sev-medium { background:#e6550d; }
.sev-low { background:#6b7280; }
.summary { background:#f6f8fb; border-left: 4px solid var(--accent); padding: 12px 16px; font-size: 16px; }
.facts { display:grid; grid-template-columns: repeat(4, 1fr); gap: 10px; margin: 16px 0 4px; }
.fact { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.fact .v { font-size: 20px; font-weight: 600; } .fact .k { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 8px 0; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f6f8fb; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
.digest { word-break: break-all; }
.nowrap { white-space: nowrap; }
table.statements td { font-size: 12px; padding: 4px 6px; }
table.statements td.mono { font-size: 11px; line-height: 1.35; }
table.statements td.key { max-width: 250px; }
pre { background: #1b1f24; color: #e8eaed; padding: 12px 14px; border-radius: 6px; overflow-x: auto;
  font-size: 12.5px; line-height: 1.45; }
.yes { color: #a50f15; font-weight: 600; } .no { color: #2c7a3f; } .unknown { color: var(--muted); }
.chart { display:block; width: 100%; height: auto; margin: 6px 0 2px; }
.chart .axis { stroke: #6b7280; stroke-width: 1; }
.chart .grid { stroke: #e6e9ed; stroke-width: 1; }
.chart .tick, .chart .legend, .chart .axis-label { font-size: 11px; fill: #4b5563; }
.chart .legend.small { font-size: 10px; }
.chart .node { font-size: 9.5px; font-family: "DejaVu Sans Mono", Menlo, monospace; }
.chart .area-use { fill: #9ecae1; fill-opacity: .55; }
.chart .line-use { fill: none; stroke: #08519c; stroke-width: 2; }
rect.line-use { fill: #9ecae1; }
.chart .line-eq { fill: none; stroke: #e6550d; stroke-width: 1.6; stroke-dasharray: 5 3; }
.chart .threshold { stroke: #a50f15; stroke-width: 1; stroke-dasharray: 6 4; }
.chart .threshold-label { font-size: 11px; fill: #a50f15; }
.chart .marker { stroke: #111827; stroke-width: 1; stroke-dasharray: 2 3; }
.chart .marker-label { font-size: 11px; fill: #111827; font-weight: 600; }
.chart .band { fill: #fdae6b; fill-opacity: .6; }
.chart .line-hi, .chart .line-lo { fill: none; stroke: #e6550d; stroke-width: 1.6; }
.caption { color: var(--muted); font-size: 13px; margin: 0 0 8px; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding-top: 10px; }
@media print { body { background: #fff; } main { box-shadow: none; padding: 0; } h2 { break-after: avoid; }
  .chart, table { break-inside: avoid; } }
"""


def _fired(v: Any) -> str:
    if v is True:
        return '<span class="yes">yes</span>'
    if v is False:
        return '<span class="no">no</span>'
    return '<span class="unknown">unknown</span>'


def _signal_value(s: dict[str, Any]) -> str:
    v = s.get("value")
    if v is None:
        return '<span class="unknown">not measured</span>'
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.3g}"
    return f"{v:,.0f}"


_SIGNAL_NAMES = {
    "concurrent_training_gpus": "GPUs running training-shaped work at once",
    "size_alone": "Strong training-shaped GPUs (size alone)",
    "shared_workload_gpus": "GPUs under one workload id across nodes",
    "duration_at_size_s": "Time at that size (seconds)",
    "util_mean": "Mean GPU utilization",
    "power_fraction_of_limit": "Mean power as a fraction of the limit",
    "sm_active_mean": "Mean SM activity",
    "tensor_active_mean": "Mean tensor-core activity",
    "synchrony_corr": "Coupling across nodes (median pair correlation, common shocks removed)",
    "duty_cycle": "Share of the span at size actually at size",
    "infiniband_bytes_per_s": "East-west traffic per node (InfiniBand/RoCE and Ethernet)",
    "memory_footprint_cv": "Spread of GPU memory used across the run's GPUs",
}


def _coupling_note(s: dict[str, Any]) -> str:
    """The coupling signal's note: state, the scale that decided, and each scale's support."""
    scales = s.get("scales") or {}
    parts = [f"state: {s.get('state', 'unknown')}"]
    if s.get("decided_by"):
        parts.append(f"decided by {str(s['decided_by']).replace('_', ' ')}")
    for name, c in sorted(scales.items()):
        removed = c.get("common_share_removed")
        parts.append(
            f"{name.replace('_', ' ')}: r={c.get('corr')} (all episodes {c.get('corr_all_episodes')}), "
            f"z={c.get('z')}, {c.get('units')} nodes x {c.get('points')} points, {c.get('episodes')} episodes"
            + ("" if removed is None else f", {removed:.0%} of points masked as common")
        )
    if s.get("note"):
        parts.append(str(s["note"]))
    return "; ".join(parts)


def _threshold_sentence(lo: float, hi: float, thresholds: Sequence[tuple[float, str]]) -> str:
    below = [(v, n) for v, n in thresholds if hi < v]
    above = [(v, n) for v, n in thresholds if lo >= v]
    parts = []
    if above:
        v, n = above[-1]
        parts.append(f"at or above the {_sci(v)} FLOP <em>{_e(n)}</em> threshold")
    straddle = [(v, n) for v, n in thresholds if lo < v <= hi]
    if straddle:
        parts.append("its range spans " + ", ".join(f"{_sci(v)} (<em>{_e(n)}</em>)" for v, n in straddle))
    if below:
        v, n = below[0]
        parts.append(f"below the {_sci(v)} FLOP <em>{_e(n)}</em> threshold")
    return "; ".join(parts)


def render(data: ReportData, options: ReportOptions, generated_ms: int, version: str) -> str:
    """The report as one HTML document."""
    f = data.finding
    tenants = data.tenants
    tenant_html = ", ".join(f"<strong>{_e(t)}</strong>" for t in tenants)
    started = _parse_rfc3339_ms(f.get("started_at")) or data.span_from_ms
    detected = _parse_rfc3339_ms(f.get("detected_at")) or started
    ev = f.get("evidence") or {}
    last_end = _parse_rfc3339_ms(ev.get("last_window_end")) or detected
    sev = str(f.get("severity", "low"))
    flop = f.get("flop_estimate")
    lo_cum, hi_cum = data.flop_cum[-1] if data.flop_cum else (0.0, 0.0)
    models = ev.get("gpu_models") or {}
    model_text = ", ".join(f"{n:,} × {_e(m)}" for m, n in models.items()) if models else "GPUs"
    marks = [(started, "run started"), (detected, "detected")]

    if flop:
        flop_text = (
            f"Estimated compute of the run until {_e(_utc(last_end))}: <strong>{_sci(flop[0])} to {_sci(flop[1])} "
            f"FLOP</strong>, {_threshold_sentence(flop[0], flop[1], options.thresholds)}."
        )
    else:
        why = (ev.get("flop") or {}).get("unavailable") or "the GPU model's peak throughput is not known"
        flop_text = f"The compute of the run could not be estimated: {_e(why)}."
    linked = ""
    if len(tenants) > 1:
        linked = (
            f" The tenants {tenant_html} were linked into one run because their load moved together "
            "(see “Linked tenants” below)."
        )
    plain = (
        f"Tenant {tenant_html} has been running a large training job on "
        f"<strong>{int(f.get('gpus', 0)):,} GPUs</strong> "
        f"({model_text}) across <strong>{int(f.get('nodes', 0)):,} nodes</strong> since "
        f"<strong>{_e(_utc(started))}</strong>. gpuaudit detected it at <strong>{_e(_utc(detected))}</strong>, "
        f"{_duration(detected - started)} after it started, and its latest evidence runs to "
        f"{_e(_utc(last_end))}. {flop_text}{linked}"
    )
    if ev.get("severity_reason"):
        plain += f" Severity <strong>{_e(sev)}</strong>: {_e(ev['severity_reason'])}."
    if ev.get("score_explained"):
        plain += f" Its score ({_e(f.get('score'))}) is {_e(ev['score_explained'])}."

    op = f.get("opacity") or {}
    reasons = op.get("reasons") or []
    by_tenant = ev.get("opacity_by_tenant") or {}
    eu = f.get("end_use_risk")

    facts = [
        (f"{int(f.get('gpus', 0)):,}", "GPUs at peak"),
        (f"{int(f.get('nodes', 0)):,}", "nodes"),
        (f"{float(f.get('gpu_hours', 0)):,.0f}", "GPU-hours in the run"),
        (f"{float(op.get('score', 0)):.2f}", "opacity score (0 = transparent, 1 = opaque)"),
    ]
    if eu is not None:
        facts.append((f"{float(eu.get('score', 0)):.2f}", "end-use risk (0 = nothing of concern known)"))

    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing may be fetched: no scripts, no images or fonts from anywhere, styles inline only.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        'img-src data:">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gpuaudit evidence report {_e(f.get('id'))}: {_e(', '.join(tenants))}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        '<header class="top">',
        '<p class="kicker">gpuaudit evidence report</p>',
        f"<h1>Large training run by {_subject(ev.get('levels'), len(tenants) > 1)} "
        f'<span class="badge sev-{_e(sev)}">{_e(sev)}</span></h1>',
        f'<p class="meta">Finding <code>{_e(f.get("id"))}</code> · kind <code>{_e(f.get("kind"))}</code> · '
        f"detector score {float(f.get('score', 0)):.2f} · report generated {_e(_utc(generated_ms))} by "
        f"gpuaudit {_e(version)}</p>",
        "</header>",
        "<h2>The finding in plain words</h2>",
        f'<p class="summary">{plain}</p>',
        '<div class="facts">',
        *(f'<div class="fact"><div class="v">{v}</div><div class="k">{_e(k)}</div></div>' for v, k in facts),
        "</div>",
        *_set_by_section(ev.get("severity_set_by")),
        "<h2>Why the tenant counts as opaque</h2>",
    ]
    if reasons:
        parts.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>")
    else:
        parts.append("<p>No opacity reasons were recorded.</p>")
    if len(by_tenant) > 1:
        parts.append("<table><tr><th>tenant</th><th class=num>opacity</th><th>reasons</th></tr>")
        for t, o in by_tenant.items():
            parts.append(
                f"<tr><td>{_e(t)}</td><td class=num>{float(o.get('score', 0)):.2f}</td>"
                f"<td>{_e('; '.join(o.get('reasons', [])))}</td></tr>"
            )
        parts.append("</table>")
    parts += _end_use_section(eu, ev.get("end_use_risk_by_tenant") or {})
    for t in tenants:
        known = options.tenant_facts.get(t)
        if known:
            parts.append(f"<h3>What the tenants file records about {_e(t)}</h3><table>")
            parts.extend(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in known.items())
            parts.append("</table>")

    parts += [
        "<h2>GPUs in use over time</h2>",
        f'<p class="caption">GPUs running the tenant’s work, averaged over {_duration(data.bucket_ms)} steps '
        "(time-weighted), and the GPU time attributed to it expressed as whole GPUs. The dashed red line is the "
        "detector’s size threshold.</p>",
        chart_gpus(data, marks, options.min_gpus),
        "<h2>Utilization across the tenant’s nodes</h2>",
        f'<p class="caption">Mean utilization of the GPUs running the tenant’s work, '
        f"{'one row per node' if data.heat_nodes_per_row == 1 else f'one row per {data.heat_nodes_per_row} nodes'}"
        f" ({data.nodes:,} nodes), {_duration(data.bucket_ms)} per column. A training job shows as a solid "
        "dark block: every node busy at once.</p>",
        chart_heatmap(data, marks),
        "<h2>Cumulative compute against the thresholds</h2>",
        f'<p class="caption">Estimated floating-point operations of the tenant’s GPUs since '
        f"{_e(_utc(data.span_from_ms))}, recomputed from the statements in this report: peak dense BF16 "
        "throughput of the GPU model × measured activity × attributed GPU time × model FLOP utilization "
        f"{options.mfu[0]:g} to {options.mfu[1]:g}. Now {_sci(lo_cum)} to {_sci(hi_cum)} FLOP.</p>",
        chart_flop(data, options, marks),
    ]
    if data.flop_unavailable_gpu_s > 0:
        parts.append(
            f'<p class="caption">{data.flop_unavailable_gpu_s / 3600:,.1f} GPU-hours have no estimate (GPU model of '
            "unknown peak, or no activity reading); they are not counted above.</p>"
        )
    proj = ev.get("projection") or {}
    if proj.get("total_after_30_days"):
        lo30, hi30 = proj["total_after_30_days"]
        parts.append(
            f"<p>If the run keeps its latest rate it reaches {_sci(lo30)} to {_sci(hi30)} FLOP after 30 days "
            f"({_e(proj.get('note', 'a projection, not a measurement'))}).</p>"
        )

    signals = ev.get("signals") or {}
    if signals:
        parts += [
            "<h2>What the detector measured</h2>",
            "<table><tr><th>signal</th><th class=num>measured</th><th class=num>threshold</th><th>unit</th>"
            "<th>met</th><th>note</th></tr>",
        ]
        for name, s in signals.items():
            thr = s.get("threshold")
            note = _coupling_note(s) if name == "synchrony_corr" else s.get("note", "")
            parts.append(
                f"<tr><td>{_e(_SIGNAL_NAMES.get(name, name))}</td><td class=num>{_signal_value(s)}</td>"
                f"<td class=num>{'' if thr is None else _e(f'{thr:,}')}</td><td>{_e(s.get('unit', ''))}</td>"
                f"<td>{_fired(s.get('fired'))}</td><td>{_e(note)}</td></tr>"
            )
        parts.append("</table>")
        if ev.get("memory_note"):
            parts.append(f'<p class="caption">{_e(ev["memory_note"])}.</p>')
    members = ev.get("members") or []
    if len(members) > 1:
        parts += [
            "<h3>Members of the run</h3>",
            "<table><tr><th>tenant</th><th class=num>share</th><th class=num>GPUs</th>"
            "<th class=num>GPU-hours</th><th class=num>opacity</th><th class=num>end-use risk</th>"
            "<th>material (can set the severity)</th></tr>",
        ]
        for m in members:
            op = m.get("opacity") or {}
            risk = m.get("end_use_risk") or {}
            parts.append(
                f"<tr><td>{_e(m.get('tenant'))}</td><td class=num>{float(m.get('share', 0)):.0%}</td>"
                f"<td class=num>{_e(m.get('gpus'))}</td><td class=num>{_e(m.get('gpu_hours'))}</td>"
                f"<td class=num>{_e(op.get('score'))}</td><td class=num>{_e(risk.get('score', 'n/a'))}</td>"
                f"<td>{'yes' if m.get('material') else 'no'}</td></tr>"
            )
        parts.append("</table>")
    link = ev.get("linked_tenants")
    if link:
        parts += [
            "<h3>Linked tenants</h3>",
            f"<p>{_e(link.get('how', ''))}</p><table><tr><th>tenants</th><th class=num>correlation</th>"
            "<th class=num>points</th><th class=num>windows</th><th class=num>z</th><th>scale</th>"
            "<th class=num>common share removed</th></tr>",
        ]
        for p in link.get("pairs", []):
            removed = p.get("common_share_removed")
            parts.append(
                f"<tr><td>{_e(' + '.join(p.get('tenants', [])))}</td><td class=num>{_e(p.get('corr'))}</td>"
                f"<td class=num>{_e(p.get('points'))}</td><td class=num>{_e(p.get('windows', ''))}</td>"
                f"<td class=num>{_e(p.get('z'))}</td><td>{_e(str(p.get('scale', '')).replace('_', ' '))}</td>"
                f"<td class=num>{'n/a' if removed is None else f'{removed:.0%}'}</td></tr>"
            )
        parts.append("</table>")

    parts += _verify_section(data, options)
    parts += _statements_section(data, options)
    parts.append(
        "<footer>Generated by gpuaudit from the collector’s store. Each GPU node signs one statement per window "
        "(an in-toto Statement in a DSSE envelope, Ed25519) with a key enrolled at the collector; statements are "
        "hash-chained per key and logged in an RFC 9162 transparency log. This report summarises them; the signed "
        "statements themselves are the evidence.</footer>"
    )
    parts.append("</main></body></html>")
    return "\n".join(p for p in parts if p)


def _subject(levels: Any, several: bool) -> str:
    """Who ran it, by the finding's levels on both axes: "an opaque tenant of end-use concern"."""
    lv = levels if isinstance(levels, dict) else {}
    opaque = lv.get("opacity", "opaque") in ("opaque", "partly_opaque")
    concern = lv.get("end_use") in ("elevated", "high")
    adj = "opaque " if opaque else "" if concern else "transparent "
    head = f"{adj}tenants" if several else f"{'an' if opaque else 'a'} {adj}tenant"
    return head + (" of end-use concern" if concern else "")


def _set_by_section(set_by: Any) -> list[str]:
    """Which member, axes and reasons set the severity (``evidence.severity_set_by``)."""
    if not isinstance(set_by, dict):
        return []
    axes = {"opacity": "opacity", "end_use": "end-use risk"}
    named = [axes.get(a, a) for a in set_by.get("axes") or []]
    out = ["<h2>What set the severity</h2>"]
    if not named:
        out.append(
            f"<p>Neither axis raised it: every material member is transparent and of no end-use concern; "
            f"the member that matters most is <strong>{_e(set_by.get('tenant'))}</strong>.</p>"
        )
        return out
    o = set_by.get("opacity") or {}
    u = set_by.get("end_use") or {}
    out.append(
        f"<p>The {' and the '.join(named)} of <strong>{_e(set_by.get('tenant'))}</strong>: opacity "
        f"{_e(o.get('score'))} ({_e(str(o.get('level', '')).replace('_', ' '))}, alone {_e(o.get('severity'))}), "
        f"end-use risk {_e(u.get('score'))} ({_e(u.get('level'))}, alone {_e(u.get('severity'))}"
        + (f"; {_e(u['floor'])}" if u.get("floor") else "")
        + ").</p>"
    )
    if set_by.get("reasons"):
        out.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in set_by["reasons"]) + "</ul>")
    return out


def _end_use_section(eu: Any, by_tenant: dict[str, Any]) -> list[str]:
    """End-use risk: reasons, the screening (list, its date, hits) and what a hit means."""
    out = ["<h2>End-use risk</h2>"]
    if not isinstance(eu, dict):
        out.append("<p>End-use risk was not assessed for this finding (it was raised before the collector did).</p>")
        return out
    reasons = eu.get("reasons") or []
    if reasons:
        out.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>")
    else:
        out.append(
            "<p>Nothing of end-use concern is recorded: no country of concern, no screening hit, no "
            "declared use the run contradicts.</p>"
        )
    if len(by_tenant) > 1:
        out.append("<table><tr><th>tenant</th><th class=num>end-use risk</th><th>reasons</th></tr>")
        for t, r in by_tenant.items():
            out.append(
                f"<tr><td>{_e(t)}</td><td class=num>{float(r.get('score', 0)):.2f}</td>"
                f"<td>{_e('; '.join(r.get('reasons', [])))}</td></tr>"
            )
        out.append("</table>")
    scr = eu.get("screening") or {}
    if scr.get("list"):
        screened = ", ".join(scr.get("screened") or []) or "no names"
        out.append(
            f"<h3>Restricted-party screening</h3><p>Screened ({_e(screened)}) against "
            f"<code>{_e(scr.get('list'))}</code> dated <strong>{_e(scr.get('list_date'))}</strong>"
            + (f" (SHA-256 <code class=digest>{_e(scr.get('list_sha256'))}</code>)" if scr.get("list_sha256") else "")
            + ".</p>"
        )
    else:
        out.append("<h3>Restricted-party screening</h3>")
    if scr.get("warning"):
        out.append(f"<p><strong>Warning:</strong> {_e(scr['warning'])}.</p>")
    hits = scr.get("hits") or []
    if hits:
        out.append(
            "<table><tr><th>whose name</th><th>name screened</th><th>list</th><th>entry</th><th>name matched</th>"
            "<th class=num>score</th></tr>"
        )
        for h in hits:
            url = h.get("source_information_url") or ""
            entry = f"{_e(h.get('entry_id'))}: {_e(h.get('entry_name'))}" + (f"<br>{_e(url)}" if url else "")
            out.append(
                f"<tr><td>{_e(h.get('role'))}</td><td>{_e(h.get('screened_name'))}</td><td>{_e(h.get('list'))}</td>"
                f"<td>{entry}</td><td>{_e(h.get('matched_name'))}</td>"
                f"<td class=num>{float(h.get('score', 0)):.2f}</td></tr>"
            )
        out.append("</table>")
        out.append(
            "<p>A hit is a reason to look, not a verdict: the same name may belong to another party. Check the "
            "entry on its list's own page (the address above) against what the tenant file records (addresses, "
            "registration numbers, owners) before acting, and record what was decided.</p>"
        )
    elif scr.get("list"):
        out.append("<p>No name matched an entry of the list.</p>")
    return out


def _statements_section(data: ReportData, options: ReportOptions) -> list[str]:
    gaps = sum(1 for k in data.keys if not k.contiguous)
    out = [
        "<h2>Appendix: the signed statements behind this report</h2>",
        f"<p>{data.statements:,} signed statements from {len(data.keys):,} node keys name the tenant"
        f"{'s' if len(data.tenants) > 1 else ''} between {_e(_utc(data.span_from_ms))} and "
        f"{_e(_utc(data.span_to_ms))} ({data.statements_scanned:,} statements of all tenants were read for that "
        "span). Each row is one node key with its first and last statement in the span and the SHA-256 digest of "
        "their signed bytes (the DSSE pre-authentication encoding). "
        + (
            "Every key’s statements are consecutive in its chain."
            if not gaps
            else f"{gaps} key(s) signed statements in the span that do not name the tenant between their first "
            "and last: the column “consecutive” says which."
        )
        + "</p>",
        f'<p>Digest of the whole set: <code class="digest">sha256:{data.evidence_sha256}</code><br>'
        '<span class="meta">SHA-256 of the sorted lines “key_id seq digest”, one per statement, each ending in a '
        "line feed.</span></p>",
        '<table class="statements"><tr><th>node</th><th>key id</th><th class=num>statements</th>'
        "<th class=num>seqs</th><th>windows (UTC)</th><th>first and last statement digest</th>"
        "<th>consecutive</th></tr>",
    ]
    for k in data.keys[: options.max_keys]:
        t0 = dt.datetime.fromtimestamp(k.first_start_ms / _MS, tz=dt.UTC)
        t1 = dt.datetime.fromtimestamp(k.last_end_ms / _MS, tz=dt.UTC)
        windows = f"{t0:%Y-%m-%d %H:%M} – " + (f"{t1:%H:%M}" if t1.date() == t0.date() else f"{t1:%Y-%m-%d %H:%M}")
        out.append(
            f"<tr><td class='mono nowrap'>{_e(k.node_id)}</td><td class='mono digest key'>{_e(k.key_id)}</td>"
            f"<td class=num>{k.count:,}</td><td class='num nowrap'>{k.first_seq}–{k.last_seq}</td>"
            f"<td class=nowrap>{_e(windows)}</td>"
            f"<td class='mono digest'>{k.first_seq}: {_e(k.first_digest)}<br>{k.last_seq}: {_e(k.last_digest)}</td>"
            f"<td>{'yes' if k.contiguous else '<span class=yes>no</span>'}</td></tr>"
        )
    out.append("</table>")
    if len(data.keys) > options.max_keys:
        out.append(
            f"<p>… and {len(data.keys) - options.max_keys:,} more keys, left out to keep this file small; "
            "the export above contains all of them.</p>"
        )
    return out


def _verify_section(data: ReportData, options: ReportOptions) -> list[str]:
    store = f" {options.store_args}" if options.store_args else ""
    since = _rfc3339(data.span_from_ms)
    until = _rfc3339(data.span_to_ms)
    cmds = []
    for t in data.tenants:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in t)
        cmds.append(
            f"gpuaudit-collector export{store} --tenant {_shell(t)} \\\n    --since {since} --until {until} "
            f"--out bundle-{safe}.json\ngpuaudit-verify bundle-{safe}.json"
        )
    return [
        "<h2>How to verify</h2>",
        "<p>Anyone can check the statements without trusting this report or the collector: the collector’s "
        "operator exports them as a bundle (the envelopes exactly as signed, the nodes’ enrolled public keys, a "
        "signed checkpoint of the transparency log and an inclusion proof for every statement), and "
        "<code>gpuaudit-verify</code> checks it offline: every signature, every chain, every window, the energy "
        "counters and the inclusion proofs. It prints GPU-hours and energy per GPU serial and tenant, which "
        "should match this report. Exit status 0 means verified.</p>",
        f"<pre>{_e(chr(10).join(cmds))}</pre>",
        "<p>A chip vendor or regulator who kept an earlier checkpoint adds "
        "<code>--previous-checkpoint FILE</code> to both commands to prove the log was only ever appended to. "
        "To check that the bundle holds the statements listed in the appendix, compare the digests there with "
        "the bundle’s entries.</p>",
    ]


def _shell(s: str) -> str:
    if s and all(c.isalnum() or c in "-_.:@/" for c in s):
        return s
    return "'" + s.replace("'", "'\"'\"'") + "'"


def build_report(
    store: ReportStore, finding_id: str, options: ReportOptions, *, generated_ms: int, version: str
) -> tuple[str, ReportData]:
    """The HTML report of ``finding_id`` and the data it shows."""
    data = collect(store, finding_id, options)
    return render(data, options, generated_ms, version), data


def write_report(path: Path, text: str) -> None:
    """Write atomically (a half-written report must never be forwarded)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def tenant_facts(directory: Iterable[Any]) -> dict[str, dict[str, str]]:
    """What a tenants file (``collector.tenants.TenantDirectory``) records, per tenant, as text."""
    out: dict[str, dict[str, str]] = {}
    for t in directory:
        facts = {}
        for f in dataclasses.fields(t):
            name, value = f.name, getattr(t, f.name)
            if name == "id" or value is None or value == ():
                continue
            if isinstance(value, tuple):  # parents, beneficial owners (Tenants v1.1)
                text = "; ".join(_fact_item(v) for v in value)
            else:
                text = "yes" if value is True else "no" if value is False else str(value)
            facts[name.replace("_", " ")] = text
        out[t.id] = facts
    return out


def _fact_item(v: Any) -> str:
    name = getattr(v, "name", str(v))
    more = [str(x) for x in (getattr(v, "country", None),) if x]
    share = getattr(v, "share", None)
    if share is not None:
        more.append(f"{share:.0%}")
    return f"{name} ({', '.join(more)})" if more else str(name)
