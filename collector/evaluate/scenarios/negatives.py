"""Hard negatives: large, busy, sometimes correlated GPU use that is not one training run.

Each component carries a ``TruthJob`` with ``positive=False`` and the most severe finding
allowed on its tenants (``max_severity``):

* ``inference_multi`` ("none"): a serving fleet of instances of 2-4 nodes (a model too big
  for one node, sharded across them). Nodes of one instance move together (one batch at a
  time, IB traffic tied to the load); instances are independent; load is diurnal and bursty
  (arrivals come in bursts). Decoding is memory-bound: busy GPUs at moderate power.
* ``fleet_random`` / ``fleet_same_minute`` / ``fleet_back_to_back`` ("none"): one tenant
  running independent one-node training jobs (8 GPUs each): started at random times, all in
  the same minute (one submit script), or back to back on each node. Every job has its own
  step clock, throughput wander and checkpoint schedule; no IB traffic.
* ``hp_sweep`` ("low"): one tenant, many 1-2 node jobs of the *same recipe* started in the
  same minute (a hyper-parameter sweep): similar shapes, independent clocks.
* ``batch_inference`` ("low"): >= 300 GPUs of one tenant at ~90% utilisation, each node
  working through its own shard (offline scoring / embedding), no cross-node traffic.
* ``itp_small`` ("none"): 1-8 GPU jobs of many accounts with sizes and lengths drawn from
  the Microsoft ITP trace; a third are interactive (notebooks: mostly idle, short bursts).
"""

from __future__ import annotations

import math
import random

from collector.evaluate.data import ItpJob
from collector.evaluate.scenarios.clock import JobClock, Recipe, recipe_for, render
from collector.evaluate.scenarios.physics import Node
from collector.evaluate.scenarios.shocks import Shocks
from collector.evaluate.scenarios.site import IB_IDLE_BPS, Component, Proc, Timeline, rid
from collector.evaluate.truth import TruthJob

NEGATIVES: dict[str, str] = {
    "inference_multi": "none",
    "fleet_random": "none",
    "fleet_same_minute": "none",
    "fleet_back_to_back": "none",
    "hp_sweep": "low",
    "batch_inference": "low",
    "itp_small": "none",
}


def _truth(rng: random.Random, kind: str, tenants: list[str], start_s: float, k1: int, gpus: int) -> TruthJob:
    return TruthJob(
        id=rid(rng, "neg-"),
        kind=kind,
        tenants=tuple(dict.fromkeys(tenants)),
        start_s=start_s,
        end_s=start_s + k1,
        steps=[(start_s, gpus)],
        model="",
        mfu=0.0,
        family=kind,
        positive=False,
        max_severity=NEGATIVES[kind],
    )


def load_timeline(
    rng: random.Random,
    k1: int,
    shocks: Shocks,
    start_s: float,
    *,
    multi_node: bool,
    level: float = 0.55,
    steady: bool = False,
) -> Timeline:
    """Serving: diurnal x bursty load -> (busy, drive). ``steady``: a batch job's flat, hot load."""
    tl = Timeline(0, k1)
    x = 0.0
    burst_until, burst = -1, 0.0
    for k in range(k1):
        if k % 5 == 0:
            x = 0.85 * x + rng.gauss(0.0, 0.06 if not steady else 0.015)
            if not steady and k > burst_until and rng.random() < 0.01:
                burst_until, burst = k + rng.randint(20, 120), rng.uniform(0.15, 0.4)
        if steady:
            load = min(1.0, max(0.0, 0.92 + x))
            busy, drive = load, 0.58 + 0.1 * x
        else:
            hour = ((start_s + k) % 86400) / 3600.0
            diurnal = level + 0.22 * math.sin(2 * math.pi * (hour - 14.0) / 24.0)
            load = min(1.0, max(0.02, diurnal + x + (burst if k <= burst_until else 0.0)))
            busy, drive = min(1.0, 0.12 + 0.85 * load), 0.12 + 0.45 * load
        if shocks.stalled(k):
            busy, drive = 0.05, 0.0
        elif multi_node and shocks.fabric_down(k):
            busy, drive = 0.97, 0.08
        tl.set(k, busy, drive, 0.0)
    tl.finish()
    return tl


