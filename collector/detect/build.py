"""A run's finding: its subjects, severity, FLOP range and evidence, as of one window.

Subjects: a group finding lists every member tenant with its GPU-hours, share of the run,
opacity and end-use risk. The members holding at least ``material_share`` of the run's
GPU-seconds (and always the largest) are *material*; severity comes from them, on two axes
(docs/detection.md, "Subjects and severity"): how little is known about them (opacity) and
what is known that matters (end-use risk: a country of concern, a screening hit, a declared
use that training contradicts). The finding's ``tenant`` is the material member that matters
most for compliance (the one whose axes give the highest severity, then the highest score
on either axis, then the largest), not simply the largest. A run whose material members are
all transparent and of no end-use concern is at most ``low``, whatever else runs on the site
or was linked to it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from collector.detect import flops
from collector.detect.config import DetectConfig
from collector.detect.enduse import NO_RISK, EndUseConfig, EndUseRisk
from collector.detect.findings import KIND_LARGE_TRAINING, SEVERITIES, Finding, finding_id, rfc3339_ms
from collector.detect.opacity import Opacity
from collector.detect.runs import GroupUse, Run
from collector.screening import hit_order

_SECONDS_PER_HOUR = 3600.0
_SECONDS_PER_DAY = 86400.0


def _flop(run: Run, cfg: DetectConfig) -> tuple[tuple[float, float] | None, float | None, str | None, dict[str, Any]]:
    """FLOP: peak dense BF16 x activity-weighted GPU-seconds x MFU band; upper: FP8 peak x GPU-seconds."""
    known_active = 0.0
    upper = 0.0
    unknown_models: list[str] = []
    peaks: dict[str, dict[str, Any]] = {}
    for model, mu in sorted(run.models.items()):
        peak = flops.lookup(model)
        if peak is None:
            unknown_models.append(model)
            continue
        known_active += peak.bf16_dense_flops * mu.active_gpu_s
        upper += peak.upper_flops * mu.gpu_s
        peaks[model] = {
            "table_key": peak.key,
            "bf16_dense_flops": peak.bf16_dense_flops,
            "fp8_dense_flops": peak.fp8_dense_flops,
            "source": peak.source,
        }
    if unknown_models:
        return None, None, f"peak throughput unknown for GPU model(s): {', '.join(unknown_models)}", peaks
    return (cfg.mfu_low * known_active, cfg.mfu_high * known_active), upper, None, peaks


def _projection(run: Run, cfg: DetectConfig, flop_estimate: tuple[float, float] | None) -> dict[str, Any]:
    if run.last_rate_active_flops is None:
        return {"note": "unavailable: the rate needs every GPU model's peak", "per_day": None}
    lo_day = cfg.mfu_low * run.last_rate_active_flops * _SECONDS_PER_DAY
    hi_day = cfg.mfu_high * run.last_rate_active_flops * _SECONDS_PER_DAY
    mid_day = (lo_day + hi_day) / 2
    done_mid = 0.0 if flop_estimate is None else (flop_estimate[0] + flop_estimate[1]) / 2
    to_threshold: dict[str, float | None] = {}
    for name, th in (
        ("watch", cfg.flop_watch),
        ("flag", cfg.flop_flag),
        ("report", cfg.flop_report),
        ("report_high", cfg.flop_report_high),
    ):
        to_threshold[f"{name} {th:.0e}"] = (
            0.0 if done_mid >= th else (round((th - done_mid) / mid_day, 2) if mid_day > 0 else None)
        )
    return {
        "per_day": [lo_day, hi_day],
        f"total_after_{cfg.projection_days}_days": [
            (flop_estimate[0] if flop_estimate else 0.0) + lo_day * cfg.projection_days,
            (flop_estimate[1] if flop_estimate else 0.0) + hi_day * cfg.projection_days,
        ],
        "days_to_threshold_at_current_rate": to_threshold,
        "note": (
            f"if the run keeps its last window's rate ({run.last_gpus:.0f} GPUs): a projection, not a measurement"
        ),
    }


def _signal(value: float | None, threshold: float | None, unit: str) -> dict[str, Any]:
    return {
        "value": value,
        "threshold": threshold,
        "unit": unit,
        "fired": None if (value is None or threshold is None) else value >= threshold,
    }


def _signals(run: Run, cfg: DetectConfig, gpus: int, window_ms: int) -> dict[str, Any]:
    def mean(name: str, scale: float) -> float | None:
        acc = run.sums.get(name)
        if acc is None or acc[1] <= 0:
            return None
        return round(acc[0] / acc[1] / scale, 3)

    last = run.last
    util = mean("util", 1000.0)
    power = mean("power", 1.0)
    sm = mean("sm", 1000.0)
    tensor = mean("tensor", 1000.0)
    duration_s = (run.large_last_end_ms - (run.large_start_ms or run.start_ms)) / 1000
    duty = run.duty_cycle(window_ms)
    typical = statistics.median(run.at_size_gpus) if run.at_size_gpus else None
    coupling: dict[str, Any] = dict(run.coupling or {})
    synchrony = {
        **_signal(None if run.sync is None else round(run.sync, 3), None, "median pair correlation"),
        "fired": {"coupled": True, "uncoupled": False}.get(run.coupling_state),
        "state": run.coupling_state,
        "max": None if run.sync_max is None else round(run.sync_max, 3),
        "coupled_windows": run.coupled_windows,
        "uncoupled_windows": run.uncoupled_windows,
        "coupled_of_recent": [sum(run.recent_tests), len(run.recent_tests)],
        **coupling,
    }
    if run.coupling_state == "unknown":
        synchrony["note"] = "every node series flat or missing at both scales: the data cannot tell"
    elif run.coupling_state == "flat":
        synchrony["note"] = (
            f"not coupled, but the node series barely move (typical point below {cfg.coupling_flat_change:g} of "
            "full scale, as pinned GPUs read): nothing to measure, not evidence of independent nodes"
        )
    elif run.coupling_state == "pending":
        synchrony["note"] = "history still too short to measure coupling"
    ib = None if last is None else last.ib_bytes_per_s
    signals: dict[str, Any] = {
        "concurrent_training_gpus": {
            **_signal(float(gpus), cfg.min_gpus, "GPUs occupied by the run's training workloads (peak)"),
            "typical": None if typical is None else round(typical, 1),
        },
        "size_alone": {
            **_signal(float(0.0 if last is None else last.strong), cfg.size_alone_gpus, "strong training-shaped GPUs"),
            "note": "counts only where coupling could not be measured",
        },
        "shared_workload_gpus": {
            **_signal(
                float(0.0 if last is None else last.shared_workload_gpus), cfg.min_gpus, "GPUs under one workload id"
            ),
            "nodes": 0 if last is None else last.shared_workload_nodes,
            "note": "one workload id on several nodes: evidence where present, never required",
        },
        "duration_at_size_s": _signal(duration_s, cfg.min_duration_s, "s"),
        "duty_cycle": _signal(
            None if duty is None else round(duty, 3), cfg.min_duty_cycle, "share of the span at size"
        ),
        "util_mean": _signal(util, cfg.strong_util_permille / 1000, "fraction of time busy"),
        "power_fraction_of_limit": _signal(power, cfg.strong_power_permille / 1000, "mean power / limit"),
        "sm_active_mean": _signal(sm, cfg.min_sm_active_permille / 1000, "fraction"),
        "tensor_active_mean": {"value": tensor, "unit": "fraction", "fired": None},
        "synchrony_corr": synchrony,
        "infiniband_bytes_per_s": {
            "value": None if ib is None else round(ib),
            "unit": "median bytes/s per node, InfiniBand/RoCE and Ethernet, tx + rx",
            "nodes_reporting": 0 if last is None else last.ib_nodes,
            "fired": None if ib is None else ib >= cfg.ib_busy_bytes_per_s,
            "threshold": cfg.ib_busy_bytes_per_s,
            "note": "east-west traffic of multi-node training; near zero for single-node work",
        },
        "memory_footprint_cv": {
            "value": None if last is None or last.mem_cv is None else round(last.mem_cv, 3),
            "unit": "coefficient of variation of GPU memory used across the run's GPUs",
            "fired": None,
            "note": "a stable footprint across nodes fits one sharded job, and also replicas of one server",
        },
    }
    if run.coupling_state != "unknown":
        signals["size_alone"]["fired"] = None  # not used where coupling was measured
    for name, value in (("tensor_active_mean", tensor), ("sm_active_mean", sm)):
        if value is None:
            signals[name]["note"] = "not reported: unknown"
    if ib is None:
        signals["infiniband_bytes_per_s"]["note"] = "not reported: unknown"
    return signals


_OPACITY_LEVELS = ("transparent", "partly opaque", "opaque")


def _no_risk(tenant: str, start_ms: int) -> EndUseRisk:
    """``risk_of`` of a caller that does not assess end-use risk: nothing known."""
    return NO_RISK


def _end_use_config(cfg: DetectConfig) -> EndUseConfig:
    eu = getattr(cfg, "end_use", None)
    return eu if isinstance(eu, EndUseConfig) else EndUseConfig()


@dataclass(frozen=True)
class _MemberSeverity:
    """What one material member alone makes of the run's size/FLOP class, on both axes."""

    tenant: str
    share: float
    opacity: Opacity
    risk: EndUseRisk
    by_opacity: int
    by_end_use: int
    opacity_level: str
    end_use_level: str
    floor: str | None

    @property
    def severity(self) -> int:
        return max(self.by_opacity, self.by_end_use)

    @property
    def key(self) -> tuple[int, float, float, str]:
        """Which member matters most: severity, then either axis's score, then share."""
        return (self.severity, max(self.opacity.score, self.risk.score), self.share, self.tenant)


