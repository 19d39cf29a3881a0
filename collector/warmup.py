"""Warm start: before a collector detects, it replays the stored windows its detector needs.

The detector's decisions reach back ``history_span_ms`` (collector/detect/runs.py):
synchrony pools several windows, account links need a run of windows, a run is raised once
it has held its size long enough. A collector that restarts, or that takes over detection on
a shared store when the detecting collector dies (collector/follow.py), would otherwise
start with an empty history and raise a training run already in progress only after
rebuilding it. So at start-up (detection inline) and on taking the detection lease (detection
over the log), the collector first replays, in log order, the stored windows that end within
``lookback_ms`` of the recent ones, into a detector that knows the findings already stored
(``DetectorEngine.warm_start``): a stored finding whose run is still going is continued under
its id and detection time, never raised again, and no new finding is raised from the part of
the replay that has less than a full history behind it.

Where to start without reading the whole log: leaves are in commit order and a statement is
received (``received_ms``, the collector's clock) before it commits, so received times rise
along the log. A binary search over single leaves finds the first one received after the
look-back, less ``allowed_lateness_s`` (agent clocks, several collectors' batches); windows
are then filtered by their own end. Where received times tell nothing (a trace replayed
faster than real time) the search starts earlier, never later. Statements whose payloads
aged into aggregates (collector/retention.py) are skipped: they are older than any look-back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from attestation.errors import SchemaError
from attestation.statement import UsageWindow, parse_statement
from collector.detect.config import DetectConfig
from collector.detect.findings import KIND_LARGE_TRAINING, Finding, parse_rfc3339_ms, rfc3339_ms
from collector.detect.opacity import Opacity
from collector.detect.runs import history_span_ms, run_gap_ms
from collector.store.base import FindingRecord, Store

_logger = logging.getLogger(__name__)

_MS = 1000
_PAGE_LEAVES = 2000
_TAIL_LEAVES = 500  # newest leaves read to find the newest window and the window length


def lookback_ms(config: DetectConfig, window_ms: int) -> int:
    """Event time replayed before the newest stored window's end, for windows of ``window_ms``.

    The detector's history span; plus the gap a run may have (``run_gap_s``), so that a run
    silent at the start of the span is still known as the same run; plus
    ``allowed_lateness_s``, since the newest windows had not yet closed when the collector
    stopped.
    """
    gap_ms = run_gap_ms(config, window_ms)
    return history_span_ms(config, window_ms) + gap_ms + config.allowed_lateness_s * _MS


@dataclass(frozen=True)
class WarmupPlan:
    """Which leaves a warm start replays: ``start_leaf`` up to ``end_leaf`` (the log's size when
    planned, where following the log goes on), windows ending after ``since_ms`` only (the
    look-back before the recent windows' end)."""

    start_leaf: int
    end_leaf: int
    since_ms: int
    window_ms: int
    complete: bool  # the replay starts at the store's first window: nothing before it is missing


@dataclass(frozen=True)
class WarmupReport:
    plan: WarmupPlan
    windows: int  # fed to the detector
    older: int  # stored windows in the leaves read that end before the look-back
    pruned: int  # leaves read whose payloads aged into aggregates
    continued: int  # stored findings the detector may continue
    seconds: float


class WarmupTarget(Protocol):
    """What a warm start feeds: collector.server.FindingSink."""

    def warm_start(self, records: Sequence[FindingRecord], priors: Sequence[Finding], *, complete: bool) -> None: ...

    def detect(self, window: UsageWindow) -> None: ...


def _first_leaf_received_from(store: Store, received_ms: int, size: int) -> int:
    """The first leaf whose statement was received at or after ``received_ms`` (binary search;
    a leaf whose payload aged out counts as earlier: retention ages the oldest windows)."""
    lo, hi = 0, size
    while lo < hi:
        mid = (lo + hi) // 2
        rows = store.log_statements(mid, mid + 1)
        if not rows or rows[0][1].received_ms < received_ms:
            lo = mid + 1
        else:
            hi = mid
    return lo


def plan(store: Store, config: DetectConfig) -> WarmupPlan:
    """Choose the leaves to replay, reading the log's newest leaves and O(log n) single leaves."""
    size = store.log_size()
    if size == 0:
        return WarmupPlan(0, 0, 0, 0, complete=True)
    tail = store.log_statements(max(0, size - _TAIL_LEAVES), size)
    if not tail:  # even the newest payloads aged out: there is nothing to replay
        return WarmupPlan(size, size, 0, 0, complete=False)
    # The median window end of the newest leaves stands for the present: one node whose clock
    # runs far ahead cannot push the look-back past everyone else's windows (the median lags
    # the newest window by a few windows on a small site, which only replays a little more).
    ends = sorted(rec.end_ms for _, rec in tail)
    recent_end = ends[len(ends) // 2]
    newest_received = max(rec.received_ms for _, rec in tail)
    window_ms = max(rec.end_ms - rec.start_ms for _, rec in tail)
    back = lookback_ms(config, window_ms)
    since = recent_end - back
    received_from = min(since, newest_received - back) - config.allowed_lateness_s * _MS
    start = _first_leaf_received_from(store, received_from, size)
    complete = False
    if start == 0:
        first = store.log_statements(0, 1)
        complete = bool(first) and first[0][1].end_ms > since
    return WarmupPlan(start, size, since, window_ms, complete)


def stored_finding(rec: FindingRecord) -> Finding | None:
    """A stored ``large_training`` finding as the detector wrote it (None for other kinds, or
    one that cannot be read back). ``updated_at_ms`` is the end of the last window it holds."""
    if rec.kind != KIND_LARGE_TRAINING:
        return None
    try:
        doc = json.loads(rec.json_text)
        evidence = doc.get("evidence") or {}
        last = evidence.get("last_window_end")
        flop = doc.get("flop_estimate")
        op = doc.get("opacity") or {}
        return Finding(
            id=rec.finding_id,
            kind=rec.kind,
            tenant=rec.tenant,
            tenants=tuple(str(t) for t in doc.get("tenants") or (rec.tenant,)),
            severity=rec.severity,
            started_at_ms=rec.started_ms,
            detected_at_ms=rec.detected_ms,
            updated_at_ms=parse_rfc3339_ms(last) if last else rec.detected_ms,
            gpus=int(doc["gpus"]),
            nodes=int(doc["nodes"]),
            gpu_hours=float(doc["gpu_hours"]),
            flop_estimate=None if flop is None else (float(flop[0]), float(flop[1])),
            score=float(doc.get("score", 0.0)),
            opacity=Opacity(float(op.get("score", 0.0)), tuple(str(r) for r in op.get("reasons", ()))),
            evidence=dict(evidence),
        )
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        _logger.warning(
            "stored finding %s cannot be read back (%s); a replayed run will not continue it", rec.finding_id, exc
        )
        return None


def replay(store: Store, p: WarmupPlan, observe: Callable[[UsageWindow], None]) -> tuple[int, int, int]:
    """Feed ``observe`` the planned windows in log order; return (fed, older, pruned)."""
    fed = older = pruned = 0
    index = p.start_leaf
    while index < p.end_leaf:
        end = min(index + _PAGE_LEAVES, p.end_leaf)
        rows = store.log_statements(index, end)
        pruned += (end - index) - len(rows)
        for leaf, rec in rows:
            if rec.end_ms <= p.since_ms:
                older += 1
                continue
            try:
                window = parse_statement(rec.payload)  # verified at ingest
            except (SchemaError, ValueError, RecursionError) as exc:  # pragma: no cover - stored bytes are valid
                _logger.error("leaf %d cannot be parsed for the warm start: %s", leaf, exc)
                continue
            observe(window)
            fed += 1
        index = end
    return fed, older, pruned


def warm_up(store: Store, target: WarmupTarget, config: DetectConfig) -> WarmupReport:
    """Start ``target``'s detector over and replay the look-back into it. Blocking."""
    t0 = time.monotonic()
    p = plan(store, config)
    records = store.findings()
    priors: list[Finding] = []
    if p.end_leaf > p.start_leaf:
        gap_ms = run_gap_ms(config, p.window_ms)
        readable = [f for f in map(stored_finding, records) if f is not None]
        # A finding folded into its linked group's (evidence "supersedes") is not continued.
        superseded = {str(i) for f in readable for i in f.evidence.get("supersedes", ())}
        priors = [f for f in readable if f.id not in superseded and f.updated_at_ms + gap_ms >= p.since_ms]
    target.warm_start(records, priors, complete=p.complete)
    fed, older, pruned = replay(store, p, target.detect)
    report = WarmupReport(p, fed, older, pruned, len(priors), time.monotonic() - t0)
    if p.end_leaf > p.start_leaf:
        _logger.info(
            "warm start: replayed %d windows ending after %s (leaves %d..%d; %d older, %d aged out) "
            "with %d stored finding(s) that may continue, in %.1f s",
            fed,
            rfc3339_ms(p.since_ms),
            p.start_leaf,
            p.end_leaf,
            older,
            pruned,
            len(priors),
            report.seconds,
        )
    return report


__all__ = ["WarmupPlan", "WarmupReport", "WarmupTarget", "lookback_ms", "plan", "replay", "stored_finding", "warm_up"]