class Solo(Component):
    """Independent jobs on single nodes or GPUs (fleets, sweeps, batch inference, small jobs).

    ``slots[j][i]``: the (timeline, process, memory) entries GPU ``i`` of node ``j`` runs, in
    time order; ``links``: node -> IB bytes/s at full speed (two-node sweep jobs only)."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.gpus_per_node = nodes[0].model.gpus_per_node if nodes else 0
        self.slots: list[list[list[tuple[Timeline, Proc, int]]]] = [[[] for _ in n.gpus] for n in nodes]
        self.links: dict[int, tuple[Timeline, float]] = {}
        self.truths = []

    def put(self, j: int, gpus: range | tuple[int, ...], tl: Timeline, proc: Proc, mem: int) -> None:
        for i in gpus:
            self.slots[j][i].append((tl, proc, mem))

    def gpu_state(self, j: int, i: int, k: int) -> tuple[Timeline, Proc, int] | None:
        for e in self.slots[j][i]:
            if e[0].is_alive(k):
                return e
        return None

    def io(self, j: int, k: int) -> float:
        link = self.links.get(j)
        if link is None or not link[0].is_alive(k):
            return IB_IDLE_BPS
        return IB_IDLE_BPS + link[1] * link[0].progress[k - link[0].k0]


def _proc(rng: random.Random, tenant: str, mem: int, kind: str = "k8s_pod") -> Proc:
    return Proc(tenant, rid(rng, "w-"), mem, rng.randrange(2000, 60000), kind)


def inference_multi(
    rng: random.Random, nodes: list[Node], tenant: str, k1: int, shocks: Shocks, start_s: float
) -> Solo:
    c = Solo(nodes)
    mem = int(nodes[0].model.mem_bytes * 0.9)
    j = 0
    while j < len(nodes):
        size = min(rng.randint(2, 4), len(nodes) - j)
        tl = load_timeline(rng, k1, shocks, start_s, multi_node=size > 1, level=rng.uniform(0.35, 0.6))
        ib = rng.uniform(1e9, 4e9)
        # Serving is not training: progress stays 0; the IB link reads the load instead.
        link = Timeline(0, k1)
        for k in range(k1):
            b, _ = tl.at(k)
            link.set(k, 0.0, 0.0, b)
        for jj in range(j, j + size):
            c.put(jj, range(c.gpus_per_node), tl, _proc(rng, tenant, mem), mem)
            if size > 1:
                c.links[jj] = (link, ib)
        j += size
    c.tensor_ratio, c.sm_ratio = 0.25, 0.9
    c.truths = [_truth(rng, "inference_multi", [tenant], start_s, k1, len(nodes) * c.gpus_per_node)]
    return c


def _solo_job(
    rng: random.Random, a: int, b: int, r: Recipe, shocks: Shocks, nodes: list[Node], multi_node: bool = False
) -> Timeline:
    """A one- or two-node job over ``[a, b)``; one that started before the site (``a < 0``) is past its ramp."""
    if a < 0:
        r = Recipe(**{**vars(r), "ramp_s": (0.0, 1.0)})
    clock = JobClock(rng, max(0, a), b, r, shocks, nodes[0].model, multi_node=multi_node)
    return render(rng, clock, r)


def fleet(
    rng: random.Random,
    kind: str,
    nodes: list[Node],
    tenant: str,
    k1: int,
    shocks: Shocks,
    start_s: float,
    itp: list[ItpJob],
) -> Solo:
    """One tenant's independent one-node jobs (``fleet_*``) or a same-recipe sweep (``hp_sweep``)."""
    c = Solo(nodes)
    model = nodes[0].model
    shared = recipe_for(rng, "dp")
    same_start = rng.randint(60, 900)
    j = 0
    while j < len(nodes):
        size = 2 if kind == "hp_sweep" and rng.random() < 0.4 and j + 1 < len(nodes) else 1
        mem = int(model.mem_bytes * rng.uniform(0.5, 0.92))
        proc = _proc(rng, tenant, mem, "slurm_job")
        a = 0
        first = True
        while a < k1:
            if kind == "fleet_random":
                a = rng.randint(-3600, k1 - 600) if first else a + rng.randint(60, 1800)
            elif kind in ("fleet_same_minute", "hp_sweep"):
                a = same_start + rng.randint(0, 59) if first else k1
            elif kind == "fleet_back_to_back":
                a = rng.randint(-1800, 0) if first else a + rng.randint(0, 60)
            if a >= k1:
                break
            dur = max(900, int(rng.choice(itp).duration_s)) if itp else rng.randint(1800, 7200)
            if kind == "fleet_back_to_back":
                dur = rng.randint(900, 2400)
            r = shared if kind == "hp_sweep" else recipe_for(rng, "dp")
            if kind == "hp_sweep":
                r = Recipe(**{**vars(shared), "step_s": shared.step_s * rng.uniform(0.97, 1.03)})
            tl = _solo_job(rng, a, min(k1, a + dur), r, shocks, nodes, multi_node=size > 1)
            for jj in range(j, j + size):
                c.put(jj, range(c.gpus_per_node), tl, proc, mem)
                if size > 1:
                    c.links[jj] = (tl, rng.uniform(3e9, 10e9))
            first = False
            a += dur
        j += size
    c.truths = [_truth(rng, kind, [tenant], start_s, k1, len(nodes) * c.gpus_per_node)]
    return c


