"""Scoring findings against a site's truth: precision, recall, time to detect, false rate, FLOP.

Pure functions over plain data (Findings JSON dicts and ``TruthJob``s), so they are tested
on tiny hand-made inputs. A finding *matches* a job when it names at least one of the job's
tenants and its time span (started_at .. last window) overlaps the job's. A positive job is
one of at least ``min_gpus`` GPUs at some point; it is *detected* when a matching finding
exists, *named* when one matching finding names every account of the job.

Scenario truth (``collector.evaluate.scenarios``) adds three kinds of job: negatives
(``positive=False``, with the most severe finding allowed on them, ``max_severity``),
runs of transparent tenants (``transparent=True``: findings on them must be at most
``low``; they do not count towards recall), and a shape family per job for breakdowns. A
finding is *false* when it matches no positive run and no negative that allows it.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.evaluate.truth import TruthJob

# Size classes reported (GPUs, lower bound inclusive) and the goals of issue 6.
SIZE_CLASSES: tuple[tuple[str, int, int | None], ...] = (
    ("64-255", 64, 256),
    ("256-1023", 256, 1024),
    (">=1024", 1024, None),
)
GOALS: tuple[tuple[int, float, float], ...] = ((256, 15 * 60.0, 0.99), (64, 60 * 60.0, 0.95))
"""(GPUs at least, detect within s of steady state, recall at least)."""
MIN_ELIGIBLE_S = 20 * 60.0
"""A job counts towards recall at a size only if it ran at that size this long (the detector
needs 10 min at size; a shorter run is too small a FLOP total to matter)."""
FALSE_PER_NODE_DAYS_GOAL = 1.0
"""At most this many false findings per 10,000 node-days of inference and small jobs."""
SEVERITIES: tuple[str, ...] = ("none", "low", "medium", "high", "critical")


def severity_rank(s: str | None) -> int:
    """Order of a severity (``none`` 0 .. ``critical`` 4); an unknown one ranks as critical."""
    return SEVERITIES.index(s) if s in SEVERITIES else len(SEVERITIES) - 1


def parse_time(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def _finding_span(f: dict[str, Any]) -> tuple[float, float]:
    start = parse_time(f["started_at"])
    last = f.get("evidence", {}).get("last_window_end")
    end = parse_time(last) if isinstance(last, str) else parse_time(f["detected_at"])
    return start, max(end, parse_time(f["detected_at"]))


def _tenants(f: dict[str, Any]) -> set[str]:
    ts = f.get("tenants") or [f["tenant"]]
    return set(ts)


def matches(f: dict[str, Any], job: TruthJob) -> bool:
    if not (_tenants(f) & set(job.tenants)):
        return False
    s, e = _finding_span(f)
    return s < job.end_s and e > job.start_s


@dataclass
class JobResult:
    job: TruthJob
    detected_at_s: float | None
    named: bool
    extra_tenants: tuple[str, ...]
    flop_estimate: tuple[float, float] | None
    flop_upper: float | None
    findings: int = 0
    worst: str = "none"


@dataclass
class NegResult:
    """A negative (or a transparent tenant's run): the findings on it and the worst severity."""

    job: TruthJob
    findings: int
    worst: str

    @property
    def allowed(self) -> str:
        return "low" if self.job.transparent else self.job.max_severity

    @property
    def violated(self) -> bool:
        return severity_rank(self.worst) > severity_rank(self.allowed)


def _allowed_by(f: dict[str, Any], negatives: Sequence[TruthJob]) -> bool:
    """A finding no positive explains is still not false when a negative it matches allows it."""
    sev = severity_rank(f.get("severity"))
    return any(matches(f, n) and sev <= severity_rank(n.max_severity) for n in negatives)


@dataclass
class Report:
    jobs: list[JobResult] = field(default_factory=list)
    findings: int = 0
    true_findings: int = 0
    false_findings: list[dict[str, Any]] = field(default_factory=list)
    background_node_days: float = 0.0
    negatives: list[NegResult] = field(default_factory=list)
    transparent: list[NegResult] = field(default_factory=list)

    def add_site(
        self, truth: Sequence[TruthJob], findings: Sequence[dict[str, Any]], node_days: float, min_gpus: int
    ) -> None:
        self.background_node_days += node_days
        self.findings += len(findings)
        runs = [j for j in truth if j.positive and j.peak_gpus >= min_gpus]
        positives = [j for j in runs if not j.transparent]
        negatives = [j for j in truth if not j.positive]
        for f in findings:
            if any(matches(f, j) for j in runs) or _allowed_by(f, negatives):
                self.true_findings += 1
            else:
                self.false_findings.append(f)
        for j in negatives + [j for j in runs if j.transparent]:
            hits = [f for f in findings if matches(f, j)]
            worst = max((str(f.get("severity")) for f in hits), key=severity_rank, default="none")
            (self.transparent if j.transparent else self.negatives).append(NegResult(j, len(hits), worst))
        for j in positives:
            hits = [f for f in findings if matches(f, j)]
            if not hits:
                self.jobs.append(JobResult(j, None, False, (), None, None))
                continue
            worst = max((str(f.get("severity")) for f in hits), key=severity_rank, default="none")
            first = min(hits, key=lambda f: parse_time(f["detected_at"]))
            named = any(set(j.tenants) <= _tenants(f) for f in hits)
            extra = tuple(sorted(set().union(*(_tenants(f) for f in hits)) - set(j.tenants)))
            # FLOP: the findings' final states, summed (one per job unless a run was split).
            lo = hi = up = 0.0
            known = True
            for f in hits:
                est = f.get("flop_estimate")
                ub = f.get("evidence", {}).get("flop", {}).get("upper_bound")
                if est is None or ub is None:
                    known = False
                    break
                lo += est[0]
                hi += est[1]
                up += ub
            self.jobs.append(
                JobResult(
                    j,
                    parse_time(first["detected_at"]),
                    named,
                    extra,
                    (lo, hi) if known else None,
                    up if known else None,
                    len(hits),
                    worst,
                )
            )

    # ------------------------------------------------------------------ figures

    @property
    def precision(self) -> float | None:
        return self.true_findings / self.findings if self.findings else None

    def recall(self, gpus: int, within_s: float | None) -> tuple[float | None, int, int]:
        """Share of eligible jobs of >= ``gpus`` detected and named within ``within_s`` of
        reaching that size in steady state: (recall, detected, eligible)."""
        eligible = detected = 0
        for r in self.jobs:
            t0 = r.job.first_at_least(gpus)
            if t0 is None or r.job.seconds_at_least(gpus) < MIN_ELIGIBLE_S:
                continue
            eligible += 1
            if r.detected_at_s is not None and r.named:
                if within_s is None or r.detected_at_s - t0 <= within_s:
                    detected += 1
        return (detected / eligible if eligible else None), detected, eligible

    def time_to_detect(self, lo: int, hi: int | None) -> list[float]:
        """Seconds from reaching ``lo`` GPUs in steady state to detection, for jobs whose peak is in the class."""
        out = []
        for r in self.jobs:
            peak = r.job.peak_gpus
            if peak < lo or (hi is not None and peak >= hi) or r.detected_at_s is None:
                continue
            t0 = r.job.first_at_least(lo)
            if t0 is not None:
                out.append(max(0.0, r.detected_at_s - t0))
        return out

    def false_per_10k_node_days(self) -> tuple[float | None, float | None]:
        """(rate, one-sided 95% upper bound) per 10,000 node-days of background."""
        if self.background_node_days <= 0:
            return None, None
        n = len(self.false_findings)
        return n / self.background_node_days * 1e4, poisson_upper_95(n) / self.background_node_days * 1e4

    def flop_errors(self) -> tuple[list[float], int, int]:
        """(|mid - truth| / truth per detected job, jobs with upper bound < truth, jobs scored)."""
        errs = []
        below = scored = 0
        for r in self.jobs:
            if r.flop_estimate is None or r.flop_upper is None or r.job.flop <= 0:
                continue
            scored += 1
            mid = (r.flop_estimate[0] + r.flop_estimate[1]) / 2
            errs.append(abs(mid - r.job.flop) / r.job.flop)
            if r.flop_upper < r.job.flop:
                below += 1
        return errs, below, scored


def poisson_upper_95(n: int) -> float:
    """One-sided 95% upper confidence bound of a Poisson mean after observing ``n`` events."""
    if n == 0:
        return -math.log(0.05)  # 2.996: the "rule of three"
    # Wilson-Hilferty approximation of the chi-square quantile: 0.5 * chi2(0.95, 2n + 2).
    k = 2 * n + 2
    z = 1.6448536
    return 0.5 * k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3


def quantile(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    pos = q * (len(s) - 1)
    i = int(math.floor(pos))
    j = min(i + 1, len(s) - 1)
    return s[i] + (s[j] - s[i]) * (pos - i)


def summary(rep: Report) -> dict[str, Any]:
    """Every figure of the report as plain JSON."""
    out: dict[str, Any] = {
        "precision": rep.precision,
        "findings": rep.findings,
        "false_findings": len(rep.false_findings),
    }
    out["recall_any_time"] = {}
    out["time_to_detect_s"] = {}
    for name, lo, hi in SIZE_CLASSES:
        in_class = [r for r in rep.jobs if r.job.peak_gpus >= lo and (hi is None or r.job.peak_gpus < hi)]
        det = [r for r in in_class if r.detected_at_s is not None and r.named]
        out["recall_any_time"][name] = {"detected": len(det), "jobs": len(in_class)}
        ttd = rep.time_to_detect(lo, hi)
        out["time_to_detect_s"][name] = {
            "n": len(ttd),
            "median": quantile(ttd, 0.5),
            "p95": quantile(ttd, 0.95),
            "max": max(ttd) if ttd else None,
        }
    every = rep.time_to_detect(0, None)
    out["time_to_detect_s"]["all"] = {
        "n": len(every),
        "median": quantile(every, 0.5),
        "p95": quantile(every, 0.95),
        "max": max(every) if every else None,
    }
    out["goals"] = []
    for gpus, within, target in GOALS:
        r, d, e = rep.recall(gpus, within)
        out["goals"].append(
            {
                "goal": f">= {gpus} GPUs detected within {within / 60:.0f} min, recall >= {target}",
                "recall": r,
                "detected": d,
                "eligible": e,
                "met": r is not None and r >= target,
            }
        )
    rate, upper = rep.false_per_10k_node_days()
    out["false_findings_per_10k_node_days"] = {
        "rate": rate,
        "upper_95": upper,
        "background_node_days": round(rep.background_node_days, 2),
        "met": rate is not None and rate <= FALSE_PER_NODE_DAYS_GOAL,
        "shown_at_95": upper is not None and upper <= FALSE_PER_NODE_DAYS_GOAL,
    }
    errs, below, scored = rep.flop_errors()
    med = statistics.median(errs) if errs else None
    out["flop"] = {
        "median_abs_rel_error": med,
        "p90_abs_rel_error": quantile(errs, 0.9),
        "scored": scored,
        "upper_bound_below_truth": below,
        "met": med is not None and med <= 0.25 and below == 0,
    }
    out["by_kind"] = {}
    for jr in rep.jobs:
        k = out["by_kind"].setdefault(jr.job.kind, {"jobs": 0, "detected": 0, "named": 0, "wrong_tenants": 0})
        k["jobs"] += 1
        k["detected"] += jr.detected_at_s is not None
        k["named"] += jr.named
        k["wrong_tenants"] += len(jr.extra_tenants)
    multi = [r for r in rep.jobs if r.findings > 1]
    out["runs_with_several_findings"] = len(multi)
    neg_bad = [n for n in rep.negatives if n.violated]
    tr_bad = [n for n in rep.transparent if n.violated]
    out["negatives"] = {
        "jobs": len(rep.negatives),
        "with_findings": sum(1 for n in rep.negatives if n.findings),
        "above_allowed": len(neg_bad),
        "examples": [f"{n.job.kind}: {n.worst} > {n.allowed}" for n in neg_bad[:5]],
    }
    out["transparent"] = {
        "runs": len(rep.transparent),
        "with_findings": sum(1 for n in rep.transparent if n.findings),
        "above_low": len(tr_bad),
    }
    out["checks"] = [
        {"check": "no false finding", "value": len(rep.false_findings), "met": not rep.false_findings},
        {"check": "negatives at most their allowed severity", "value": len(neg_bad), "met": not neg_bad},
        {"check": "transparent tenants' runs at most low", "value": len(tr_bad), "met": not tr_bad},
        {"check": "one finding per run", "value": len(multi), "met": not multi},
    ]
    return out


def restrict(rep: Report, family: str) -> Report:
    """The part of ``rep`` about jobs of one shape family (false findings belong to no family)."""
    return Report(
        jobs=[r for r in rep.jobs if r.job.family == family],
        negatives=[n for n in rep.negatives if n.job.family == family],
        transparent=[n for n in rep.transparent if n.job.family == family],
    )