def _member(
    cfg: DetectConfig, magnitude: int, tenant: str, share: float, op: Opacity, risk: EndUseRisk
) -> _MemberSeverity:
    eu = _end_use_config(cfg)
    step = {0: 0, 1: max(0, magnitude - 1), 2: magnitude}
    o_cls = 0 if op.score < cfg.transparent_opacity_max else 2 if op.score >= cfg.opaque_opacity_min else 1
    r_level = risk.level(eu)
    r_sev = step[LEVEL_CLASS[r_level]]
    floor = None
    if risk.screening_hit and r_sev < SEVERITIES.index(eu.screening_floor):
        r_sev, floor = SEVERITIES.index(eu.screening_floor), f"at least {eu.screening_floor}: screening hit"
    elif risk.country_of_concern and r_sev < SEVERITIES.index(eu.country_floor):
        r_sev, floor = SEVERITIES.index(eu.country_floor), f"at least {eu.country_floor}: country of concern"
    return _MemberSeverity(
        tenant, share, op, risk, min(3, step[o_cls]), min(3, r_sev), _OPACITY_LEVELS[o_cls], r_level, floor
    )


LEVEL_CLASS = {"none": 0, "elevated": 1, "high": 2}


def _severity(
    cfg: DetectConfig,
    gpus: int,
    flop_estimate: tuple[float, float] | None,
    material: list[tuple[str, float, Opacity, EndUseRisk]],
) -> tuple[int, float, str, dict[str, Any]]:
    """Severity index, the axis score that set it, why, and which member and reasons set it.

    Per material member, each axis gives a severity from the size/FLOP class: opacity
    transparent / partly opaque / opaque and end-use risk none / elevated / high give 0 / one
    step below the class / the class; end-use floors then apply (a country of concern: at least
    ``country_floor``; a screening hit: at least ``screening_floor``). The run's severity is the
    largest over members and axes (docs/detection.md, "Subjects and severity").
    """
    size_level = sum(1 for th in (cfg.min_gpus, cfg.size_alone_gpus, cfg.large_gpus) if gpus >= th)
    flop_lo = flop_estimate[0] if flop_estimate else 0.0
    flop_ths = (cfg.flop_watch, cfg.flop_flag, cfg.flop_report, cfg.flop_report_high)
    flop_level = sum(1 for th in flop_ths if flop_lo >= th)
    magnitude = max(size_level, flop_level)
    m = max((_member(cfg, magnitude, *mm) for mm in material), key=lambda x: x.key)
    why_size = f"{gpus} GPUs (size class {size_level} of 3), FLOP class {flop_level} of 4"
    op, risk = m.opacity, m.risk
    axes = [a for a, v in (("opacity", m.by_opacity), ("end_use", m.by_end_use)) if v == m.severity and m.severity > 0]
    set_by: dict[str, Any] = {
        "tenant": m.tenant,
        "axes": axes,
        "opacity": {"score": round(op.score, 3), "level": m.opacity_level, "severity": SEVERITIES[m.by_opacity]},
        "end_use": {
            "score": round(risk.score, 3),
            "level": m.end_use_level,
            "severity": SEVERITIES[m.by_end_use],
            "floor": m.floor,
        },
        "reasons": [
            *(f"opacity: {r}" for r in (op.reasons if "opacity" in axes else ())),
            *(f"end use: {r}" for r in (risk.reasons if "end_use" in axes else ())),
        ],
        "size_class": size_level,
        "flop_class": flop_level,
    }
    if m.severity == 0:
        why = (
            f"every material member is transparent and of no end-use concern (highest opacity "
            f"{max(x[2].score for x in material):.2f}, highest end-use risk {max(x[3].score for x in material):.2f}); "
            f"{why_size}"
        )
        return 0, max(op.score, risk.score), why, set_by
    parts = []
    if "opacity" in axes:
        how = "the size/FLOP class" if m.opacity_level == "opaque" else "one step down"
        parts.append(f"{m.opacity_level} (opacity {op.score:.2f}, {how})")
    if "end_use" in axes:
        how = (
            "the size/FLOP class"
            if m.end_use_level == "high"
            else "one step down"
            if m.end_use_level == "elevated"
            else ""
        )
        what = f"end-use risk {risk.score:.2f}" + (f", {how}" if how else "") + (f", {m.floor}" if m.floor else "")
        parts.append(f"of {m.end_use_level} end-use concern ({what})")
    why = f"member {m.tenant} holds {m.share:.0%} of the run and is {' and '.join(parts)}; {why_size}"
    value = max(op.score if "opacity" in axes else 0.0, risk.score if "end_use" in axes else 0.0)
    return m.severity, value, why, set_by


