"""Scenario generators: simulated sites as Trace v1 records (dicts, without the header line).

The demo site (``demo_site``) is modelled on the case gpuaudit exists for:

* **training**: 300 nodes x 8 "NVIDIA H100 80GB HBM3" leased to one opaque tenant running one
  synchronized training job. Shape calibrated on the MLPerf Training power logs in
  ``../shared/data/mlperf-training-power`` (H100 servers draw 5-7 kW while training against
  ~2 kW idle, i.e. roughly 60-90% of the GPUs' 700 W limit; nodes of one job move together but
  are only moderately correlated sample by sample, 0.3-0.9 at 10 s): a short ramp-up, a steady
  plateau with a job-wide slow swing, synchronized dips for evaluation and checkpoints, and
  per-node and per-GPU noise.
* **inference**: a Kubernetes cluster of ordinary transparent tenants: memory preallocated to
  ~90%, bursty utilization 20-80% following a diurnal load, power 30-60% of the limit, every
  GPU independent of the others.
* **slurm**: a partition of small research jobs (1-8 GPUs on one node) with sizes and lengths
  drawn from the ITP job trace (1 GPU most common; minutes to hours).

Generation is a small part of a replay: one ``random.Random(seed)``, shapes precomputed per
job, plain dicts, and ``sample_interval_s`` (10 s for the demo) between samples.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_logger = logging.getLogger(__name__)

# 2026-03-02T03:50:00Z: the demo's first sample; its training job starts ten minutes later.
DEMO_START_S = int(dt.datetime(2026, 3, 2, 3, 50, tzinfo=dt.UTC).timestamp())
DEMO_TRAIN_OFFSET_S = 600
DEMO_OPAQUE_TENANT = "t-kestrel"
DEMO_INFERENCE_TENANTS = ("t-acme-search", "t-lumen-health", "t-orbit-media", "t-fjord-retail")
DEMO_SLURM_TENANTS = ("t-uni-physics", "t-uni-biology", "t-uni-cs")

H100_SXM = "NVIDIA H100 80GB HBM3"
H100_MEM_BYTES = 85_520_809_984
H100_LIMIT_W = 700
A100_SXM = "NVIDIA A100-SXM4-80GB"
A100_MEM_BYTES = 85_899_345_920
A100_LIMIT_W = 400
GPUS_PER_NODE = 8

# Idle draw of a GPU as a fraction of its limit (an idle H100 SXM draws ~70 W of 700 W).
IDLE_POWER_FRACTION = 0.10

# Training plateau per GPU, as a fraction of the limit (MLPerf H100 servers: (5.7 kW - 2 kW) / 8).
TRAIN_POWER_FRACTION = 0.74
# Job-wide slow swing (AR(1) over samples) and per-node swing: together they give node-to-node
# sample correlation of ~0.5 at 10 s, the middle of what the MLPerf multi-node logs show.
TRAIN_SHARED_SIGMA = 0.045
TRAIN_SHARED_PHI = 0.8
TRAIN_NODE_SIGMA = 0.04
TRAIN_NODE_PHI = 0.7
TRAIN_GPU_SIGMA = 0.02
TRAIN_RAMP_S = 45
# Synchronized dips: (period s, first at s, length s, power fraction, util pct).
TRAIN_EVAL = (900, 840, 30, 0.45, 55.0)
TRAIN_CHECKPOINT = (1800, 1500, 40, 0.22, 8.0)

# ITP (2021) jobs of at most 8 GPUs: count per size, and duration quantiles (minutes) at
# p10, p25, p50, p75, p90 per size (computed from ../shared/data/itp-jobs-2021).
ITP_SIZES = ((1, 57_682), (2, 1_483), (4, 2_371), (8, 7_009))
ITP_DURATION_MIN = {
    1: (21.5, 65.2, 168.8, 239.4, 422.0),
    2: (14.1, 43.1, 58.0, 66.1, 310.2),
    4: (22.3, 60.0, 138.8, 520.1, 1967.4),
    8: (32.9, 120.3, 305.3, 823.6, 2167.9),
}
_QUANTILES = (0.0, 0.10, 0.25, 0.50, 0.75, 0.90, 1.0)
SLURM_MIN_JOB_MIN = 2.0
SLURM_MAX_JOB_MIN = 3 * 24 * 60.0
SLURM_IDLE_GAP_MEAN_S = 900.0
# Share of research jobs that are interactive or debugging (low, irregular use).
SLURM_INTERACTIVE_SHARE = 0.3


@dataclass(frozen=True)
class _Gpu:
    index: int
    uuid: str
    serial: str


@dataclass
class _Node:
    name: str
    model: str
    mem_total: int
    limit_w: int
    gpus: tuple[_Gpu, ...]
    phase_s: float
    energy_mj: list[float] = field(default_factory=list)


def _make_node(rng: random.Random, name: str, model: str, mem_total: int, limit_w: int) -> _Node:
    gpus = tuple(
        _Gpu(i, f"GPU-{rng.getrandbits(128):032x}", f"{rng.randrange(10**12, 10**13):013d}")
        for i in range(GPUS_PER_NODE)
    )
    energy = [float(rng.randrange(10**9, 10**11)) for _ in range(GPUS_PER_NODE)]
    return _Node(name, model, mem_total, limit_w, gpus, rng.uniform(0.0, 1.0), energy)


def _node_record(n: _Node) -> dict[str, Any]:
    return {
        "type": "node",
        "node": n.name,
        "gpus": [
            {
                "index": g.index,
                "uuid": g.uuid,
                "serial": g.serial,
                "model": n.model,
                "mem_total_bytes": n.mem_total,
                "power_limit_w": n.limit_w,
            }
            for g in n.gpus
        ],
    }


def _gpu_dict(n: _Node, i: int, util: float, mem: int, power_w: float, dt_s: float, procs: list[Any]) -> dict[str, Any]:
    n.energy_mj[i] += power_w * dt_s * 1000.0
    return {
        "index": i,
        "util_pct": round(util, 1),
        "mem_used_bytes": mem,
        "power_w": round(power_w, 1),
        "energy_mj": int(n.energy_mj[i]),
        "procs": procs,
    }


class _Component:
    """A part of a site: its nodes, and each node's GPUs at sample ``k`` (time ``t``)."""

    nodes: list[_Node]

    def step(self, k: int, t: float) -> None:
        """Advance shared state to sample ``k``; called once per sample before ``gpus``."""

    def gpus(self, node_i: int, k: int, t: float, dt_s: float) -> list[dict[str, Any]]:
        raise NotImplementedError


