"""Stored findings that a replayed run continues (the detector's warm start).

After a restart or a detection takeover the engine replays the stored windows of its
look-back (collector/warmup.py) given the ``large_training`` findings already stored, its
*priors*. A replayed run that started while a prior was being recorded continues it: the
same id, ``started_at`` and ``detected_at``, and the prior's totals up to its
``updated_at_ms``, read back from its evidence, so that they continue rather than restart
or count twice. The engine keeps the priors and its findings; these functions only read
them and fill a run.
"""

from __future__ import annotations

from collections.abc import Iterable

from collector.detect import flops
from collector.detect.config import DetectConfig
from collector.detect.findings import Finding
from collector.detect.runs import ModelUse, Run

_MS = 1000
_SECONDS_PER_HOUR = 3600.0


def continues(p: Finding, run: Run, gap_ms: int) -> bool:
    """Did ``run`` start while ``p`` was being recorded (within the gap a run may have)?"""
    return p.started_at_ms - gap_ms <= run.start_ms <= p.updated_at_ms + gap_ms


def resume(priors: Iterable[Finding], run: Run, members: list[str], gap_ms: int) -> Finding | None:
    """Mark as counted what the priors ``run`` continues already hold; return the prior of
    exactly ``members`` it continues (the latest started), if any."""
    tenants = set(members)
    exact: Finding | None = None
    for p in priors:
        if tenants.isdisjoint(p.tenants) or not continues(p, run, gap_ms):
            continue
        run.counted_to_ms = max(run.counted_to_ms, p.updated_at_ms)
        if set(p.tenants) == tenants and (exact is None or p.started_at_ms > exact.started_at_ms):
            exact = p
    return exact


def prior_for(priors: Iterable[Finding], run: Run, gap_ms: int) -> Finding | None:
    """The stored finding sharing most tenants with ``run`` that ``run`` continues, if any."""
    tenants = set(run.tenants)
    best: tuple[tuple[int, int, str], Finding] | None = None
    for p in priors:
        shared = len(tenants.intersection(p.tenants))
        if shared and continues(p, run, gap_ms):
            rank = (shared, p.started_at_ms, p.id)
            if best is None or rank > best[0]:
                best = (rank, p)
    return None if best is None else best[1]


def seed(run: Run, p: Finding, config: DetectConfig) -> None:
    """Make ``run`` the continuation of stored finding ``p``: its id, start and detection
    time, and its totals up to ``p.updated_at_ms`` (windows the run does not count again).

    The totals are read back from the finding's evidence (what ``build`` wrote); shares
    that the evidence gives only rounded (GPUs per model, each tenant's part) are
    apportioned, so sums and means continue, not restart."""
    ev = p.evidence
    sig = ev.get("signals", {})
    gpu_s = float(ev.get("gpu_seconds", p.gpu_hours * _SECONDS_PER_HOUR))
    run.start_ms = min(run.start_ms, p.started_at_ms)
    run.finding_id = p.id
    run.finding = run.emitted = p
    run.counted_to_ms = max(run.counted_to_ms, p.updated_at_ms)
    run.gpu_s += gpu_s
    run.windows += int(ev.get("windows_counted", 0))
    run.weak_counted_windows += int(ev.get("throttled_gpus_counted_windows", 0))
    at_size = int(ev.get("windows_at_size", 0))
    if at_size:
        duration_s = sig.get("duration_at_size_s", {}).get("value")
        large_start = p.started_at_ms if duration_s is None else p.updated_at_ms - int(duration_s * _MS)
        run.large_start_ms = large_start if run.large_start_ms is None else min(run.large_start_ms, large_start)
        run.large_last_end_ms = max(run.large_last_end_ms, p.updated_at_ms)
        run.large_windows += at_size
    run.peak_gpus = max(run.peak_gpus, float(p.gpus))
    run.peak_nodes = max(run.peak_nodes, p.nodes)
    for t in p.tenants:
        run.tenants.setdefault(t, 0.0)
    run.tenants[p.tenant] = run.tenants.get(p.tenant, 0.0) + gpu_s
    sync_max = sig.get("synchrony_corr", {}).get("max")
    if sync_max is not None:
        run.sync_max = sync_max if run.sync_max is None else max(run.sync_max, sync_max)
    run.merged_from.extend(ev.get("supersedes", ()))
    # Per model: GPU-seconds by the model's share of the run's GPUs; activity-weighted
    # GPU-seconds so that the FLOP estimate continues from the stored one.
    shares = {str(m): float(n) for m, n in ev.get("gpu_models", {}).items()}
    total = sum(shares.values())
    if shares and total <= 0:
        shares = dict.fromkeys(shares, 1.0)
        total = float(len(shares))
    known = 0.0
    for m, n in shares.items():
        peak = flops.lookup(m)
        if peak is not None:
            known += peak.bf16_dense_flops * gpu_s * n / total
    estimate = ev.get("flop", {}).get("estimate")
    if estimate and known > 0:
        activity = float(estimate[0]) / config.mfu_low / known
    else:
        busy = sig.get("sm_active_mean", {}).get("value") or sig.get("util_mean", {}).get("value")
        activity = 1.0 if busy is None else float(busy)
    for m, n in shares.items():
        mu = run.models.setdefault(m, ModelUse())
        mu.gpu_s += gpu_s * n / total
        mu.active_gpu_s += gpu_s * n / total * activity
    for name, key, scale in (
        ("util", "util_mean", 1000.0),
        ("power", "power_fraction_of_limit", 1.0),
        ("sm", "sm_active_mean", 1000.0),
        ("tensor", "tensor_active_mean", 1000.0),
    ):
        value = sig.get(key, {}).get("value")
        if value is not None:
            acc = run.sums.setdefault(name, [0.0, 0.0])
            acc[0] += float(value) * scale * gpu_s
            acc[1] += gpu_s
