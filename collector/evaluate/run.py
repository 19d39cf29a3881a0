"""``python -m collector.evaluate``: build labelled sites, run the offline detector, print figures.

Each site is generated, written as Trace v1 text (to ``--out`` as ``.jsonl.gz`` when given,
else kept in memory), parsed back with ``agent.trace``, windowed by ``agent.pipeline`` —
the agent's own code — and fed to ``collector.detect.engine.run_offline``. Sites run in
parallel worker processes. Seeds are split: the *tuning* seeds are the ones the thresholds
were looked at on; the *held-out* seeds were not used while tuning, and both are reported.

Exit codes: 0 every goal met; 1 a goal missed; 2 usage or data missing.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import gzip
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)

TUNING_SEEDS = (1, 2, 3)
HELD_OUT_SEEDS = (101, 102, 103)


@dataclass(frozen=True)
class Plan:
    """What to build: (site kind, seed, hours) per site, and the sample interval."""

    sites: tuple[tuple[str, int, float], ...]
    sample_interval_s: float
    scale: float
    background_nodes: int


def plan(quick: bool) -> Plan:
    if quick:
        return Plan(
            sites=(("training", TUNING_SEEDS[0], 2.0), ("training", HELD_OUT_SEEDS[0], 2.0), ("background", 1, 3.0)),
            sample_interval_s=20.0,
            scale=0.5,
            background_nodes=34,
        )
    sites = [("training", s, 3.0) for s in TUNING_SEEDS + HELD_OUT_SEEDS]
    sites += [("background", s, 12.0) for s in (TUNING_SEEDS[0], HELD_OUT_SEEDS[0])]
    return Plan(sites=tuple(sites), sample_interval_s=20.0, scale=1.0, background_nodes=40)


def _lines(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    from agent.trace import header

    yield json.dumps(header())
    for r in records:
        yield json.dumps(r, separators=(",", ":"))


def run_site(data_dir: str, kind: str, seed: int, hours: float, p: Plan, out: str | None) -> dict[str, Any]:
    """Build one site, detect on it, and return its truth, findings and timings (worker process)."""
    from agent.pipeline import windows_from_records
    from agent.trace import parse_lines
    from collector.detect.config import DetectConfig
    from collector.detect.engine import DetectorEngine
    from collector.evaluate.data import load
    from collector.evaluate.generate import background_site, training_site
    from collector.tenants import TenantDirectory

    t0 = time.perf_counter()
    data = load(Path(data_dir))
    if kind == "training":
        site = training_site(data, seed, hours, sample_interval_s=p.sample_interval_s, scale=p.scale)
    else:
        site = background_site(data, seed, hours, sample_interval_s=p.sample_interval_s, nodes=p.background_nodes)
    name = f"{site.name}"
    lines: Iterator[str] = _lines(site.records())
    if out:
        path = Path(out) / f"{name}.trace.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as fh:
            for line in lines:
                fh.write(line + "\n")
        (Path(out) / f"{name}.tenants.toml").write_text(site.tenants_toml, encoding="utf-8")
        fh_r = gzip.open(path, "rt", encoding="utf-8")
        lines = iter(fh_r)
    cfg = DetectConfig()
    eng = DetectorEngine(cfg, TenantDirectory.from_toml(site.tenants_toml))
    n = 0
    for w in windows_from_records(parse_lines(lines, name)):
        eng.observe(w)
        n += 1
    eng.finish()
    findings = [f.to_json() for f in eng.findings()]
    truth = [j.to_json() for j in site.jobs]
    if out:
        (Path(out) / f"{name}.truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
        (Path(out) / f"{name}.findings.json").write_text(json.dumps(findings, indent=1), encoding="utf-8")
    return {
        "site": name,
        "kind": kind,
        "seed": seed,
        "held_out": seed in HELD_OUT_SEEDS,
        "truth": truth,
        "findings": findings,
        "background_node_days": site.node_days("background"),
        "node_windows": n,
        "seconds": time.perf_counter() - t0,
        "min_gpus": cfg.min_gpus,
    }


def _truth_job(d: dict[str, Any]) -> Any:
    from collector.evaluate.generate import TruthJob

    return TruthJob(
        id=d["id"],
        kind=d["kind"],
        tenants=tuple(d["tenants"]),
        start_s=d["start_s"],
        end_s=d["end_s"],
        steps=[(float(t), int(g)) for t, g in d["steps"]],
        model=d["model"],
        mfu=d["mfu"],
        flop=d["flop"],
        gpu_s=d["gpu_s"],
    )


def score(results: list[dict[str, Any]]) -> dict[str, Any]:
    from collector.evaluate.metrics import Report, summary

    out: dict[str, Any] = {}
    for label, keep in (
        ("all", lambda r: True),
        ("tuning", lambda r: not r["held_out"]),
        ("held_out", lambda r: r["held_out"]),
    ):
        rep = Report()
        for r in results:
            if keep(r):
                rep.add_site(
                    [_truth_job(j) for j in r["truth"]], r["findings"], r["background_node_days"], r["min_gpus"]
                )
        s = summary(rep)
        s["false_finding_examples"] = [
            {k: f.get(k) for k in ("tenants", "gpus", "nodes", "started_at", "detected_at")}
            for f in rep.false_findings[:5]
        ]
        s["missed"] = [r.job.id for r in rep.jobs if r.detected_at_s is None or not r.named]
        out[label] = s
    return out


def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3g}{unit}"
    return f"{x}{unit}"


def render(scores: dict[str, Any], results: list[dict[str, Any]], elapsed: float) -> str:
    lines = []
    nw = sum(r["node_windows"] for r in results)
    lines.append(f"sites: {len(results)}  node-windows: {nw}  wall time: {elapsed:.0f} s")
    for label in ("all", "tuning", "held_out"):
        s = scores[label]
        lines.append(f"\n== {label} seeds ==")
        lines.append(f"precision: {_fmt(s['precision'])} ({s['findings']} findings, {s['false_findings']} false)")
        for name, v in s["recall_any_time"].items():
            t = s["time_to_detect_s"][name]
            med = None if t["median"] is None else t["median"] / 60
            p95 = None if t["p95"] is None else t["p95"] / 60
            lines.append(
                f"  {name:>9} GPUs: detected+named {v['detected']}/{v['jobs']}; "
                f"time to detect median {_fmt(med, ' min')}, p95 {_fmt(p95, ' min')}"
            )
        for g in s["goals"]:
            ok = "MET" if g["met"] else "NOT MET"
            lines.append(f"  goal {g['goal']}: {_fmt(g['recall'])} ({g['detected']}/{g['eligible']}) {ok}")
        fr = s["false_findings_per_10k_node_days"]
        lines.append(
            f"  false findings per 10k node-days: {_fmt(fr['rate'])} (95% upper {_fmt(fr['upper_95'])}; "
            f"{fr['background_node_days']} node-days) {'MET' if fr['met'] else 'NOT MET'}"
            f"{'' if fr['shown_at_95'] else ' (not shown at 95%: too few node-days)'}"
        )
        fl = s["flop"]
        lines.append(
            f"  FLOP: median |est-truth|/truth {_fmt(fl['median_abs_rel_error'])}, "
            f"p90 {_fmt(fl['p90_abs_rel_error'])}, upper bound below truth "
            f"{fl['upper_bound_below_truth']}/{fl['scored']} {'MET' if fl['met'] else 'NOT MET'}"
        )
        kinds = ", ".join(
            f"{k} {v['named']}/{v['jobs']}" + (f" (+{v['wrong_tenants']} wrong tenants)" if v["wrong_tenants"] else "")
            for k, v in sorted(s["by_kind"].items())
        )
        lines.append(f"  by kind (named/jobs): {kinds}")
        if s["missed"]:
            lines.append(f"  missed: {', '.join(s['missed'])}")
        if s["false_finding_examples"]:
            lines.append(f"  false findings: {s['false_finding_examples']}")
    return "\n".join(lines)


def goals_met(scores: dict[str, Any]) -> bool:
    s = scores["all"]
    return all(g["met"] for g in s["goals"]) and s["false_findings_per_10k_node_days"]["met"] and s["flop"]["met"]


def default_data_dir() -> Path:
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m collector.evaluate",
        description="Evaluate the detector on labelled traces built from the public data (issue 6).",
    )
    ap.add_argument("--data", type=Path, default=None, help="public data directory (default: ../shared/data)")
    ap.add_argument("--quick", action="store_true", help="a smaller run for CI (~3 min on 2 cores)")
    ap.add_argument("--out", type=Path, help="write traces, truth, findings and the report here")
    ap.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 4), help="worker processes")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ns = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from collector.evaluate.data import DataMissingError, load

    data_dir = ns.data or default_data_dir()
    try:
        load(data_dir)
    except DataMissingError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 2
    if ns.out:
        ns.out.mkdir(parents=True, exist_ok=True)
    p = plan(ns.quick)
    t0 = time.perf_counter()
    out = str(ns.out) if ns.out else None
    # Longest sites first so the pool stays busy.
    order = sorted(p.sites, key=lambda x: -x[2])
    with cf.ProcessPoolExecutor(max_workers=max(1, ns.jobs)) as pool:
        futs = [pool.submit(run_site, str(data_dir), k, s, h, p, out) for k, s, h in order]
        results = []
        for fut in cf.as_completed(futs):
            r = fut.result()
            print(
                f"  {r['site']}: {r['node_windows']} node-windows, {len(r['findings'])} findings, {r['seconds']:.0f} s",
                file=sys.stderr,
            )
            results.append(r)
    results.sort(key=lambda r: r["site"])
    elapsed = time.perf_counter() - t0
    scores = score(results)
    if ns.out:
        (ns.out / "report.json").write_text(
            json.dumps({"scores": scores, "elapsed_s": elapsed}, indent=1), encoding="utf-8"
        )
    if ns.json:
        print(json.dumps(scores, indent=1))
    else:
        print(render(scores, results, elapsed))
    return 0 if goals_met(scores) else 1


__all__ = ["main", "plan", "run_site", "score", "TUNING_SEEDS", "HELD_OUT_SEEDS"]