class TrainingJob(_Component):
    """One synchronized data-parallel training job on whole nodes of one tenant."""

    def __init__(
        self,
        rng: random.Random,
        names: list[str],
        tenant: str,
        start_s: float,
        end_s: float,
        *,
        model: str = H100_SXM,
        mem_total: int = H100_MEM_BYTES,
        limit_w: int = H100_LIMIT_W,
        power_fraction: float = TRAIN_POWER_FRACTION,
        workload: str = "w-pretrain",
    ) -> None:
        self.rng = rng
        self.tenant = tenant
        self.start_s = start_s
        self.end_s = end_s
        self.power_fraction = power_fraction
        self.workload = workload
        self.nodes = [_make_node(rng, n, model, mem_total, limit_w) for n in names]
        self.node_offset = [rng.gauss(0.0, 0.03) for _ in names]
        self.gpu_offset = [[rng.gauss(0.0, 0.02) for _ in range(GPUS_PER_NODE)] for _ in names]
        self.node_ar = [0.0 for _ in names]
        self.mem = [int(mem_total * rng.uniform(0.86, 0.93)) for _ in names]
        self.pids = [rng.randrange(2000, 60000) for _ in names]
        self.shared = 0.0
        self.level = 0.0  # job-wide power factor for this sample
        self.util = 0.0
        self.active = False

    def _dip(self, since: float) -> tuple[float, float] | None:
        for period, first, length, pf, util in (TRAIN_CHECKPOINT, TRAIN_EVAL):
            if since >= first and (since - first) % period < length:
                return pf, util
        return None

    def step(self, k: int, t: float) -> None:
        rng = self.rng
        self.active = self.start_s <= t < self.end_s
        if not self.active:
            return
        since = t - self.start_s
        self.shared = TRAIN_SHARED_PHI * self.shared + rng.gauss(0.0, TRAIN_SHARED_SIGMA) * math.sqrt(
            1 - TRAIN_SHARED_PHI**2
        )
        dip = self._dip(since)
        if since < TRAIN_RAMP_S:
            ramp = since / TRAIN_RAMP_S
            self.level = 0.2 + (self.power_fraction - 0.2) * ramp
            self.util = 60.0 + 37.0 * ramp
        elif dip is not None:
            self.level, self.util = dip
        else:
            self.level = self.power_fraction + self.shared
            self.util = 97.0

    def gpus(self, node_i: int, k: int, t: float, dt_s: float) -> list[dict[str, Any]]:
        n = self.nodes[node_i]
        limit = n.limit_w
        if not self.active:
            return [_gpu_dict(n, i, 0.0, 0, limit * IDLE_POWER_FRACTION, dt_s, []) for i in range(GPUS_PER_NODE)]
        rng = self.rng
        ar = TRAIN_NODE_PHI * self.node_ar[node_i] + rng.gauss(0.0, TRAIN_NODE_SIGMA) * math.sqrt(1 - TRAIN_NODE_PHI**2)
        self.node_ar[node_i] = ar
        base = self.level + self.node_offset[node_i] + ar
        offs = self.gpu_offset[node_i]
        mem = self.mem[node_i]
        pid = self.pids[node_i]
        out = []
        for i in range(GPUS_PER_NODE):
            frac = base + offs[i] + rng.gauss(0.0, TRAIN_GPU_SIGMA)
            frac = min(1.0, max(IDLE_POWER_FRACTION, frac))
            util = min(100.0, max(0.0, self.util + rng.gauss(0.0, 1.5)))
            proc = [{"pid": pid + i, "tenant": self.tenant, "workload": self.workload, "mem_bytes": mem - 500_000_000}]
            out.append(_gpu_dict(n, i, util, mem, frac * limit, dt_s, proc))
        return out