def batch_inference(
    rng: random.Random, nodes: list[Node], tenant: str, k1: int, shocks: Shocks, start_s: float
) -> Solo:
    c = Solo(nodes)
    mem = int(nodes[0].model.mem_bytes * 0.9)
    for j in range(len(nodes)):
        tl = load_timeline(rng, k1, shocks, start_s, multi_node=False, steady=True)
        c.put(j, range(c.gpus_per_node), tl, _proc(rng, tenant, mem), mem)
    c.tensor_ratio, c.sm_ratio = 0.45, 0.9
    c.truths = [_truth(rng, "batch_inference", [tenant], start_s, k1, len(nodes) * c.gpus_per_node)]
    return c


def itp_small(
    rng: random.Random,
    nodes: list[Node],
    tenants: list[str],
    k1: int,
    shocks: Shocks,
    start_s: float,
    itp: list[ItpJob],
) -> Solo:
    c = Solo(nodes)
    model = nodes[0].model
    small = [j for j in itp if j.gpus <= c.gpus_per_node] or [ItpJob(1, 3600.0)]
    used: set[str] = set()
    for j in range(len(nodes)):
        free = [rng.randint(-7200, 600) for _ in range(c.gpus_per_node)]
        while min(free) < k1:
            pick = rng.choice(small)
            size = pick.gpus
            order = sorted(range(c.gpus_per_node), key=lambda g: free[g])[:size]
            a = max(free[g] for g in order) + int(rng.expovariate(1 / 600.0))
            dur = int(min(max(pick.duration_s, 120.0), 3 * 86400.0))
            tenant = rng.choice(tenants)
            used.add(tenant)
            mem = int(model.mem_bytes * rng.uniform(0.15, 0.9))
            lo, hi = max(0, a), min(k1, a + dur)
            if hi > lo:
                if rng.random() < 0.3:  # interactive: mostly idle, short bursts
                    tl = Timeline(lo, hi - lo)
                    for k in range(lo, hi):
                        burst = rng.random() < 0.15 and not shocks.stalled(k)
                        tl.set(k, rng.uniform(0.2, 0.9) if burst else 0.0, rng.uniform(0.1, 0.5) if burst else 0.0)
                    tl.finish()
                else:
                    tl = _solo_job(rng, a, hi, recipe_for(rng, "dp"), shocks, nodes)
                c.put(j, tuple(order), tl, _proc(rng, tenant, mem, "user"), mem)
            for g in order:
                free[g] = a + dur
    c.truths = [_truth(rng, "itp_small", sorted(used) or tenants[:1], start_s, k1, len(nodes) * c.gpus_per_node)]
    return c
