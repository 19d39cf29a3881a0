"""The detector on the classes of data it used to fail on (coarse samples, common shocks,
phased runs, low-and-slow training, undercounting, group subjects) and on what must stay
quiet. Each site here is built from a few lines of physics, not from the evaluation's
generators: a synchronous job's nodes share the job's per-window step rate; independent
jobs do not; a common shock moves every tenant of the site at once.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import pytest

from attestation.statement import Chain, GpuWindow, NodeIo, Series, UsageWindow, Workload
from collector.detect.config import DetectConfig
from collector.detect.coupling import measure, measure_between
from collector.detect.engine import DetectorEngine
from collector.detect.findings import Finding
from collector.tenants import TenantDirectory

T0_MS = 1_772_424_000_000
WINDOW_MS = 60_000
H100 = "NVIDIA H100 80GB HBM3"
LIMIT_MW = 700_000
BUCKET_MS = 10_000

TENANTS = TenantDirectory.from_toml(
    """
[[tenant]]
id = "t-open"
country = "DE"
registered = 2001-01-01
ultimate_parent_country = "DE"
beneficial_owners_disclosed = true
nominee_directors = false
declared_use = "model training"
kyc_level = "enhanced"
"""
)

# (util 0..1, power fraction of limit) of one GPU at one sample, or None: not occupied.
Level = Callable[[int, int, float, random.Random], tuple[float, float] | None]


@dataclass
class Nodes:
    """``count`` nodes of ``tenant``; ``level(node, window, t_in_window_s, rng)`` per sample."""

    prefix: str
    count: int
    tenant: str
    level: Level
    workload: Callable[[int, int], str] = lambda n, k: "wl-job"
    ib_bytes_per_s: float | None = None
    net_bytes_per_s: float | None = None


@dataclass
class Site:
    groups: list[Nodes]
    windows: int
    sample_s: int = 10
    seed: int = 1
    shock: Callable[[int, float], float] = lambda k, t: 1.0
    """Multiplier of every occupied GPU's load at window ``k``, time ``t`` (a common shock)."""
    series: bool = True
    extra: list[UsageWindow] = field(default_factory=list)

    def stream(self) -> list[UsageWindow]:
        rng = random.Random(self.seed)
        integral = random.Random(self.seed + 2)
        out: list[UsageWindow] = []
        n_buckets = WINDOW_MS // BUCKET_MS
        # Each node's agent samples at its own phase of the interval, the same window after
        # window (it started when the node booted), plus a little jitter.
        phases = random.Random(self.seed + 1)
        node_phase = {(g.prefix, n): phases.uniform(0, self.sample_s) for g in self.groups for n in range(g.count)}
        for k in range(self.windows):
            start = T0_MS + k * WINDOW_MS
            for g in self.groups:
                for n in range(g.count):
                    node = f"{g.prefix}-n{n:04d}"
                    phase = min(self.sample_s - 0.01, max(0.0, node_phase[(g.prefix, n)] + rng.gauss(0.0, 0.1)))
                    times = [phase + i * self.sample_s for i in range(int(60 // self.sample_s) + 1)]
                    times = [t for t in times if t < 60]
                    gpus = []
                    for i in range(8):
                        b_u: list[list[float]] = [[] for _ in range(n_buckets)]
                        b_p: list[list[float]] = [[] for _ in range(n_buckets)]
                        occupied = True
                        for t in times:
                            lv = g.level(n, k, t, rng)
                            if lv is None:
                                occupied = False
                                break
                            m = self.shock(k, t)
                            u, p = lv
                            b = int(t * 1000 // BUCKET_MS)
                            b_u[b].append(min(1.0, u * m))
                            b_p[b].append(max(0.08, p * m))
                        if not occupied:
                            gpus.append(_gpu(i, node, None, None, None))
                            continue
                        util = [sum(x) / len(x) if x else None for x in b_u]
                        power = [sum(x) / len(x) if x else None for x in b_p]
                        wl = g.workload(n, k)
                        # The energy counter integrates what the board drew over the window,
                        # not the few readings: the level every 5 s (its own noise drawn apart,
                        # so the readings stay what they were).
                        grid = range(0, 60, 5)
                        drawn = [g.level(n, k, t, integral) for t in grid]
                        energy_p = statistics.fmean(
                            max(0.08, lv[1] * self.shock(k, t)) for t, lv in zip(grid, drawn, strict=True) if lv
                        )
                        use = Workload(g.tenant, "k8s_pod", wl, 1, 60 << 30, 1000, 0)
                        gpus.append(_gpu(i, node, util, power, use, energy_p))
                    io = None
                    if g.ib_bytes_per_s is not None:
                        b = int(g.ib_bytes_per_s * 30)
                        e = None if g.net_bytes_per_s is None else int(g.net_bytes_per_s * 30)
                        io = NodeIo(ib_tx_bytes=b, ib_rx_bytes=b, net_tx_bytes=e, net_rx_bytes=e)
                    out.append(
                        UsageWindow(
                            node_id=node,
                            boot_id="b",
                            agent_version="test",
                            start_ms=start,
                            end_ms=start + WINDOW_MS,
                            sample_interval_ms=self.sample_s * 1000,
                            chain=Chain("k", k, None if k == 0 else "0" * 64),
                            gpus=tuple(gpus),
                            node_io=io,
                        )
                    )
        return out + self.extra

    def run(self, config: DetectConfig | None = None) -> list[Finding]:
        eng = DetectorEngine(config or DetectConfig(), TENANTS)
        for w in self.stream():
            eng.observe(w)
        eng.finish()
        return eng.findings()


def _gpu(
    i: int,
    node: str,
    util: list[float | None] | None,
    power: list[float | None] | None,
    wl: Workload | None,
    energy_p: float | None = None,
) -> GpuWindow:
    if util is None or power is None or wl is None:
        return GpuWindow(
            index=i, uuid=f"GPU-{node}-{i}", serial=None, model=H100, mem_total_bytes=80 << 30,
            power_limit_mw=LIMIT_MW, samples=6, energy_start_mj=0, energy_end_mj=1, power_mean_mw=70_000,
            power_max_mw=80_000, util_mean_permille=0, mem_used_max_bytes=0, workloads=(),
        )  # fmt: skip
    us = [u for u in util if u is not None]
    ps = [p for p in power if p is not None]
    mean_mw = int(sum(ps) / len(ps) * LIMIT_MW)
    drawn_mw = mean_mw if energy_p is None else int(energy_p * LIMIT_MW)
    return GpuWindow(
        index=i,
        uuid=f"GPU-{node}-{i}",
        serial=None,
        model=H100,
        mem_total_bytes=80 << 30,
        power_limit_mw=LIMIT_MW,
        samples=len(us),
        # The counter moves by what the board drew over the window (mW times its 60 s).
        energy_start_mj=0,
        energy_end_mj=drawn_mw * WINDOW_MS // 1000,
        power_mean_mw=mean_mw,
        power_max_mw=int(max(ps) * LIMIT_MW),
        util_mean_permille=int(sum(us) / len(us) * 1000),
        mem_used_max_bytes=60 << 30,
        series=Series(
            BUCKET_MS,
            tuple(None if u is None else int(u * 1000) for u in util),
            tuple(None if p is None else int(p * LIMIT_MW) for p in power),
        ),
        workloads=(wl,),
    )


# ---------------------------------------------------------------------- workload physics


def sync_job(level: float = 0.72, util: float = 0.95, seed: int = 0, start: int = 0, end: int = 10**9) -> Level:
    """A synchronous job: every rank shares the job's step rate (stragglers and congestion slow
    all of them), plus per-sample noise of its own (where in the step it is)."""
    job_rng = random.Random(seed)
    rate = [job_rng.gauss(0.0, 0.05) for _ in range(2001)]
    checkpoint_every = job_rng.randrange(9, 14)
    # The step rate wanders in continuous time (linearly between knots a minute apart, off the
    # windows' grid): what a node reads depends on when it samples.
    shift = job_rng.uniform(0.0, 60.0)

    def f(n: int, k: int, t: float, rng: random.Random) -> tuple[float, float] | None:
        if not start <= k < end:
            return None
        x = (k * 60 + t - shift) / 60 + 1
        j = int(x)
        r = rate[j] + (x - j) * (rate[j + 1] - rate[j])
        since = (k - start) * 60 + t - shift
        if since % (60 * checkpoint_every) >= 60 * checkpoint_every - 30:
            r -= 0.4  # the whole job pauses 30 s to checkpoint, every few minutes
        return util * (1 + r / 2), level * (1 + r) + rng.gauss(0.0, 0.06)

    return f


def independent_jobs(level: float = 0.72, seed: int = 0, job_windows: tuple[int, int] = (20, 60)) -> Level:
    """Each node runs its own job, back to back; each job has its own step rate and pauses."""
    rng0 = random.Random(seed)
    per_node: dict[int, list[float]] = {}
    boundaries: dict[int, set[int]] = {}

    def f(n: int, k: int, t: float, rng: random.Random) -> tuple[float, float] | None:
        if n not in per_node:
            per_node[n] = [rng0.gauss(0.0, 0.05) for _ in range(2000)]
            b, cut = set(), 0
            while cut < 2000:
                cut += rng0.randrange(*job_windows)
                b.add(cut)
            boundaries[n] = b
        r = per_node[n][k]
        if k in boundaries[n] and t < 40:
            r -= 0.8  # this node's job ended; the next one loads
        return 0.95 * (1 + r / 2), level * (1 + r) + rng.gauss(0.0, 0.06)

    return f


# ---------------------------------------------------------------------- the coupling statistic


def test_one_shared_excursion_is_not_coupling_but_agreement_over_episodes_is() -> None:
    rng = random.Random(3)
    n = 30
    shock = [0.0] * n
    shock[12] = shock[13] = -1.0  # one stall, two windows
    independent = {f"u{i}": [rng.gauss(0, 0.05) + shock[t] for t in range(n)] for i in range(12)}
    eps = [t // 3 for t in range(n)]
    c = measure(independent, eps, scale="across_windows", min_points=8)
    assert c is not None and c.corr_all_episodes > 0.3, "the shared stall dominates a correlation"
    assert c.corr < 0.1 and not c.fired(0.1, 4.0), c
    common = [rng.gauss(0, 0.05) for _ in range(n)]
    coupled = {f"u{i}": [common[t] + rng.gauss(0, 0.05) for t in range(n)] for i in range(12)}
    c = measure(coupled, eps, scale="across_windows", min_points=8)
    assert c is not None and c.fired(0.1, 4.0) and c.corr > 0.3, c


def test_the_unit_that_moves_most_does_not_choose_the_episodes_left_out() -> None:
    """A batch fleet started together: every node is flat at its power but for the common
    start (one shared step), and one node swings widely on its own. Weighed by size, that
    node's swings made its episodes the ones "agreeing most", they were left out, and the
    shared start stayed in (0.27 at z 7 on a real site). Each unit weighs the same: the start
    is left out and nothing is coupled."""
    rng = random.Random(4)
    n = 14
    eps = [t // 3 for t in range(n)]
    units: dict[str, list[float | None]] = {
        f"q{i}": [None, 0.2] + [rng.gauss(0, 0.002) for _ in range(n - 2)] for i in range(23)
    }
    units["loud"] = [None] + [rng.choice((-0.4, -0.2, 0.0, 0.2)) for _ in range(n - 1)]
    c = measure(units, eps, scale="across_windows", min_points=12)
    assert c is not None and not c.fired(0.08, 4.0), c


def test_a_link_test_leaves_out_where_the_two_sides_agree_not_where_one_side_does() -> None:
    """Unrelated A and B share one shock; B's own nodes (one job) agree most in two other
    episodes. Leaving out B's episodes would keep the shared shock and link A to B."""
    rng = random.Random(0)
    n = 30
    eps = [t // 3 for t in range(n)]
    own_b = [rng.gauss(0, 0.05) for _ in range(n)]
    for t in (0, 1, 2, 3, 4, 5):
        own_b[t] += 0.6 if t % 2 else -0.6  # B's job: two checkpoint-like swings of its own
    shock = [(-0.5 if t in (18, 19) else 0.0) for t in range(n)]
    a = {"a0": [rng.gauss(0, 0.05) + shock[t] for t in range(n)]}
    b = {f"b{i}": [own_b[t] + rng.gauss(0, 0.02) + shock[t] for t in range(n)] for i in range(8)}
    res = measure_between(a, b, eps, scale="across_windows", min_points=8)
    assert res is not None and not res.fired(0.1, 4.0, 0.3), res
    # Control: A that moves with B's job throughout is linked.
    a_job = {"a0": [own_b[t] + rng.gauss(0, 0.02) + shock[t] for t in range(n)]}
    res = measure_between(a_job, b, eps, scale="across_windows", min_points=8)
    assert res is not None and res.fired(0.1, 4.0, 0.3), res


def test_units_that_move_only_in_the_episodes_left_out_cannot_tell() -> None:
    """A job at its power limit is flat but for its checkpoints: once those are left out
    nothing is left to correlate, and that is "cannot tell" (None), not "uncoupled" (0)."""
    n = 30
    flat = {f"u{i}": [(-0.5 if t in (7, 8, 19, 20) else 0.0) for t in range(n)] for i in range(8)}
    assert measure(flat, [t // 3 for t in range(n)], scale="across_windows", min_points=8) is None


def test_clusters_that_move_apart_are_not_one_job() -> None:
    """Instances of two nodes each move together, instances independently: the median pair is not coupled."""
    rng = random.Random(5)
    n = 30
    units = {}
    for inst in range(8):
        base = [rng.gauss(0, 0.1) for _ in range(n)]
        for j in range(2):
            units[f"i{inst}-{j}"] = [b + rng.gauss(0, 0.03) for b in base]
    c = measure(units, [t // 3 for t in range(n)], scale="across_windows", min_points=8)
    assert c is not None and not c.fired(0.1, 4.0), c


def test_instances_that_share_a_little_demand_are_counted_as_instances_not_as_nodes() -> None:
    """Serving instances of 2-4 nodes (each instance's nodes near-copies of one another) that
    share a little demand across instances: the median pair is above the bar, and counted as
    91 independent pairs it reads coupled. There are five instances, not fourteen nodes: the
    test between clusters stands on the pairs between instances and counts one pair per two
    instances. Nodes of one job with the same weak agreement everywhere are not split by a
    pair close by chance, and nodes of one job that agree closely are one cluster: the job."""
    rng = random.Random(11)
    n = 22
    eps = [t // 3 for t in range(n)]
    demand = [rng.gauss(0, 0.1) for _ in range(n)]
    fleet: dict[str, list[float | None]] = {}
    for inst, size in enumerate((4, 3, 3, 2, 2)):
        own = [rng.gauss(0, 0.2) for _ in range(n)]
        for j in range(size):
            fleet[f"i{inst}-{j}"] = [d + o + rng.gauss(0, 0.06) for d, o in zip(demand, own, strict=True)]
    c = measure(fleet, eps, scale="across_windows", min_points=12)
    assert c is not None and c.pairs == 91 and c.fired(0.08, 4.0), "over every pair the fleet reads coupled"
    apart = c.between_clusters
    assert apart is not None and apart.clusters == 5 and apart.pairs == 77, c
    assert apart.corr > 0.08 and not apart.fired(0.08, 4.0), apart
    assert "between_clusters" in c.to_json()
    job = [rng.gauss(0, 0.1) for _ in range(30)]  # a full across-windows history
    long_eps = [t // 3 for t in range(30)]
    weak = {f"n{i}": [j + rng.gauss(0, 0.15) for j in job] for i in range(24)}  # pairs at ~0.3
    c = measure(weak, long_eps, scale="across_windows", min_points=12)
    assert c is not None and c.fired(0.08, 4.0), c
    assert c.between_clusters is None or c.between_clusters.fired(0.08, 4.0), "a pair close by chance"
    close = {f"n{i}": [j + rng.gauss(0, 0.02) for j in job] for i in range(14)}
    c = measure(close, long_eps, scale="across_windows", min_points=12)
    assert c is not None and c.between_clusters is None and c.fired(0.5, 8.0), c


def test_units_read_at_different_phases_with_no_point_in_common_cannot_tell() -> None:
    """Nodes read every 20 s at their own phases fill different 10-s buckets. A pair with no
    bucket in common says nothing about coupling: it is left out, not counted as zero (which
    made one job's nodes read "uncoupled" at a median of exactly 0)."""
    rng = random.Random(7)
    n = 60
    eps = [t // 6 for t in range(n)]
    job = [rng.gauss(0, 0.1) for _ in range(n)]

    def node(parity: int) -> list[float | None]:
        return [job[t] + rng.gauss(0, 0.03) if t % 2 == parity else None for t in range(n)]

    assert measure({"even": node(0), "odd": node(1)}, eps, scale="within_windows", min_points=24) is None
    mixed = {f"n{i}": node(i % 2) for i in range(8)}  # 12 pairs share their buckets, 16 share none
    c = measure(mixed, eps, scale="within_windows", min_points=24)
    assert c is not None and c.pairs == 12 and c.fired(0.3, 4.0), c
    apart = measure_between({"a": node(0)}, {"b": node(1)}, eps, scale="within_windows", min_points=24)
    assert apart is None


# ---------------------------------------------------------------------- 1. coarse sampling


def test_a_run_sampled_every_30_s_is_found_from_window_means() -> None:
    site = Site([Nodes("tr", 16, "t-a", sync_job(seed=1))], windows=30, sample_s=30)
    (f,) = site.run()
    sync = f.evidence["signals"]["synchrony_corr"]
    assert sync["state"] == "coupled" and f.gpus == 128
    assert f.detected_at_ms - T0_MS <= 20 * WINDOW_MS


def test_strong_coupling_counts_before_the_full_history_and_weaker_coupling_waits_for_it() -> None:
    """One job's window means agree at 0.7-0.96: a test on nine points (four episodes or more,
    two left out) that strong does not wait three more windows for points that can only confirm
    it. A test below the strong bar on that few points counts for nothing (still pending)."""
    for sample_s in (30, 60):
        site = Site([Nodes("tr", 16, "t-a", sync_job(seed=1))], windows=30, sample_s=sample_s)
        (early,) = site.run()
        (full,) = site.run(DetectConfig(coupling_early_min_windows=12))  # the full history only
        assert early.gpus == full.gpus == 128
        assert early.detected_at_ms <= full.detected_at_ms - 3 * WINDOW_MS, sample_s
        # With a strong bar the job does not reach, the early test never counts.
        (weak,) = site.run(DetectConfig(coupling_strong_corr=0.99))
        (weak_full,) = site.run(DetectConfig(coupling_strong_corr=0.99, coupling_early_min_windows=12))
        assert weak.detected_at_ms == weak_full.detected_at_ms, sample_s


def test_independent_one_node_jobs_started_together_raise_nothing_at_any_interval() -> None:
    for sample_s in (10, 30, 60):
        site = Site(
            [Nodes("one", 40, "t-fleet", independent_jobs(seed=2), workload=lambda n, k: f"job-{n}-{k // 40}")],
            windows=45,
            sample_s=sample_s,
        )
        assert site.run() == [], f"{sample_s} s samples"


def test_an_account_without_a_run_of_its_own_does_not_hold_back_the_finding() -> None:
    """A one-node account of the job joins the finding when its link is confirmed; the run that
    holds size on its own is raised when it would be without that account."""
    job = sync_job(seed=23)
    cfg = DetectConfig(coupling_early_min_windows=12)  # the full test only: both sites' first test in one window
    big = Nodes("big", 10, "t-big", job, workload=lambda n, k: "wl-big")
    one = Nodes("one", 1, "t-one", job, workload=lambda n, k: "wl-one")
    (alone,) = Site([big], windows=40, sample_s=30).run(cfg)
    (both,) = Site([big, one], windows=40, sample_s=30).run(cfg)
    assert alone.tenants == ("t-big",) and both.tenants == ("t-big", "t-one") and both.gpus == 88
    assert both.detected_at_ms == alone.detected_at_ms


# ---------------------------------------------------------------------- 2. common shocks


def _stall(k: int, t: float) -> float:
    """The shared file system hangs twice (two minutes, then one), starting 25 s into a minute."""
    tau = k * 60 + t - 25
    return 0.15 if 14 * 60 <= tau < 16 * 60 or 33 * 60 <= tau < 34 * 60 else 1.0


def _pod(n: int, k: int) -> str:
    return f"wl-pod-{n}"


def test_a_common_shock_links_no_tenants_and_a_transparent_tenant_stays_low() -> None:
    groups = [
        Nodes("open", 40, "t-open", sync_job(seed=11)),  # the largest tenant is transparent
        Nodes("op1", 12, "t-op1", sync_job(seed=12)),
        Nodes("op2", 10, "t-op2", sync_job(seed=13)),
        # A serving deployment: one pod per node, each its own workload id.
        Nodes("inf", 12, "t-inf", lambda n, k, t, rng: (rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.5)), _pod),
    ]
    for sample_s in (10, 30):
        found = Site(groups, windows=45, sample_s=sample_s, shock=_stall).run()
        by_tenant = {f.tenant: f for f in found}
        assert all(len(f.tenants) == 1 for f in found), [f.tenants for f in found]
        assert set(by_tenant) == {"t-open", "t-op1", "t-op2"}, (sample_s, sorted(by_tenant))
        assert by_tenant["t-open"].severity == "low"
        assert by_tenant["t-op1"].severity in ("medium", "high", "critical")


# ---------------------------------------------------------------------- 3. phased runs


def test_rl_post_training_alternating_rollouts_and_training_is_one_run() -> None:
    train = sync_job(seed=21)

    def rl(n: int, k: int, t: float, rng: random.Random) -> tuple[float, float] | None:
        if k % 7 < 5:  # rollout: generation, bursty, nodes on their own
            return rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.42)
        return train(n, k, t, rng)

    found = Site([Nodes("rl", 16, "t-rl", rl)], windows=50, sample_s=10).run()
    assert len(found) == 1, [(f.started_at_ms, f.gpus) for f in found]
    assert found[0].gpus == 128


def test_a_restart_on_other_nodes_after_a_failure_keeps_one_finding() -> None:
    first = Nodes("a", 16, "t-rs", sync_job(seed=31, end=22))
    second = Nodes("b", 16, "t-rs", sync_job(seed=32, start=27))  # 5 minutes later, other nodes
    found = Site([first, second], windows=50, sample_s=10).run()
    assert len(found) == 1, [(f.id, f.started_at_ms) for f in found]
    assert found[0].started_at_ms == T0_MS


# ---------------------------------------------------------------------- 4. low and slow; 5. counting


def test_input_bound_fine_tuning_at_40_percent_is_found() -> None:
    found = Site([Nodes("ft", 16, "t-ft", sync_job(level=0.45, util=0.42, seed=41))], windows=40).run()
    (f,) = found
    assert f.gpus == 128 and f.evidence["throttled_gpus_counted_windows"] > 0


def test_a_throttled_run_sampled_every_60_s_is_dated_from_its_start_not_from_its_first_test() -> None:
    """Every GPU weak (utilisation 50%, power 40% of the limit) and one sample a window: the
    weak GPUs count only once the group tests coupled, which needs 12 windows of window means;
    the test stood on those windows, so the run starts where they do."""
    site = Site([Nodes("pc", 16, "t-pc", sync_job(level=0.40, util=0.5, seed=43, start=2))], windows=40, sample_s=60)
    (f,) = site.run()
    assert f.gpus == 128 and f.evidence["throttled_gpus_counted_windows"] > 0
    assert f.started_at_ms <= T0_MS + 3 * WINDOW_MS, f.started_at_ms - T0_MS
    assert f.detected_at_ms - T0_MS <= 17 * WINDOW_MS, f.detected_at_ms - T0_MS


def test_gpus_that_dip_below_the_thresholds_still_count_for_their_run() -> None:
    """A point sample that lands in a collective (communication, not compute) reads low; at 30 s
    two samples make a window, so many GPUs of a 512-GPU run fall below the strong thresholds
    in any one window. They are still the run's."""
    job = sync_job(seed=51)

    def sampled(n: int, k: int, t: float, rng: random.Random) -> tuple[float, float] | None:
        lv = job(n, k, t, rng)
        if lv is not None and rng.random() < 0.3:
            return 0.25, 0.3
        return lv

    (f,) = Site([Nodes("big", 64, "t-big", sampled)], windows=25, sample_s=30).run()
    assert f.gpus == 512, f.gpus
    assert f.evidence["gpus_typical"] >= 500


# ---------------------------------------------------------------------- subjects and quiet cases


def test_a_group_is_headed_by_its_opaque_member_not_its_largest() -> None:
    job = sync_job(seed=61)
    groups = [
        Nodes("gx", 30, "t-open", job),  # transparent front holds most of the run
        Nodes("gy", 10, "t-hidden", job),  # the same job under an opaque account
        Nodes("inf", 10, "t-inf", lambda n, k, t, rng: (rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.5))),
    ]
    (f,) = Site(groups, windows=40).run()
    assert set(f.tenants) == {"t-open", "t-hidden"}
    assert f.tenant == "t-hidden" and f.severity in ("medium", "high", "critical")
    members = {m["tenant"]: m for m in f.evidence["members"]}
    assert members["t-open"]["share"] > members["t-hidden"]["share"] > 0.2


def test_multi_node_inference_instances_raise_nothing() -> None:
    """Instances of four nodes (tensor parallel across nodes) serving at high load: the nodes of
    one instance move together, instances do not."""
    inst_rng = random.Random(71)
    load = {inst: [inst_rng.uniform(0.75, 1.0) for _ in range(200)] for inst in range(10)}

    def serve(n: int, k: int, t: float, rng: random.Random) -> tuple[float, float]:
        x = load[n // 4][k]
        return 0.9 * x, 0.55 * x + rng.gauss(0, 0.03)

    site = Site(
        [Nodes("srv", 40, "t-srv", serve, workload=lambda n, k: f"instance-{n // 4}", ib_bytes_per_s=2e9)],
        windows=45,
        sample_s=10,
    )
    assert site.run() == []


def _instances(sizes: tuple[int, ...], busy: bool, seed: int) -> Level:
    """Nodes in tight groups (``sizes``) that share a little load across groups, read once a
    minute: serving instances at moderate load (``busy`` False: weak GPUs), or the node groups
    of one job at full speed (``busy`` True: strong GPUs)."""
    g_rng = random.Random(seed)
    shared = [g_rng.gauss(0, 0.05) for _ in range(200)]
    own = [[g_rng.gauss(0, 0.1) for _ in range(200)] for _ in sizes]
    group = [i for i, size in enumerate(sizes) for _ in range(size)]

    def level(n: int, k: int, t: float, rng: random.Random) -> tuple[float, float]:
        x = shared[k] + own[group[n]][k] + rng.gauss(0, 0.01)
        if busy:
            return min(1.0, 0.95 + 0.2 * x), 0.7 + 0.5 * x
        return 0.55 + x, 0.35 + 0.5 * x

    return level


def test_serving_instances_read_once_a_minute_raise_nothing_but_one_jobs_node_groups_do() -> None:
    """Sixteen nodes in groups of 2-4 that move together, groups a little alike, one reading a
    minute. At moderate load (weak GPUs) they are serving instances following shared demand:
    over all 120 node pairs they read coupled, between the five groups they do not, and the
    GPUs of a mostly weak group are held to the test between groups. At full speed (strong
    GPUs) the same structure is one job whose nodes share switches or stages: found."""
    sizes = (4, 4, 3, 3, 2)
    serving = Site(
        [Nodes("srv", 16, "t-srv", _instances(sizes, False, 5), ib_bytes_per_s=2e9)], windows=45, sample_s=60
    )
    assert serving.run() == []
    job = Site([Nodes("job", 16, "t-job", _instances(sizes, True, 5), ib_bytes_per_s=2e10)], windows=45, sample_s=60)
    found = job.run()
    assert [f.tenant for f in found] == ["t-job"], found


def test_a_sweep_of_independent_jobs_of_one_tenant_is_at_most_low() -> None:
    site = Site(
        [
            Nodes(
                "sw", 32, "t-sweep", independent_jobs(seed=81, job_windows=(15, 25)), workload=lambda n, k: f"trial-{n}"
            )
        ],
        windows=45,
        sample_s=20,
    )
    assert all(f.severity == "low" for f in site.run())


def test_nodes_that_exchange_nothing_are_single_node_work_whatever_moves_them_together() -> None:
    """A sweep of one recipe started together moves in step (same schedule), but each trial
    keeps to its node: its fabric is idle. Collectives over Ethernet count as traffic."""
    job = sync_job(seed=91)
    idle = Site([Nodes("sw", 16, "t-sw", job, ib_bytes_per_s=2e4, net_bytes_per_s=1e5)], windows=30)
    assert idle.run() == []
    over_tcp = Site([Nodes("tcp", 16, "t-tcp", job, ib_bytes_per_s=2e4, net_bytes_per_s=3e9)], windows=30)
    (f,) = over_tcp.run()
    assert f.evidence["signals"]["infiniband_bytes_per_s"]["fired"] is True


def test_a_fleet_that_moves_together_for_a_few_windows_after_half_an_hour_apart_raises_nothing() -> None:
    """Sixteen nodes of independent work on a busy fabric (serving instances, say), tested
    apart for 35 minutes; then a burst of shared load moves all of them in one rhythm for three
    minutes, and they test coupled in 8 of the last 30 windows. Coupled in a few windows of a
    long history is not a job (without the share rule: raised at `low`)."""
    solo = independent_jobs(seed=31)

    def fleet(n: int, k: int, t: float, rng: random.Random) -> tuple[float, float] | None:
        lv = solo(n, k, t, rng)
        if lv is None or not 35 <= k < 38:
            return lv
        wave = 0.25 * math.sin(2 * math.pi * (k * 60 + t) / 40)  # one shared rhythm, 40 s period
        return lv[0], lv[1] * (1 + wave)

    site = Site([Nodes("fl", 16, "t-fl", fleet, workload=lambda n, k: f"w-{n}", ib_bytes_per_s=3e9)], windows=50)
    eng = DetectorEngine(DetectConfig(), TENANTS)
    for w in site.stream():
        eng.observe(w)
    run = next(iter(eng._runs.values()))
    assert run.coupled_windows >= 2, "the burst itself tests coupled"
    eng.finish()
    assert eng.findings() == []


def test_a_run_split_over_one_node_accounts_is_found_from_its_true_start() -> None:
    """Ten accounts of one node each run one job (80 GPUs, none of them near a finding's size
    alone), sampled every 30 s. Their links come only after the link test's history; the run
    they make is then dated from the accounts' first windows together, not from the link."""
    job = sync_job(seed=101, start=2)
    accounts = [Nodes(f"acct{i}", 1, f"t-acct{i}", job) for i in range(10)]
    noise = [
        Nodes("inf", 6, "t-inf", lambda n, k, t, rng: (rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.5))),
        Nodes("solo", 4, "t-solo", independent_jobs(seed=102)),
    ]
    (f,) = Site(accounts + noise, windows=45, sample_s=30).run()
    assert set(f.tenants) == {f"t-acct{i}" for i in range(10)}
    assert f.gpus == 80
    started_min = (f.started_at_ms - T0_MS) // WINDOW_MS
    assert started_min <= 4, f"dated from the link ({started_min} min), not from the accounts' start"
    assert f.evidence["gpu_seconds"] >= 80 * 60 * 30, "the accounts' GPU-seconds before the link are counted"


def test_a_coarse_nodes_lag_is_read_from_its_buckets() -> None:
    from collector.detect.signals import sample_lag

    def gpu(samples: list[int]) -> GpuWindow:
        util = [900 if b in samples else None for b in range(6)]
        return msgspec.structs.replace(
            _gpu(0, "n", [0.9] * 6, [0.7] * 6, Workload("t", "k8s_pod", "w", 1, 1, 1000, 0)),
            series=Series(BUCKET_MS, tuple(util), tuple(None for _ in util)),
        )

    assert sample_lag([gpu([1])], 60.0) == 40.0  # one reading a minute, taken 10-20 s in
    assert sample_lag([gpu([0, 3])], 60.0) == 0.0  # every 30 s: not moved
    assert sample_lag([gpu([1, 3, 5]), gpu([0, 2, 4])], 60.0) == 0.0  # every 20 s: not moved
    assert sample_lag([msgspec.structs.replace(gpu([1]), series=None)], 60.0) is None


def test_window_means_come_from_the_energy_counter_where_it_is_consistent() -> None:
    """One reading per minute says where in a step it fell; the energy counter says what the
    board drew over the minute. A counter that does not move, or a reading carried over a
    gap, falls back to the readings' mean."""
    from collector.detect.usage import TenantWindow

    def level(energy_mj: int | None, sampled_mw: int) -> float | None:
        g = _gpu(0, "n", [0.9], [sampled_mw / LIMIT_MW], Workload("t", "k8s_pod", "w", 1, 1, 1000, 0))
        g = msgspec.structs.replace(
            g,
            energy_start_mj=None if energy_mj is None else 1_000,
            energy_end_mj=None if energy_mj is None else 1_000 + energy_mj,
        )
        return TenantWindow(by_node={"n": [g]}, window_s=60.0).node_level_exact("n")[0]

    assert level(420_000 * 60, 300_000) == pytest.approx(0.6)  # the counter's mean, not the reading's
    assert level(None, 300_000) == pytest.approx(300_000 / LIMIT_MW, abs=1e-3)
    assert level(1, 300_000) == pytest.approx(300_000 / LIMIT_MW, abs=1e-3)  # a counter that does not move
    assert level(5 * LIMIT_MW * 60, 600_000) == pytest.approx(600_000 / LIMIT_MW, abs=1e-3)  # above any draw


def test_the_energy_counter_mean_is_over_the_time_between_its_readings() -> None:
    """The counter at a window's start is the last reading before it. Every 45 s, a 60-s
    window holds one reading or two, and the counter's change spans 45 or 90 s: the mean is
    over that, not the window, or a steady GPU's level alternates with its node's phase
    between 0.75 and 1.5 of its draw. Where the interval divides the window, the span is the
    window whatever readings in between were missed."""
    from collector.detect.usage import TenantWindow

    def level(samples: int, step_s: float, seconds: float, draw_mw: int = 420_000) -> float | None:
        g = _gpu(0, "n", [0.9] * samples, [draw_mw / LIMIT_MW] * samples, Workload("t", "k8s_pod", "w", 1, 1, 1000, 0))
        g = msgspec.structs.replace(g, energy_start_mj=1_000, energy_end_mj=1_000 + round(draw_mw * seconds))
        tw = TenantWindow(by_node={"n": [g]}, window_s=60.0, interval_s={"n": step_s})
        return tw.node_level_exact("n")[0]

    steady = 420_000 / LIMIT_MW
    assert level(1, 45.0, 45.0) == pytest.approx(steady)  # one reading: 45 s since the last
    assert level(2, 45.0, 90.0) == pytest.approx(steady)  # two: 90 s
    assert level(6, 10.0, 60.0) == pytest.approx(steady)
    assert level(5, 10.0, 60.0) == pytest.approx(steady)  # a reading missed in between
    assert level(2, 30.0, 60.0) == pytest.approx(steady)
    # No interval known (a source that does not say): the window, as before.
    g = _gpu(0, "n", [0.9], [0.6], Workload("t", "k8s_pod", "w", 1, 1, 1000, 0))
    g = msgspec.structs.replace(g, energy_start_mj=0, energy_end_mj=420_000 * 60)
    assert TenantWindow(by_node={"n": [g]}, window_s=60.0).node_level_exact("n")[0] == pytest.approx(steady)


def test_windows_of_45_s_samples_read_a_job_at_one_level_with_one_reading_or_two() -> None:
    """End to end through the agent's windowing: nodes of a training job read every 45 s. A
    window with one reading and a window with two read the same level (dividing the
    counter's change by the window made them 0.75 and 1.5 of it)."""
    from collector.detect.config import DetectConfig
    from collector.detect.usage import aggregate
    from collector.evaluate.scenarios.physics import MODELS, make_node
    from collector.evaluate.scenarios.shocks import make_shocks
    from collector.evaluate.scenarios.site import Site
    from collector.evaluate.scenarios.training import TrainingRun
    from core.pipeline import windows_from_records
    from core.trace import header, parse_lines

    rng = random.Random(4)
    t0 = 1_772_409_600.0
    site = Site("s45", 1, t0, 40 * 60, 45.0, MODELS["H100"], make_shocks(rng, "none", t0, 40 * 60))
    nodes = [make_node(rng, f"n{i}", site.model, 45.0) for i in range(4)]
    site.components.append(TrainingRun(rng, "dp", nodes, ["t-a"], 0, site.duration_s, site.shocks, t0))
    lines = [json.dumps(header())] + [json.dumps(r) for r in site.records()]
    by_count: dict[int, list[float]] = {1: [], 2: []}
    for w in windows_from_records(parse_lines(lines, site.name)):
        if w.start_ms < (t0 + 600) * 1000:
            continue  # past the job's start
        tw = aggregate([w], DetectConfig()).tenants.get("t-a")
        if tw is None:
            continue
        level, _ = tw.node_level_exact(w.node_id)
        samples = {g.samples for g in w.gpus}
        if level is not None and len(samples) == 1:
            by_count[samples.pop()].append(level)
    assert len(by_count[1]) > 20 and len(by_count[2]) > 20
    one, two = statistics.median(by_count[1]), statistics.median(by_count[2])
    assert one == pytest.approx(two, rel=0.05), (one, two)


def test_an_account_of_one_four_gpu_tray_is_linked_into_its_run() -> None:
    """GB200 NVL72 trays hold four GPUs: an account of one tray is a whole node, below the
    eight GPUs (one HGX board) a tenant otherwise needs to be compared with others."""
    from collector.evaluate.data import ItpJob, PublicData
    from collector.evaluate.scenarios.family import Scenario, build
    from core.pipeline import windows_from_records
    from core.trace import header, parse_lines

    sc = Scenario("gb", 5, 30, "GB200", "none", 60, (("multi_account", 64, "opaque"),), ())
    site = build(sc, PublicData(itp=(ItpJob(4, 3600.0),), sources=()))
    (run,) = site.truths
    per_account: dict[str, int] = {}
    for comp in site.components:
        for procs in getattr(comp, "procs", []):
            per_account[procs[0].tenant] = per_account.get(procs[0].tenant, 0) + 1
    assert min(per_account.values()) == 1 and len(per_account) >= 2, per_account  # a one-tray account
    lines = [json.dumps(header())] + [json.dumps(r) for r in site.records()]
    eng = DetectorEngine(DetectConfig(), TenantDirectory.from_toml(site.tenants_toml))
    for w in windows_from_records(parse_lines(lines, site.name)):
        eng.observe(w)
    eng.finish()
    named = [f for f in eng.findings() if set(run.tenants) <= set(f.tenants)]
    assert named, [(f.tenants, f.gpus) for f in eng.findings()]


def pinned(seed: int, shared_schedule: bool) -> Level:
    """GPUs at 100% utilisation between checkpoints (a 30 s pause every 25-35 minutes, as large
    runs checkpoint), read with a little jitter: one job's nodes keep one schedule, a fleet's
    each its own."""
    rng0 = random.Random(seed)
    every: dict[int, tuple[int, float]] = {}

    def f(n: int, k: int, t: float, rng: random.Random) -> tuple[float, float] | None:
        key = 0 if shared_schedule else n
        if key not in every:
            every[key] = (rng0.randrange(25, 36), rng0.uniform(0, 1800))
        period, offset = every[key]
        since = k * 60 + t + offset
        if since % (60 * period) >= 60 * period - 30:
            return 0.2, 0.3
        return 1.0 - abs(rng.gauss(0.0, 0.002)), 0.92 + rng.gauss(0.0, 0.04)

    return f


def test_pinned_gpus_read_flat_not_uncoupled_and_one_workload_id_says_one_job() -> None:
    """Utilisation only (no power, energy or IB), read every 20 s. Pinned at 100% between
    checkpoints, a 16-node job reads the same value window after window: its tests find no
    coupling because there is nothing to measure, which is not evidence of independent nodes
    (state "flat"). One workload id over its 128 GPUs then says it is one job, as it would
    where coupling could not be measured at all. A fleet of 32 such nodes running one-node
    jobs, one id each, raises nothing: flat series leave size alone out (256 pinned GPUs of a
    fleet read as flat as a job's, and no fabric is reported)."""
    from collector.evaluate.scenarios.masks import apply

    def found(site: Site) -> list[Finding]:
        eng = DetectorEngine(DetectConfig(), TENANTS)
        for w in site.stream():
            eng.observe(apply(w, "util_only"))
        eng.finish()
        return eng.findings()

    job = Site([Nodes("pj", 16, "t-pin", pinned(7, True))], windows=40, sample_s=20)
    (f,) = found(job)
    assert f.evidence["job_evidence"] == "one workload id", f.evidence["job_evidence"]
    sync = f.evidence["signals"]["synchrony_corr"]
    assert sync["state"] == "flat" and sync["fired"] is None, sync
    assert f.gpus == 128

    fleet = Site(
        [Nodes("pf", 32, "t-pinf", pinned(7, False), workload=lambda n, k: f"job-{n}")], windows=40, sample_s=20
    )
    assert found(fleet) == []