class InferenceFleet(_Component):
    """Kubernetes inference: one tenant per node, one serving pod per GPU, independent GPUs."""

    def __init__(
        self,
        rng: random.Random,
        names: list[str],
        tenants: tuple[str, ...],
        *,
        model: str = H100_SXM,
        mem_total: int = H100_MEM_BYTES,
        limit_w: int = H100_LIMIT_W,
    ) -> None:
        self.rng = rng
        self.nodes = [_make_node(rng, n, model, mem_total, limit_w) for n in names]
        self.tenant = [tenants[i % len(tenants)] for i in range(len(names))]
        self.pods = [f"pod-{rng.getrandbits(32):08x}" for _ in names]
        self.pids = [rng.randrange(2000, 60000) for _ in names]
        self.mem = [int(mem_total * rng.uniform(0.88, 0.92)) for _ in names]
        self.tz_shift_h = [rng.uniform(-2.0, 2.0) for _ in names]
        self.load = 0.5

    def step(self, k: int, t: float) -> None:
        hour = (t % 86400) / 3600.0
        self.load = 0.5 + 0.18 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)

    def gpus(self, node_i: int, k: int, t: float, dt_s: float) -> list[dict[str, Any]]:
        rng = self.rng
        n = self.nodes[node_i]
        limit = n.limit_w
        load = self.load + 0.05 * math.sin(2 * math.pi * (self.tz_shift_h[node_i]) / 24.0)
        mem = self.mem[node_i]
        tenant = self.tenant[node_i]
        pod = self.pods[node_i]
        pid = self.pids[node_i]
        out = []
        for i in range(GPUS_PER_NODE):
            # Bursty: each sample a request burst or a lull, around the diurnal load.
            util = min(85.0, max(15.0, rng.uniform(20.0, 80.0) * (0.6 + 0.8 * load)))
            frac = 0.27 + 0.33 * util / 100.0 + rng.gauss(0.0, 0.02)
            proc = [{"pid": pid + i, "tenant": tenant, "workload": f"{pod}-{i}", "mem_bytes": mem - 300_000_000}]
            out.append(_gpu_dict(n, i, util, mem, frac * limit, dt_s, proc))
        return out


@dataclass
class _Job:
    start_s: float
    end_s: float
    gpus: tuple[int, ...]
    tenant: str
    job_id: str
    interactive: bool
    power_fraction: float
    mem: int
    pid: int
    period_s: float
    dip_s: float