def slurm_jobs_apart(gu: GroupUse, cfg: DetectConfig) -> bool:
    """Are the group's GPUs Slurm jobs too narrow to be one job? A multi-node Slurm job has one
    job id on every node, so where (nearly) every GPU belongs to a Slurm job and none spans more
    than ``slurm_job_max_nodes`` nodes of a group several times wider, its nodes are several
    jobs (a sweep, a fleet), however they move together."""
    return (
        gu.gpus > 0
        and gu.slurm_gpus >= 0.9 * gu.gpus
        and gu.slurm_max_nodes <= cfg.slurm_job_max_nodes
        and len(gu.nodes) > 2 * gu.slurm_max_nodes
    )


def _job_basis(run: Run, cfg: DetectConfig) -> str:
    """What says the run is one job: "coupling" (its nodes were tested coupled in at least
    ``coupling_min_share`` of the windows measured), "one workload id" (one pod or Slurm job
    spans ``min_gpus``), else "coupling not sustained" (confirmed once, then uncoupled in more
    than the share allowed) or "size alone"; "separate Slurm jobs" says it is not one job."""
    if run.last is not None and slurm_jobs_apart(run.last, cfg):
        return "separate Slurm jobs"
    if run.coupled_windows >= cfg.coupling_confirm_windows and run.coupled_share(cfg.coupling_min_share):
        return "coupling"
    if run.last is not None and run.last.shared_workload_gpus >= cfg.min_gpus:
        return "one workload id"
    return "coupling not sustained" if run.coupled_windows >= cfg.coupling_confirm_windows else "size alone"


