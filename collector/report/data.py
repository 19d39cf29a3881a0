"""Gathering: the finding and its tenants' statements from the store, summarised for the charts.

The store holds only statements that were verified and schema-checked at ingest
(``collector.ingest``), so their payloads are read with ``json.loads`` and the fields the
charts need, without a second full schema parse (3x faster on the demo's 45,000
statements). A payload is only parsed when it names one of the tenants (a byte search
first). Charts are downsampled to at most ``max_time_buckets`` columns and
``max_heat_rows`` rows; the statements table has one row per node key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from collector.detect import flops
from collector.report.fmt import MINUTE_MS, MS, parse_ms, utc
from collector.report.options import ReportError, ReportOptions, ReportStore
from collector.store.base import FindingAction, WorkflowState, workflow_state

_logger = logging.getLogger(__name__)


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
    # None is "no data": no node signed a statement for that time. 0.0 is "not in use": the
    # statements of the span were read and none names the tenants.
    gpus_in_use: list[float | None]  # time-weighted mean GPUs running the tenants' work
    gpu_equivalents: list[float | None]  # attributed GPU time / bucket time
    # label, mean utilization 0..1 per bucket; None where the row's GPUs did not run the tenants'
    # work, which ``heat_covered`` tells apart: not in use (True) or no data (False).
    heat_rows: list[tuple[str, list[float | None]]]
    heat_nodes_per_row: int
    flop_cum: list[tuple[float, float]]  # cumulative (low, high) at each bucket's end
    flop_unavailable_gpu_s: float
    keys: list[KeySummary]
    statements: int
    statements_scanned: int
    evidence_sha256: str
    nodes: int
    # Per bucket: whether any node signed a statement covering it (False: no data).
    covered: list[bool] = field(default_factory=list)
    # Per heat-map row and bucket: whether one of the row's nodes signed a statement covering it.
    heat_covered: list[list[bool]] = field(default_factory=list)
    # The finding's workflow (acknowledge, assign, close, reopen), in recorded order, and the
    # state it leaves the finding in (collector.store.base.workflow_state).
    actions: list[FindingAction] = field(default_factory=list)
    workflow: WorkflowState = field(default_factory=WorkflowState)

    def no_data_runs(self) -> list[tuple[int, int]]:
        """The [first, last] bucket indexes of each run of buckets without data."""
        return false_runs(self.covered)


def false_runs(flags: list[bool]) -> list[tuple[int, int]]:
    """[first, last] index of each run of False in ``flags``."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, f in enumerate([*flags, True]):
        if not f and start is None:
            start = i
        elif f and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


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
    last_end = parse_ms((doc.get("evidence") or {}).get("last_window_end"))
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
    # The windows (start, end) each node signed a statement for, whoever's work it names:
    # time without any is "no data", not "not in use".
    signed: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for rec in store.iter_statements(window_from_ms=span_from, window_to_ms=span_to):
        scanned += 1
        signed[rec.node_id].add((rec.start_ms, rec.end_ms))
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
                unavailable_gpu_s += gpu_ms / MS
                continue
            done = peak.bf16_dense_flops * (active / 1000.0) * gpu_ms / MS
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
            f"between {utc(span_from)} and {utc(span_to)}",
            "Give the store of the collector that recorded the finding (--config or --db).",
        )

    # Time buckets: whole windows, at most max_time_buckets of them.
    window_ms = min((k.last_end_ms - k.first_start_ms) // max(k.count, 1) for k in keys.values()) or MINUTE_MS
    window_ms = max(window_ms, 1)
    span_from = span_from - span_from % window_ms
    total = max(actual_to - span_from, window_ms)
    per = max(1, math.ceil(total / window_ms / options.max_time_buckets))
    bucket_ms = per * window_ms
    n = math.ceil(total / bucket_ms)
    starts = [span_from + i * bucket_ms for i in range(n)]

    def bucket(t: int) -> int:
        return min(n - 1, max(0, (t - span_from) // bucket_ms))

    # The time of each bucket that some node signed a statement for: the union of the windows,
    # cut at the buckets' edges. Means are over that time, so a bucket half without data is not
    # drawn at half the GPUs.
    covered_ms = [0] * n
    merged: list[list[int]] = []
    for w0, w1 in sorted({w for ws in signed.values() for w in ws}):
        if merged and w0 <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], w1)
        else:
            merged.append([w0, w1])
    for w0, w1 in merged:
        at, until = max(w0, span_from), min(w1, span_from + n * bucket_ms)
        while at < until:
            edge = min(until, span_from + (bucket(at) + 1) * bucket_ms)
            covered_ms[bucket(at)] += edge - at
            at = edge

    in_use: list[float | None] = [None] * n
    equiv: list[float | None] = [None] * n
    lo_b = [0.0] * n
    hi_b = [0.0] * n
    for t, v in gpu_ms_in_use.items():
        b = bucket(t)
        in_use[b] = (in_use[b] or 0.0) + v / (covered_ms[b] or bucket_ms)
    for t, v in attributed_ms.items():
        b = bucket(t)
        equiv[b] = (equiv[b] or 0.0) + v / (covered_ms[b] or bucket_ms)
    for t, v in flop_lo.items():
        lo_b[bucket(t)] += v
    for t, v in flop_hi.items():
        hi_b[bucket(t)] += v

    def coverage(windows: Iterable[tuple[int, int]]) -> list[bool]:
        out = [False] * n
        for start, end in windows:
            for b in range(bucket(start), bucket(max(start, end - 1)) + 1):
                out[b] = True
        return out

    # A bucket some node signed a statement for, none naming the tenants, is 0 (not in use);
    # one no node signed anything for stays None (no data).
    covered = [c > 0 for c in covered_ms]
    for i in range(n):
        if covered[i]:
            in_use[i] = in_use[i] or 0.0
            equiv[i] = equiv[i] or 0.0
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
    rows_covered: list[list[bool]] = []
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
        rows_covered.append(coverage(w for node in group for w in signed.get(node, ())))
    _logger.info(
        "report %s: %d statements of %d in the span, %d keys, %d buckets of %d s",
        finding_id,
        len(lines),
        scanned,
        len(keys),
        n,
        bucket_ms // MS,
    )
    # A store without the workflow (a fake, an older interface) reports the finding open.
    read_actions = getattr(store, "finding_actions", None)
    actions: list[FindingAction] = list(read_actions(finding_id)) if callable(read_actions) else []
    return ReportData(
        actions=actions,
        workflow=workflow_state(actions),
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
        covered=covered,
        heat_covered=rows_covered,
    )