def _quantile_sample(rng: random.Random, qs: tuple[float, ...]) -> float:
    """Inverse CDF through (0, min), quantiles, (1, max), log-linear between them."""
    xs = (SLURM_MIN_JOB_MIN, *qs, SLURM_MAX_JOB_MIN)
    u = rng.random()
    j = max(1, bisect.bisect_right(_QUANTILES, u))
    j = min(j, len(_QUANTILES) - 1)
    p0, p1 = _QUANTILES[j - 1], _QUANTILES[j]
    a, b = math.log(max(xs[j - 1], 0.1)), math.log(max(xs[j], 0.1))
    return math.exp(a + (b - a) * (u - p0) / (p1 - p0))


class SlurmPartition(_Component):
    """Small research jobs (1-8 GPUs on one node), ITP sizes and lengths, several accounts."""

    def __init__(
        self,
        rng: random.Random,
        names: list[str],
        tenants: tuple[str, ...],
        start_s: float,
        end_s: float,
        *,
        model: str = A100_SXM,
        mem_total: int = A100_MEM_BYTES,
        limit_w: int = A100_LIMIT_W,
    ) -> None:
        self.rng = rng
        self.nodes = [_make_node(rng, n, model, mem_total, limit_w) for n in names]
        sizes = [s for s, _ in ITP_SIZES]
        weights = [c for _, c in ITP_SIZES]
        self.jobs: list[list[list[_Job]]] = []  # node -> gpu -> jobs in time order
        self.cursor: list[list[int]] = []
        next_id = rng.randrange(100_000, 900_000)
        for _ in names:
            per_gpu: list[list[_Job]] = [[] for _ in range(GPUS_PER_NODE)]
            # Start mid-stream: some GPUs are already busy when the trace begins.
            free_at = [start_s - rng.uniform(0.0, 4 * 3600.0) for _ in range(GPUS_PER_NODE)]
            while min(free_at) < end_s:
                size = rng.choices(sizes, weights)[0]
                order = sorted(range(GPUS_PER_NODE), key=lambda g: free_at[g])[:size]
                begin = max(free_at[g] for g in order) + rng.expovariate(1.0 / SLURM_IDLE_GAP_MEAN_S)
                dur = _quantile_sample(rng, ITP_DURATION_MIN[size]) * 60.0
                next_id += 1
                job = _Job(
                    start_s=begin,
                    end_s=begin + dur,
                    gpus=tuple(sorted(order)),
                    tenant=rng.choice(tenants),
                    job_id=f"slurm-{next_id}",
                    interactive=rng.random() < SLURM_INTERACTIVE_SHARE,
                    power_fraction=rng.uniform(0.55, 0.85),
                    mem=int(mem_total * rng.uniform(0.2, 0.9)),
                    pid=rng.randrange(2000, 60000),
                    period_s=rng.uniform(300.0, 1800.0),
                    dip_s=rng.uniform(10.0, 40.0),
                )
                for g in order:
                    per_gpu[g].append(job)
                    free_at[g] = job.end_s
            self.jobs.append(per_gpu)
            self.cursor.append([0] * GPUS_PER_NODE)

    def gpus(self, node_i: int, k: int, t: float, dt_s: float) -> list[dict[str, Any]]:
        rng = self.rng
        n = self.nodes[node_i]
        limit = n.limit_w
        out = []
        for i in range(GPUS_PER_NODE):
            jobs = self.jobs[node_i][i]
            c = self.cursor[node_i][i]
            while c < len(jobs) and jobs[c].end_s <= t:
                c += 1
            self.cursor[node_i][i] = c
            job = jobs[c] if c < len(jobs) and jobs[c].start_s <= t else None
            if job is None:
                out.append(_gpu_dict(n, i, 0.0, 0, limit * IDLE_POWER_FRACTION, dt_s, []))
                continue
            if job.interactive:
                util = rng.choice((0.0, 0.0, rng.uniform(5.0, 60.0)))
                frac = IDLE_POWER_FRACTION + 0.3 * util / 100.0
            elif (t - job.start_s) % job.period_s < job.dip_s:
                util, frac = rng.uniform(0.0, 30.0), 0.2
            else:
                util = min(100.0, rng.gauss(93.0, 4.0))
                frac = job.power_fraction + rng.gauss(0.0, 0.04)
            frac = min(1.0, max(IDLE_POWER_FRACTION, frac))
            proc = [{"pid": job.pid + i, "tenant": job.tenant, "workload": job.job_id, "mem_bytes": job.mem}]
            out.append(_gpu_dict(n, i, util, job.mem, frac * limit, dt_s, proc))
        return out