def build_finding(
    run: Run,
    cfg: DetectConfig,
    opacity_of: Callable[[str, int], Opacity],
    link_evidence: dict[tuple[str, str], dict[str, Any]],
    detected_at_ms: int,
    end_ms: int,
    risk_of: Callable[[str, int], EndUseRisk] | None = None,
) -> Finding:
    """The finding of ``run``. ``risk_of(tenant, start_ms)`` gives each tenant's end-use risk
    (``collector.detect.enduse.EndUseRiskOf``); without it the end-use axis is not assessed
    (the finding has no ``end_use_risk``) and severity comes from opacity alone."""
    tenants = tuple(sorted(run.tenants))
    total = sum(run.tenants.values())
    shares = {t: (run.tenants[t] / total if total > 0 else 1.0 / len(tenants)) for t in tenants}
    ops = {t: opacity_of(t, run.start_ms) for t in tenants}
    risks = {t: (risk_of or _no_risk)(t, run.start_ms) for t in tenants}
    largest = max(tenants, key=lambda t: (shares[t], t))
    material = [(t, shares[t], ops[t], risks[t]) for t in tenants if shares[t] >= cfg.material_share or t == largest]
    gpus = int(round(run.peak_gpus))
    window_ms = int(run.last_window_s * 1000)
    flop_estimate, flop_upper, flop_reason, peaks = _flop(run, cfg)
    sev, sev_opacity, why, set_by = _severity(cfg, gpus, flop_estimate, material)
    basis = _job_basis(run, cfg)
    end_use_sev = SEVERITIES.index(set_by["end_use"]["severity"])
    if basis == "separate Slurm jobs" and sev > end_use_sev:
        sev = end_use_sev
        why += (
            f"; at most {SEVERITIES[sev]} (its end-use severity): its GPUs are Slurm jobs of at most "
            f"{cfg.slurm_job_max_nodes} nodes each, and one multi-node job is one Slurm job on every node"
        )
    if basis in ("size alone", "coupling not sustained"):
        # Nor does a declared use that only this finding's claim of training contradicts: a
        # tenant that declared inference and runs a fleet at full load did what it declared.
        if any(r.contradiction for *_, r in material):
            plain = [(t, sh, op, r.without_contradiction()) for t, sh, op, r in material]
            end_use_sev = SEVERITIES.index(_severity(cfg, gpus, flop_estimate, plain)[3]["end_use"]["severity"])
    if basis in ("size alone", "coupling not sustained") and sev > end_use_sev:
        # Size is what a batch-inference fleet or a sweep at full load shows too: without a
        # measured coupling or one workload id across nodes, opacity alone does not raise the
        # finding above low. Who the tenant is (the end-use axis, its floors) still counts.
        sev = end_use_sev
        if basis == "size alone":
            said = "coupling could not be measured (flat or missing series)"
        else:
            said = (
                f"its nodes tested coupled in {run.coupled_windows} windows, but in only {sum(run.recent_tests)} "
                f"of the last {len(run.recent_tests)} measured"
            )
        why += (
            f"; at most {SEVERITIES[sev]} (its end-use severity, a declared use that only training "
            f"would contradict left out): {said} and no one workload id spans the nodes, so only "
            "size says it is one job"
        )
    primary = set_by["tenant"]
    op = ops[primary]
    risk: EndUseRisk | None = risks[primary] if risk_of is not None else None
    if len(tenants) > 1:
        score = max(m[2].score for m in material)
        reasons = tuple(f"{t}: {r}" for t in tenants for r in ops[t].reasons)
        op = Opacity(score, reasons)
        if risk is not None:
            risk = _group_risk(tenants, material, risks)

    size_s = min(1.0, max(0.0, math.log2(max(gpus, 1) / 32) / 7))
    flop_mid = 0.0 if flop_estimate is None else (flop_estimate[0] + flop_estimate[1]) / 2
    flop_s = min(1.0, max(0.0, (math.log10(flop_mid) - 22) / 4)) if flop_mid > 0 else 0.0
    evidence_s = 1.0 if run.coupling_state == "coupled" else 0.8
    score = (0.4 + 0.6 * max(size_s, flop_s)) * evidence_s * (0.3 + 0.7 * sev_opacity)
    if sev == 0:
        score = min(score, 0.3)

    models = {m: round(mu.gpu_s / max(run.gpu_s, 1e-9) * run.peak_gpus) for m, mu in sorted(run.models.items())}
    typical = statistics.median(run.at_size_gpus) if run.at_size_gpus else None
    evidence: dict[str, Any] = {
        "signals": _signals(run, cfg, gpus, window_ms),
        "job_evidence": basis,
        "severity_reason": why,
        "severity_set_by": set_by,
        "levels": _levels(cfg, op, risk),
        "score_explained": "(0.4 + 0.6 x max(size, FLOP) on 0..1) x (1.0 coupled, 0.8 otherwise) "
        "x (0.3 + 0.7 x the opacity or end-use risk that set the severity); at most 0.3 when low",
        "members": [
            {
                "tenant": t,
                "gpu_hours": round(run.tenants[t] / _SECONDS_PER_HOUR, 2),
                "share": round(shares[t], 3),
                "gpus": round(shares[t] * (typical if typical is not None else run.peak_gpus), 1),
                "material": any(m[0] == t for m in material),
                "opacity": ops[t].to_json(),
                **({"end_use_risk": risks[t].to_json()} if risk_of is not None else {}),
            }
            for t in sorted(tenants, key=lambda t: (-shares[t], t))
        ],
        "nodes": run.peak_nodes,
        "nodes_last_window": run.last_nodes,
        "gpus_last_window": round(run.last_gpus, 1),
        "gpus_unreported_last_window": round(run.last.unreported, 1) if run.last is not None else 0.0,
        "gpus_typical": None if typical is None else round(typical, 1),
        "gpu_models": models,
        "windows_counted": run.windows,
        "windows_at_size": run.large_windows,
        "throttled_gpus_counted_windows": run.weak_counted_windows,
        "last_window_end": rfc3339_ms(end_ms),
        "gpu_seconds": round(run.gpu_s, 1),
        "flop": {
            "estimate": None if flop_estimate is None else list(flop_estimate),
            "upper_bound": flop_upper,
            "method": (
                f"peak dense BF16 x activity-weighted GPU-seconds x MFU {cfg.mfu_low}..{cfg.mfu_high}; "
                "upper bound: peak dense FP8 (BF16 where no FP8) x GPU-seconds"
            ),
            "unavailable": flop_reason,
            "peaks": peaks,
        },
        "projection": _projection(run, cfg, flop_estimate),
        "opacity_by_tenant": {t: ops[t].to_json() for t in tenants},
        **({"end_use_risk_by_tenant": {t: risks[t].to_json() for t in tenants}} if risk_of is not None else {}),
        "memory_note": "memory use is not evidence on its own: inference servers preallocate ~90% of GPU memory",
    }
    if len(tenants) > 1:
        evidence["linked_tenants"] = {
            "tenants": list(tenants),
            "how": "tenant-level load coupled (collector/detect/coupling.py: common component of the other "
            "tenants removed, robust to any one episode left out) for "
            f"{cfg.link_confirm_windows}+ windows in a row, Fisher z >= {cfg.link_min_z}",
            "pairs": [
                {"tenants": list(p), **e}
                for p, e in sorted(link_evidence.items())
                if p[0] in run.tenants and p[1] in run.tenants
            ],
        }
    if run.merged_from:
        evidence["supersedes"] = sorted(set(run.merged_from))
    if run.finding_id is None:
        run.finding_id = finding_id(KIND_LARGE_TRAINING, (run.group,), run.start_ms)
    return Finding(
        id=run.finding_id,
        kind=KIND_LARGE_TRAINING,
        tenant=primary,
        tenants=tenants,
        severity=SEVERITIES[sev],
        started_at_ms=run.start_ms,
        detected_at_ms=detected_at_ms,
        updated_at_ms=end_ms,
        gpus=gpus,
        nodes=run.peak_nodes,
        gpu_hours=run.gpu_s / _SECONDS_PER_HOUR,
        flop_estimate=flop_estimate,
        score=round(min(1.0, max(0.0, score)), 4),
        opacity=op,
        evidence=evidence,
        end_use_risk=risk,
    )


