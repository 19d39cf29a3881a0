"""``python -m collector.evaluate``: build scenario sites, run the offline detector, print figures.

Each scenario (``collector.evaluate.scenarios.family.plan``) is built into a site, sampled as
Trace v1 text (written to ``--out`` as ``.jsonl.gz`` when given, else kept in memory),
parsed back with ``core.trace.parse_lines``, windowed by ``core.pipeline`` (the agent's
own code: 60 s windows, 10 s buckets), masked to each telemetry field set of the scenario
(``scenarios.masks``), thinned by the site's telemetry loss (``scenarios.loss``: windows of
agents that were down never arrive) and fed to one ``DetectorEngine`` per mask. Sites run in
parallel worker processes.

Figures are reported overall and broken down by every axis (sample interval, fields, GPU
model, shock, telemetry loss, shape family), for the tuning and the held-out sites apart (held-out: the
families and seeds named in ``scenarios.family``; pass ``--hide-held-out`` while tuning).

Exit codes: 0 every goal met; 1 a goal missed; 2 usage or data missing.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import gzip
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collector.evaluate.data import PublicData
    from collector.evaluate.metrics import Report
    from collector.evaluate.scenarios.family import Scenario

_logger = logging.getLogger(__name__)

COST_PER_SAMPLE = {1: 60.0, 10: 6.0, 20: 3.0, 30: 2.0, 60: 1.0}
"""Relative cost of a node-minute by sample interval (for ordering the work: longest first)."""


def _lines(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    from core.trace import header

    yield json.dumps(header())
    for r in records:
        yield json.dumps(r, separators=(",", ":"))


@functools.lru_cache(maxsize=2)
def _data(data_dir: str) -> PublicData:
    from collector.evaluate.data import load

    return load(Path(data_dir))


def run_scenario(data_dir: str, sc: Scenario, out: str | None) -> dict[str, Any]:
    """Build one site, detect on it once per field mask, return truth, findings and timings (worker)."""
    from collector.detect.config import DetectConfig
    from collector.detect.engine import DetectorEngine
    from collector.evaluate.scenarios.family import build
    from collector.evaluate.scenarios.loss import Loss
    from collector.evaluate.scenarios.masks import apply
    from collector.tenants import TenantDirectory
    from core.pipeline import windows_from_records
    from core.trace import parse_lines

    t0 = time.perf_counter()
    site = build(sc, _data(data_dir))
    name = site.name
    lines: Iterator[str] = _lines(site.records())
    if out:
        path = Path(out) / f"{name}.trace.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as fh:
            for line in lines:
                fh.write(line + "\n")
        (Path(out) / f"{name}.tenants.toml").write_text(site.tenants_toml, encoding="utf-8")
        lines = iter(gzip.open(path, "rt", encoding="utf-8"))
    cfg = DetectConfig()
    tenants = TenantDirectory.from_toml(site.tenants_toml)
    engines = {m: DetectorEngine(cfg, tenants) for m in sc.masks}
    n = 0
    loss = Loss(sc.loss, sc.seed)
    for made in windows_from_records(parse_lines(lines, name)):
        w = loss.window(made)
        if w is None:
            continue  # the agent was down: no statement of this node for the window
        n += 1
        for m, eng in engines.items():
            eng.observe(apply(w, m))
    findings: dict[str, list[dict[str, Any]]] = {}
    for m, eng in engines.items():
        eng.finish()
        findings[m] = [f.to_json() for f in eng.findings()]
    truth = [j.to_json() for j in site.truths]
    if out:
        (Path(out) / f"{name}.truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
        (Path(out) / f"{name}.findings.json").write_text(json.dumps(findings, indent=1), encoding="utf-8")
    return {
        "site": name,
        "seed": sc.seed,
        "held_out": sc.held_out,
        "axes": {"interval": f"{sc.interval_s}s", "model": sc.model, "shock": sc.shock, "loss": sc.loss},
        "truth": truth,
        "findings": findings,
        "node_windows": n,
        "seconds": time.perf_counter() - t0,
        "min_gpus": cfg.min_gpus,
    }


# --------------------------------------------------------------------------- scoring


def _block(reps: dict[str, dict[str, Report]], overall: Report) -> dict[str, Any]:
    from collector.evaluate.metrics import restrict, summary

    out: dict[str, Any] = {"summary": summary(overall), "by_axis": {}}
    for axis, by_value in reps.items():
        out["by_axis"][axis] = {v: summary(r) for v, r in sorted(by_value.items())}
    families = sorted(
        {r.job.family for r in overall.jobs}
        | {n.job.family for n in overall.negatives}
        | {n.job.family for n in overall.transparent}
    )
    out["by_axis"]["shape"] = {f: summary(restrict(overall, f)) for f in families}
    s = out["summary"]
    s["false_finding_examples"] = [
        {k: f.get(k) for k in ("site", "fields", "tenants", "severity", "gpus", "nodes", "started_at", "detected_at")}
        for f in overall.false_findings[:5]
    ]
    s["missed"] = [f"{r.job.kind}:{r.job.id}" for r in overall.jobs if r.detected_at_s is None or not r.named]
    return out


def score(results: list[dict[str, Any]]) -> dict[str, Any]:
    from collector.evaluate.metrics import Report
    from collector.evaluate.truth import TruthJob

    out: dict[str, Any] = {}
    for label, keep in (
        ("all", lambda r: True),
        ("tuning", lambda r: not r["held_out"]),
        ("held_out", lambda r: r["held_out"]),
    ):
        overall = Report()
        reps: dict[str, dict[str, Report]] = {"interval": {}, "fields": {}, "model": {}, "shock": {}, "loss": {}}
        for r in results:
            if not keep(r):
                continue
            truth = [TruthJob.from_json(j) for j in r["truth"]]
            for mask, fs in r["findings"].items():
                fs = [{**f, "site": r["site"], "fields": mask} for f in fs]
                axes = {**r["axes"], "fields": mask}
                overall.add_site(truth, fs, 0.0, r["min_gpus"])
                for axis, rep_by in reps.items():
                    rep_by.setdefault(axes[axis], Report()).add_site(truth, fs, 0.0, r["min_gpus"])
        out[label] = _block(reps, overall)
    return out


def goals_met(block: dict[str, Any]) -> bool:
    s = block["summary"]
    return all(g["met"] for g in s["goals"]) and all(c["met"] for c in s["checks"]) and s["flop"]["met"]


# --------------------------------------------------------------------------- rendering


def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3g}{unit}"
    return f"{x}{unit}"


def _row(name: str, s: dict[str, Any]) -> str:
    g = s["goals"]
    ttd = s["time_to_detect_s"]["all"]
    fl = s["flop"]
    neg = s["negatives"]
    tr = s["transparent"]
    parts = [f"  {name:<22}"]
    if g[1]["eligible"]:
        parts.append(
            f">=256@15m {g[0]['detected']}/{g[0]['eligible']}  >=64@60m {g[1]['detected']}/{g[1]['eligible']}"
            f"  ttd med {_fmt(None if ttd['median'] is None else ttd['median'] / 60, 'm')}"
            f" p95 {_fmt(None if ttd['p95'] is None else ttd['p95'] / 60, 'm')}"
        )
    if "false_findings" in s and s["findings"]:
        parts.append(f"false {s['false_findings']}")
    if neg["jobs"]:
        parts.append(f"neg>allowed {neg['above_allowed']}/{neg['jobs']}")
    if tr["runs"]:
        parts.append(f"transp>low {tr['above_low']}/{tr['runs']}")
    if s["runs_with_several_findings"]:
        parts.append(f"multi-finding {s['runs_with_several_findings']}")
    if fl["scored"]:
        med = _fmt(fl["median_abs_rel_error"])
        parts.append(f"FLOP med {med} below {fl['upper_bound_below_truth']}/{fl['scored']}")
    return "  ".join(parts)


def render_block(label: str, block: dict[str, Any]) -> list[str]:
    s = block["summary"]
    lines = [
        f"\n== {label} ==",
        f"findings: {s['findings']} ({s['false_findings']} false; precision {_fmt(s['precision'])})",
    ]
    for name, v in s["recall_any_time"].items():
        t = s["time_to_detect_s"][name]
        med = None if t["median"] is None else t["median"] / 60
        p95 = None if t["p95"] is None else t["p95"] / 60
        lines.append(
            f"  {name:>9} GPUs: detected+named {v['detected']}/{v['jobs']}; "
            f"time to detect median {_fmt(med, ' min')}, p95 {_fmt(p95, ' min')}"
        )
    t = s["time_to_detect_s"]["all"]
    lines.append(
        f"  all positives: time from steady state to detection median "
        f"{_fmt(None if t['median'] is None else t['median'] / 60, ' min')}, "
        f"p95 {_fmt(None if t['p95'] is None else t['p95'] / 60, ' min')} ({t['n']} detected)"
    )
    for g in s["goals"]:
        ok = "MET" if g["met"] else "NOT MET"
        lines.append(f"  goal {g['goal']}: {_fmt(g['recall'])} ({g['detected']}/{g['eligible']}) {ok}")
    for c in s["checks"]:
        lines.append(f"  goal {c['check']}: {c['value']} {'MET' if c['met'] else 'NOT MET'}")
    fl = s["flop"]
    lines.append(
        f"  goal FLOP median |mid-truth|/truth <= 0.25, upper bound never below truth: "
        f"{_fmt(fl['median_abs_rel_error'])}, below {fl['upper_bound_below_truth']}/{fl['scored']} "
        f"{'MET' if fl['met'] else 'NOT MET'}"
    )
    if s["negatives"]["examples"]:
        lines.append(f"  negatives above allowed: {s['negatives']['examples']}")
    if s["false_finding_examples"]:
        lines.append(f"  false findings (first 5): {s['false_finding_examples']}")
    for axis, by_value in block["by_axis"].items():
        lines.append(f" by {axis}:")
        for v, sv in by_value.items():
            lines.append(_row(v, sv))
    return lines


def render(scores: dict[str, Any], results: list[dict[str, Any]], elapsed: float, hide_held_out: bool) -> str:
    nw = sum(r["node_windows"] for r in results)
    runs = sum(len(r["findings"]) for r in results)
    lines = [f"sites: {len(results)}  (site, fields) runs: {runs}  node-windows: {nw}  wall time: {elapsed:.0f} s"]
    labels = ("tuning",) if hide_held_out else ("all", "tuning", "held_out")
    for label in labels:
        lines += render_block(
            {"all": "overall", "tuning": "tuning sites", "held_out": "HELD-OUT sites (do not tune on these)"}[label],
            scores[label],
        )
    return "\n".join(lines)


def default_data_dir() -> Path:
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m collector.evaluate",
        description="Evaluate the detector on scenario sites built from physics and the public data.",
    )
    ap.add_argument("--data", type=Path, default=None, help="public data directory (default: ../shared/data)")
    ap.add_argument("--quick", action="store_true", help="a smaller run for CI (~2.5 min on 2 cores)")
    ap.add_argument("--out", type=Path, help="write traces, truth, findings and the report here")
    ap.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 4), help="worker processes")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument(
        "--hide-held-out", action="store_true", help="show and judge the tuning sites only (while tuning the detector)"
    )
    ns = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from collector.evaluate.data import DataMissingError, load
    from collector.evaluate.scenarios.family import plan

    data_dir = ns.data or default_data_dir()
    try:
        load(data_dir)
    except DataMissingError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 2
    if ns.out:
        ns.out.mkdir(parents=True, exist_ok=True)
    scenarios = plan(ns.quick)
    t0 = time.perf_counter()
    out = str(ns.out) if ns.out else None
    order = sorted(scenarios, key=lambda s: -s.node_minutes() * (COST_PER_SAMPLE.get(s.interval_s, 3.0) + 2.0))
    results = []
    with cf.ProcessPoolExecutor(max_workers=max(1, ns.jobs)) as pool:
        futs = [pool.submit(run_scenario, str(data_dir), sc, out) for sc in order]
        for fut in cf.as_completed(futs):
            r = fut.result()
            print(
                f"  {r['site']}: {r['node_windows']} node-windows, "
                f"{sum(len(v) for v in r['findings'].values())} findings over {len(r['findings'])} field sets, "
                f"{r['seconds']:.0f} s",
                file=sys.stderr,
            )
            results.append(r)
    results.sort(key=lambda r: r["site"])
    elapsed = time.perf_counter() - t0
    scores = score(results)
    if ns.hide_held_out:
        scores = {"tuning": scores["tuning"]}
    if ns.out:
        (ns.out / "report.json").write_text(
            json.dumps({"scores": scores, "elapsed_s": elapsed}, indent=1), encoding="utf-8"
        )
    if ns.json:
        print(json.dumps(scores, indent=1))
    else:
        print(render(scores, results, elapsed, ns.hide_held_out))
    return 0 if goals_met(scores["tuning" if ns.hide_held_out else "all"]) else 1


__all__ = ["main", "run_scenario", "score", "goals_met"]