def _names(prefix: str, first: int, count: int) -> list[str]:
    return [f"{prefix}-n{i:04d}" for i in range(first, first + count)]


def site_records(
    components: list[_Component], start_s: float, end_s: float, sample_interval_s: float
) -> Iterator[dict[str, Any]]:
    """Node records of every component, then all nodes' samples interleaved in time order."""
    for comp in components:
        for n in comp.nodes:
            yield _node_record(n)
    steps = int((end_s - start_s) // sample_interval_s)
    for k in range(steps):
        t0 = start_s + k * sample_interval_s
        for comp in components:
            comp.step(k, t0)
        for comp in components:
            for i, n in enumerate(comp.nodes):
                t = t0 + n.phase_s
                yield {
                    "type": "sample",
                    "t": round(t, 3),
                    "node": n.name,
                    "gpus": comp.gpus(i, k, t, sample_interval_s),
                }


def demo_site(
    seed: int = 1,
    hours: float = 2.0,
    sample_interval_s: int = 10,
    *,
    training_nodes: int = 300,
    inference_nodes: int = 40,
    slurm_nodes: int = 40,
    start_s: int = DEMO_START_S,
    prefix: str = "kl1",
) -> Iterator[dict[str, Any]]:
    """The demo site as Trace v1 records (no header): training, inference, Slurm.

    The opaque tenant's job starts ``DEMO_TRAIN_OFFSET_S`` after ``start_s`` and runs to the end.
    """
    rng = random.Random(seed)
    end_s = start_s + hours * 3600.0
    train = TrainingJob(
        rng, _names(prefix, 1, training_nodes), DEMO_OPAQUE_TENANT, start_s + DEMO_TRAIN_OFFSET_S, end_s + 3600.0
    )
    infer = InferenceFleet(rng, _names(prefix, 1 + training_nodes, inference_nodes), DEMO_INFERENCE_TENANTS)
    slurm = SlurmPartition(
        rng, _names(prefix, 1 + training_nodes + inference_nodes, slurm_nodes), DEMO_SLURM_TENANTS, start_s, end_s
    )
    _logger.debug("demo site: %d nodes, %.1f h from %d", training_nodes + inference_nodes + slurm_nodes, hours, start_s)
    return site_records([train, infer, slurm], float(start_s), end_s, float(sample_interval_s))


def demo_tenants_toml() -> str:
    """Tenants v1 text for the demo: the opaque training tenant and the ordinary ones."""
    parts = [
        f"""[[tenant]]
id = "{DEMO_OPAQUE_TENANT}"
name = "Kestrel Digital Infrastructure Sdn Bhd"
country = "MY"
registered = 2025-10-14
parent = "Grand Meridian Holdings Ltd"
parent_country = "VG"
ultimate_parent_country = "unknown"
beneficial_owners_disclosed = false
nominee_directors = true
declared_use = "AI inference and 3D rendering services"
kyc_level = "basic"
"""
    ]
    infos = {
        "t-acme-search": ("Acme Search Inc.", "US", "2009-05-11", "search ranking and LLM inference serving"),
        "t-lumen-health": ("Lumen Health GmbH", "DE", "2014-02-03", "medical imaging inference"),
        "t-orbit-media": ("Orbit Media Ltd", "GB", "2011-09-27", "video transcoding and recommendation inference"),
        "t-fjord-retail": ("Fjord Retail AS", "NO", "2005-06-01", "retail recommendation inference"),
        "t-uni-physics": (
            "University Physics Department",
            "MY",
            "1962-01-01",
            "research: simulation and model training",
        ),
        "t-uni-biology": ("University Biology Department", "MY", "1962-01-01", "research: protein model training"),
        "t-uni-cs": (
            "University Computer Science Department",
            "MY",
            "1962-01-01",
            "research and teaching, model training",
        ),
    }
    for tid, (name, country, registered, use) in infos.items():
        parts.append(
            f"""[[tenant]]
id = "{tid}"
name = "{name}"
country = "{country}"
registered = {registered}
ultimate_parent_country = "{country}"
beneficial_owners_disclosed = true
nominee_directors = false
declared_use = "{use}"
kyc_level = "enhanced"
"""
        )
    return "\n".join(parts)
