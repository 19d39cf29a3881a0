"""The scenario generators (collector.evaluate.scenarios): physics, shapes, negatives, shocks, masks, loss.

Built without the public data (a tiny stand-in ``PublicData``), so they run in any clone.
"""

from __future__ import annotations

import json
import random
import statistics
from collections import defaultdict
from typing import Any

import pytest

from collector.evaluate.data import ItpJob, PublicData
from collector.evaluate.scenarios import masks
from collector.evaluate.scenarios.family import HELD_OUT_FAMILIES, Scenario, build, plan
from collector.evaluate.scenarios.loss import LOSSES, LOST_READING, Loss
from collector.evaluate.scenarios.negatives import NEGATIVES, fleet
from collector.evaluate.scenarios.physics import MODELS, make_node, read
from collector.evaluate.scenarios.shocks import SHOCKS, make_shocks
from collector.evaluate.scenarios.site import Site
from collector.evaluate.scenarios.training import SHAPES, TrainingRun
from core.pipeline import windows_from_records
from core.trace import header, parse_lines

DATA = PublicData(itp=(ItpJob(8, 3600.0), ItpJob(1, 1800.0), ItpJob(4, 7200.0)), sources=())
T0 = 1_772_409_600.0


def _windows(site: Site) -> list[Any]:
    lines = [json.dumps(header())] + [json.dumps(r) for r in site.records()]
    return list(windows_from_records(parse_lines(lines, site.name)))


def _site(rng: random.Random, minutes: int = 60, interval: float = 20.0, shock: str = "none") -> Site:
    model = MODELS["H100"]
    shocks = make_shocks(rng, shock, T0, minutes * 60)
    return Site("s", 1, T0, minutes * 60, interval, model, shocks)


def _corr(a: list[float], b: list[float]) -> float:
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va = sum((x - ma) ** 2 for x in a) ** 0.5
    vb = sum((y - mb) ** 2 for y in b) ** 0.5
    return cov / (va * vb) if va and vb else 0.0


def _per_minute(tl: Any, k0: int, k1: int, field: str = "drive") -> list[float]:
    arr = getattr(tl, field)
    return [statistics.fmean(arr[k - tl.k0] for k in range(m, m + 60)) for m in range(k0, k1 - 59, 60)]