def _levels(cfg: DetectConfig, op: Opacity, risk: EndUseRisk | None) -> dict[str, Any]:
    """The finding's level on each axis (its material members' highest): what metrics and
    dashboards count findings by (``gpuaudit_findings_opacity``, ``gpuaudit_findings_end_use``)."""
    o_cls = 0 if op.score < cfg.transparent_opacity_max else 2 if op.score >= cfg.opaque_opacity_min else 1
    return {
        "opacity": ("transparent", "partly_opaque", "opaque")[o_cls],
        "end_use": "not_assessed" if risk is None else risk.level(_end_use_config(cfg)),
        "screening_hit": risk is not None and risk.screening_hit,
    }


def _group_risk(
    tenants: tuple[str, ...],
    material: list[tuple[str, float, Opacity, EndUseRisk]],
    risks: dict[str, EndUseRisk],
) -> EndUseRisk:
    """A group's end-use risk: the material members' highest score, every member's reasons
    (prefixed with the tenant), and one screening with every member's hits."""
    hits = tuple(h for t in tenants for h in risks[t].screening.hits)
    base = max((m[3] for m in material), key=lambda r: r.score).screening
    return EndUseRisk(
        max(m[3].score for m in material),
        tuple(f"{t}: {r}" for t in tenants for r in risks[t].reasons),
        replace(base, hits=tuple(sorted(hits, key=hit_order))),
        country_of_concern=any(m[3].country_of_concern for m in material),
        screening_hit=any(m[3].screening_hit for m in material),
    )


__all__ = ["build_finding"]
