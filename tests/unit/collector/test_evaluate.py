"""The evaluation's scoring on tiny hand-made inputs, and the quick evaluation end to end."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path
from typing import Any

import pytest

from collector.evaluate.metrics import (
    Report,
    matches,
    poisson_upper_95,
    quantile,
    restrict,
    severity_rank,
    summary,
)
from collector.evaluate.truth import TruthJob

T = 1_772_409_600.0
DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finding(
    tenants: list[str], start: float, detected: float, last: float, flop: tuple[float, float], upper: float
) -> dict[str, Any]:
    return {
        "tenant": tenants[0],
        "tenants": tenants,
        "started_at": _iso(start),
        "detected_at": _iso(detected),
        "gpus": 256,
        "nodes": 32,
        "flop_estimate": list(flop),
        "evidence": {"last_window_end": _iso(last), "flop": {"upper_bound": upper}},
    }


def _job(jid: str, tenants: tuple[str, ...], gpus: int, start: float, end: float, flop: float = 1e21) -> TruthJob:
    return TruthJob(jid, "plain", tenants, start, end, [(start, gpus)], "NVIDIA H100 80GB HBM3", 0.4, flop)


def test_matching_needs_a_shared_tenant_and_overlapping_time() -> None:
    j = _job("j", ("t-a", "t-b"), 256, T, T + 3600)
    assert matches(_finding(["t-b"], T + 60, T + 600, T + 1200, (1, 2), 3), j)
    assert not matches(_finding(["t-c"], T + 60, T + 600, T + 1200, (1, 2), 3), j)
    assert not matches(_finding(["t-a"], T + 4000, T + 4600, T + 5000, (1, 2), 3), j)


def test_recall_time_to_detect_precision_and_naming() -> None:
    rep = Report()
    jobs = [
        _job("big", ("t-a", "t-b"), 256, T, T + 7200),  # detected at 12 min, both named
        _job("late", ("t-c",), 512, T, T + 7200),  # detected at 40 min: misses the 15-min goal
        _job("mid", ("t-d",), 64, T, T + 7200),  # missed
        _job("small", ("t-e",), 16, T, T + 7200),  # not a positive; a finding on it is false
        _job("short", ("t-f",), 256, T, T + 600),  # too short to count for recall
    ]
    findings = [
        _finding(["t-a", "t-b"], T, T + 60 + 12 * 60, T + 7200, (0.8e21, 1.6e21), 3e21),
        _finding(["t-c"], T, T + 60 + 40 * 60, T + 7200, (0.5e21, 1.0e21), 0.9e21),
        _finding(["t-e"], T, T + 900, T + 7200, (1, 2), 3),
    ]
    rep.add_site(jobs, findings, node_days=100.0, min_gpus=64)
    assert rep.precision == pytest.approx(2 / 3)
    assert rep.recall(256, 15 * 60) == (0.5, 1, 2)
    assert rep.recall(64, 60 * 60) == (pytest.approx(2 / 3), 2, 3)
    assert rep.time_to_detect(256, 1024) == [12 * 60.0, 40 * 60.0]
    rate, upper = rep.false_per_10k_node_days()
    assert rate == pytest.approx(100.0) and upper is not None and upper > rate
    errs, below, scored = rep.flop_errors()
    assert scored == 2 and below == 1  # the "late" finding's upper bound is below its truth
    assert sorted(round(e, 3) for e in errs) == [0.2, 0.25]
    s = summary(rep)
    assert s["goals"][0]["met"] is False and s["flop"]["met"] is False
    assert s["by_kind"]["plain"]["jobs"] == 4


def test_a_split_run_is_named_only_when_every_account_is_in_one_finding() -> None:
    rep = Report()
    j = _job("split", ("t-a", "t-b"), 256, T, T + 7200)
    rep.add_site([j], [_finding(["t-a"], T, T + 600, T + 7200, (1, 2), 3)], 1.0, 64)
    assert rep.jobs[0].detected_at_s is not None and rep.jobs[0].named is False
    assert rep.recall(256, None)[0] == 0.0


def test_statistics_helpers() -> None:
    assert poisson_upper_95(0) == pytest.approx(2.996, abs=1e-3)
    assert poisson_upper_95(1) == pytest.approx(4.744, abs=0.05)
    assert poisson_upper_95(10) == pytest.approx(17.0, abs=0.2)
    assert quantile([], 0.5) is None
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5


def test_truth_job_size_steps() -> None:
    j = TruthJob("g", "grow_shrink", ("t",), T, T + 7200, [(T, 64), (T + 1200, 320), (T + 3600, 128)], "m", 0.4)
    assert j.peak_gpus == 320
    assert j.first_at_least(64) == T + 60  # steady state after the ramp
    assert j.first_at_least(256) == T + 1200
    assert j.seconds_at_least(256) == 2400
    assert j.first_at_least(1024) is None


def _sev(f: dict[str, Any], severity: str) -> dict[str, Any]:
    return {**f, "severity": severity}


def test_negatives_transparent_runs_and_several_findings_per_run() -> None:
    rep = Report()
    run = _job("run", ("t-a",), 256, T, T + 7200)
    open_run = TruthJob("open", "dp", ("t-o",), T, T + 7200, [(T, 128)], "m", 0.4, 1e21, transparent=True)
    sweep = TruthJob(
        "sw",
        "hp_sweep",
        ("t-s",),
        T,
        T + 7200,
        [(T, 128)],
        "",
        0.0,
        positive=False,
        max_severity="low",
        family="hp_sweep",
    )
    serving = TruthJob(
        "inf",
        "inference_multi",
        ("t-i",),
        T,
        T + 7200,
        [(T, 256)],
        "",
        0.0,
        positive=False,
        max_severity="none",
        family="inference_multi",
    )
    f = _finding(["t-a"], T, T + 600, T + 7200, (0.9e21, 1.1e21), 2e21)
    findings = [
        _sev(f, "high"),
        _sev(f, "medium"),  # a second finding on the same run
        _sev(_finding(["t-o"], T, T + 600, T + 7200, (1, 2), 3), "medium"),  # transparent: above low
        _sev(_finding(["t-s"], T, T + 600, T + 7200, (1, 2), 3), "low"),  # allowed on a sweep: not false
        _sev(_finding(["t-i"], T, T + 600, T + 7200, (1, 2), 3), "low"),  # serving allows none: false
    ]
    rep.add_site([run, open_run, sweep, serving], findings, 0.0, 64)
    s = summary(rep)
    assert [r.job.id for r in rep.jobs] == ["run"]  # transparent runs do not count towards recall
    assert s["runs_with_several_findings"] == 1
    assert s["transparent"] == {"runs": 1, "with_findings": 1, "above_low": 1}
    assert s["negatives"]["jobs"] == 2 and s["negatives"]["above_allowed"] == 1
    assert len(rep.false_findings) == 1 and rep.false_findings[0]["tenant"] == "t-i"
    checks = {c["check"]: c["met"] for c in s["checks"]}
    assert not any(checks.values())
    sub = summary(restrict(rep, "hp_sweep"))
    assert sub["negatives"] == {"jobs": 1, "with_findings": 1, "above_allowed": 0, "examples": []}
    assert severity_rank("none") < severity_rank("low") < severity_rank("critical") == severity_rank("bogus")


def test_truth_job_json_round_trip_keeps_the_scenario_fields() -> None:
    j = TruthJob(
        "n",
        "hp_sweep",
        ("t",),
        T,
        T + 60,
        [(T, 8)],
        "",
        0.0,
        positive=False,
        max_severity="low",
        family="hp_sweep",
        transparent=False,
    )
    assert TruthJob.from_json(j.to_json()) == j


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason=f"public data not found at {DATA} (a clone has no ../shared/data)")
def test_a_scenario_runs_end_to_end_and_is_scored_by_every_axis() -> None:
    """Not a goal check (the detector is judged by ``make eval``): the pipeline runs and
    every axis appears in the breakdown."""
    from collector.evaluate.run import run_scenario, score
    from collector.evaluate.scenarios.family import Scenario

    sc = Scenario(
        "e2e",
        1,
        60,
        "H100",
        "storage_stall",
        60,
        (("dp", 128, "opaque"), ("rl", 64, "transparent")),
        (("hp_sweep", 64),),
        masks=("all", "util_only"),
        held_out=True,
    )
    with cf.ProcessPoolExecutor(max_workers=1) as pool:
        r = pool.submit(run_scenario, str(DATA), sc, None).result()
    assert r["node_windows"] > 0 and set(r["findings"]) == {"all", "util_only"}
    s = score([r])
    assert s["tuning"]["summary"]["findings"] == 0
    by = s["held_out"]["by_axis"]
    assert set(by) == {"interval", "fields", "model", "shock", "loss", "shape"}
    assert set(by["fields"]) == {"all", "util_only"} and set(by["shape"]) == {"dp", "rl", "hp_sweep"}