def test_a_data_parallel_jobs_nodes_share_the_jobs_per_window_throughput() -> None:
    rng = random.Random(3)
    site = _site(rng, 90)
    nodes = [make_node(rng, f"n{i}", site.model, 20.0) for i in range(8)]
    run = TrainingRun(rng, "dp", nodes, ["t-a"], 300, 5100, site.shocks, T0)
    # Every node does the same useful work in every minute (step-synchronous).
    per_node = [_per_minute(run.tl_of[j], 600, 5100, "progress") for j in range(8)]
    for other in per_node[1:]:
        assert other == per_node[0]
    # And the readings agree: per-minute mean power of any two nodes correlates strongly.
    site.components.append(run)
    power: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in site.records():
        if r["type"] == "sample" and r["t"] >= T0 + 600:
            power[r["node"]][int((r["t"] - T0) // 60)].append(statistics.fmean(g["power_w"] for g in r["gpus"]))
    names = sorted(power)
    minutes = sorted(set.intersection(*(set(power[n]) for n in names)))
    series = [[statistics.fmean(power[n][m]) for m in minutes] for n in names]
    assert min(_corr(series[0], s) for s in series[1:]) > 0.6


def test_a_one_node_fleets_nodes_are_independent() -> None:
    rng = random.Random(5)
    site = _site(rng, 120)
    nodes = [make_node(rng, f"n{i}", site.model, 20.0) for i in range(8)]
    comp = fleet(rng, "fleet_same_minute", nodes, "t-b", 7200, site.shocks, T0, [ItpJob(8, 7200.0)])
    tls = [comp.slots[j][0][0][0] for j in range(8)]
    assert len({id(t) for t in tls}) == 8, "each node runs its own job"
    lo = max(t.k0 for t in tls) + 600
    hi = min(t.k1 for t in tls)
    assert hi - lo >= 1200
    series = [_per_minute(t, lo, hi) for t in tls]
    corrs = [_corr(series[a], series[b]) for a in range(8) for b in range(a + 1, 8)]
    assert statistics.fmean(corrs) < 0.3
    assert comp.truths[0].positive is False and comp.truths[0].max_severity == "none"


@pytest.mark.parametrize("interval", [1, 10, 20, 30, 60])
def test_sample_intervals_give_the_right_number_of_samples_per_window(interval: int) -> None:
    rng = random.Random(interval)
    site = _site(rng, 12 if interval == 1 else 30, float(interval))
    nodes = [make_node(rng, f"n{i}", site.model, float(interval)) for i in range(2)]
    site.components.append(TrainingRun(rng, "dp", nodes, ["t-a"], 0, site.duration_s, site.shocks, T0))
    ws = _windows(site)
    counts = [w.gpus[0].samples for w in ws[2:-2]]
    assert counts and statistics.median(counts) == 60 // interval
    assert all(abs(c - 60 // interval) <= 1 for c in counts)
    assert all(w.sample_interval_ms == pytest.approx(interval * 1000, rel=0.05) for w in ws)


@pytest.mark.parametrize("mask", masks.MASKS)
def test_masks_mark_fields_unavailable_instead_of_zero(mask: str) -> None:
    rng = random.Random(11)
    site = _site(rng, 10, 10.0)
    nodes = [make_node(rng, f"n{i}", site.model, 10.0) for i in range(2)]
    site.components.append(TrainingRun(rng, "dp", nodes, ["t-a"], 0, site.duration_s, site.shocks, T0))
    w = _windows(site)[4]
    m = masks.apply(w, mask)
    g, g0 = m.gpus[0], w.gpus[0]
    assert g0.power_mean_mw and g0.util_mean_permille and g0.sm_active_mean_permille is not None
    assert w.node_io is not None and w.node_io.ib_tx_bytes
    dropped = {
        "all": set(),
        "util_only": {
            "power_mean_mw",
            "power_max_mw",
            "energy_start_mj",
            "energy_end_mj",
            "sm_active_mean_permille",
            "tensor_active_mean_permille",
        },
        "power_only": {"util_mean_permille", "sm_active_mean_permille", "tensor_active_mean_permille"},
        "no_series": set(),
        "no_gpm": {"sm_active_mean_permille", "tensor_active_mean_permille"},
        "no_ib": set(),
        "no_energy": {"energy_start_mj", "energy_end_mj"},
    }[mask]
    for f in dropped:
        assert getattr(g, f) is None and g.unavailable[f] == masks.ABSENT
    for f in {"power_mean_mw", "util_mean_permille", "energy_end_mj", "sm_active_mean_permille"} - dropped:
        assert getattr(g, f) == getattr(g0, f)
    if mask == "no_series":
        assert g.series is None and g.unavailable["series"] == masks.ABSENT
    if mask == "util_only":
        assert g.series is not None and all(v is None for v in g.series.power_mw)
        assert any(v for v in g.series.util_permille)
    if mask in ("util_only", "power_only", "no_ib"):
        assert m.node_io is not None and m.node_io.ib_tx_bytes is None and m.node_io.ib_rx_bytes is None
        assert m.unavailable["ib_tx_bytes"] == masks.ABSENT
        assert m.node_io.net_tx_bytes == w.node_io.net_tx_bytes
    if mask == "all":
        assert m is w


def test_storage_stall_hits_training_and_inference_and_power_cap_leaves_util() -> None:
    rng = random.Random(2)
    site = _site(rng, 60, 10.0, "storage_stall")
    a, b = site.shocks.stalls[0]
    from collector.evaluate.scenarios.negatives import inference_multi

    nodes = [make_node(rng, f"n{i}", site.model, 10.0) for i in range(6)]
    run = TrainingRun(rng, "dp", nodes[:3], ["t-a"], 0, 3600, site.shocks, T0)
    inf = inference_multi(rng, nodes[3:], "t-b", 3600, site.shocks, T0)
    for k in range(a, b):
        assert run.tl_of[0].at(k)[0] < 0.1
        assert inf.slots[0][0][0][0].at(k)[0] < 0.1
    cap_site = _site(random.Random(4), 60, 10.0, "power_cap")
    ca, cb, frac = cap_site.shocks.caps[0]
    run2 = TrainingRun(
        random.Random(1), "dp", [make_node(rng, "m", site.model, 10.0)], ["t-c"], 0, 3600, cap_site.shocks, T0
    )
    cap_site.components.append(run2)
    seen = 0
    for r in cap_site.records():
        if r["type"] == "sample" and ca + 5 <= r["t"] - T0 < cb - 5:
            mode = run2.clock.mode[int(r["t"] - T0)]
            if mode == 2:  # training
                seen += 1
                assert all(g["power_w"] <= frac * 700.0 + 0.1 for g in r["gpus"])
                assert all(g["util_pct"] > 90 for g in r["gpus"])
    assert seen > 10


def test_fabric_stall_spares_single_node_jobs() -> None:
    rng = random.Random(6)
    site = _site(rng, 60, 10.0, "fabric")
    a, b = site.shocks.fabric[0]
    nodes = [make_node(rng, f"n{i}", site.model, 10.0) for i in range(4)]
    run = TrainingRun(rng, "dp", nodes[:2], ["t-a"], 0, 3600, site.shocks, T0)
    solo = fleet(rng, "fleet_back_to_back", nodes[2:], "t-b", 3600, site.shocks, T0, [])
    k = (a + b) // 2
    busy, drive = run.tl_of[0].at(k)
    assert busy > 0.9 and drive < 0.15  # blocked in a collective: kernels spin, power falls
    st = solo.gpu_state(0, 0, k)
    assert st is None or st[0].at(k)[1] > 0.15 or st[0].at(k)[0] < 0.5  # not the fabric's signature


def test_truth_flop_is_mfu_times_peak_times_progress() -> None:
    rng = random.Random(8)
    site = _site(rng, 60)
    nodes = [make_node(rng, f"n{i}", MODELS["B200"], 20.0) for i in range(2)]
    run = TrainingRun(rng, "dp", nodes, ["t-a"], 300, 3300, site.shocks, T0)
    tj = run.truths[0]
    progress = sum(run.tl_of[0].progress)
    assert tj.flop == pytest.approx(progress * 16 * tj.mfu * MODELS["B200"].peak_bf16)
    assert 0.7 * 3000 * 16 < tj.gpu_s <= 3000 * 16
    assert tj.first_at_least(16) is not None and tj.first_at_least(16) >= T0 + 300 + 60


def test_restarts_and_grow_shrink_truth_steps() -> None:
    rng = random.Random(9)
    site = _site(rng, 120)
    nodes = [make_node(rng, f"n{i}", site.model, 20.0) for i in range(10)]
    run = TrainingRun(rng, "restarts", nodes, ["t-a"], 300, 7000, site.shocks, T0, gpus=64)
    steps = run.truths[0].steps
    assert steps[0][1] == 64 and any(g == 0 for _, g in steps) and steps[-1][1] == 64
    members = [{j for j in range(10) if any(a <= k < b for a, b in run.spans[j])} for k in (400, 6900)]
    assert len(members[0]) == len(members[1]) == 8 and members[0] != members[1]
    nodes2 = [make_node(rng, f"m{i}", site.model, 20.0) for i in range(10)]
    grow = TrainingRun(rng, "grow_shrink", nodes2, ["t-b"], 300, 7000, site.shocks, T0)
    sizes = [g for _, g in grow.truths[0].steps]
    assert sizes[0] < sizes[1] == 80 and sizes[2] < 80


def test_accounts_split_a_run_including_single_node_accounts() -> None:
    rng = random.Random(10)
    site = _site(rng, 60)
    nodes = [make_node(rng, f"n{i}", site.model, 20.0) for i in range(16)]
    accts = [f"t-{i}" for i in range(5)]
    run = TrainingRun(rng, "multi_account", nodes, accts, 300, 3300, site.shocks, T0)
    per: dict[str, int] = defaultdict(int)
    for j in range(16):
        per[run.procs[j][0].tenant] += 1
    assert set(per) == set(accts) and min(per.values()) == 1
    assert set(run.truths[0].tenants) == set(accts)


def test_a_slurm_job_has_one_id_on_every_node_and_a_kubernetes_job_one_pod_per_node() -> None:
    """What the agent reports: a Slurm job id is the same on every node of the job; a
    Kubernetes job runs one pod per node, and a pod's namespace/name is its workload id."""
    kinds: set[str] = set()
    for seed in range(12):
        rng = random.Random(seed)
        site = _site(rng, 60)
        nodes = [make_node(rng, f"n{i}", site.model, 20.0) for i in range(6)]
        run = TrainingRun(rng, "dp", nodes, ["t-a"], 300, 1500, site.shocks, T0)
        ids = {p.workload for procs in run.procs for p in procs}
        kind = run.procs[0][0].kind
        kinds.add(kind)
        assert len(ids) == (1 if kind == "slurm_job" else len(nodes)), (kind, ids)
    assert kinds == {"slurm_job", "k8s_pod"}


def test_loss_drops_whole_node_windows_in_outages_and_leaves_unread_gpus_without_readings() -> None:
    rng = random.Random(5)
    site = _site(rng, 240, 60.0)
    nodes = [make_node(rng, f"n{i}", site.model, 60.0) for i in range(12)]
    site.components.append(TrainingRun(rng, "dp", nodes, ["t-a"], 0, site.duration_s, site.shocks, T0))
    ws = _windows(site)
    assert Loss("none", 3).window(ws[0]) is ws[0]
    loss = Loss("outages", 3)
    kept = [loss.window(w) for w in ws]
    lost = [w for w, k in zip(ws, kept, strict=True) if k is None]
    # About one outage per node every 90 minutes, most of them short: a few percent of the
    # windows, in runs of consecutive minutes of one node.
    assert 0.005 < len(lost) / len(ws) < 0.15
    by_node: dict[str, list[int]] = defaultdict(list)
    for w in lost:
        by_node[w.node_id].append(w.start_ms // 60_000)
    assert any(any(b - a == 1 for a, b in zip(ks, ks[1:], strict=False)) for ks in by_node.values())
    unread = [g for k in kept if k is not None for g in k.gpus if g.samples == 0]
    assert unread, "some GPUs go unread"
    for g in unread:
        assert g.unavailable["readings"] == LOST_READING
        assert g.util_mean_permille is None and g.power_mean_mw is None
        assert g.energy_end_mj == g.energy_start_mj  # the carried reading, as the agent writes it
        assert g.workloads == () and g.series is None
    read_ok = [g for k in kept if k is not None for g in k.gpus if g.samples > 0]
    assert all(g.util_mean_permille is not None for g in read_ok)
    # The same seed loses the same windows; another seed others.
    again = Loss("outages", 3)
    assert [again.window(w) is None for w in ws] == [k is None for k in kept]
    other = Loss("outages", 4)
    assert [other.window(w) is None for w in ws] != [k is None for k in kept]
    with pytest.raises(ValueError, match="unknown loss"):
        Loss("most", 1)


def test_names_are_random_ids_and_the_plan_holds_families_out() -> None:
    sc = Scenario(
        "x",
        7,
        60,
        "A100",
        "aligned_checkpoints",
        60,
        (("rl", 64, "opaque"), ("multi_account", 64, "absent")),
        (("hp_sweep", 64), ("itp_small", 48)),
    )
    site = build(sc, DATA)
    words = set(SHAPES) | set(NEGATIVES) | {"train", "infer", "sweep", "fleet"}
    names: set[str] = set()
    for r in site.records():
        names.add(r["node"])
        if r["type"] == "sample":
            for g in r["gpus"]:
                for p in g["procs"]:
                    names.update((p["tenant"], p["workload"]))
    assert not any(w in n for n in names for w in words)
    for quick in (True, False):
        scenarios = plan(quick)
        for s in scenarios:
            fams = {p[0] for p in s.positives}
            if not s.held_out:
                assert not fams & set(HELD_OUT_FAMILIES)
        assert {s.interval_s for s in scenarios} == {1, 10, 15, 20, 30, 45, 60}
        assert {s.shock for s in scenarios} == set(SHOCKS)
        assert {s.loss for s in scenarios} == set(LOSSES)
        assert {s.model for s in scenarios} == set(MODELS)
        assert {m for s in scenarios for m in s.masks} == set(masks.MASKS)
        assert {p[0] for s in scenarios for p in s.positives} == set(SHAPES)
        assert {n[0] for s in scenarios for n in s.negatives} == set(NEGATIVES)
        assert any(s.held_out for s in scenarios)


def test_physics_per_model() -> None:
    rng = random.Random(1)
    for key, m in MODELS.items():
        node = make_node(rng, "n", m, 10.0)
        g = node.gpus[0]
        idle = read(rng, m, g, 0.0, 0.0)
        busy = read(rng, m, g, 0.98, 1.0)
        assert idle[1] < 0.16 * m.limit_w, key
        assert 0.6 * m.limit_w < busy[1] <= m.limit_w * 1.02, key
        assert busy[0] > 95 and idle[0] < 2
        capped = read(rng, m, g, 0.98, 1.0, cap_w=0.6 * m.limit_w)
        assert capped[1] <= 0.6 * m.limit_w and capped[0] > 95


def test_a_gb200_site_has_four_gpus_per_node_and_sizes_jobs_in_gpus() -> None:
    """GPUs per node is the model's (a GB200 NVL72 tray holds 4): a job of 64 GPUs takes 16
    nodes, a negative its nodes' worth, and the windows carry four GPUs a node."""
    sc = Scenario(
        "x",
        11,
        30,
        "GB200",
        "none",
        45,
        (("dp", 64, "opaque"),),
        (("fleet_random", 8 * 4),),
    )
    site = build(sc, DATA)
    assert site.node_count() == 64 // 4 + 8
    (run,) = [t for t in site.truths if t.positive]
    assert run.peak_gpus == 64
    (neg,) = [t for t in site.truths if not t.positive]
    assert neg.peak_gpus == 32
    ws = _windows(site)
    assert ws and {len(w.gpus) for w in ws} == {4}
    assert {g.power_limit_mw for w in ws for g in w.gpus} == {1_200_000}


@pytest.mark.slow
def test_every_planned_scenario_builds() -> None:
    for quick in (True, False):
        for sc in plan(quick):
            site = build(sc, DATA)
            assert site.truths and site.node_count() > 0, sc.name
            assert {t.family for t in site.truths if t.positive} == {p[0] for p in sc.positives}
