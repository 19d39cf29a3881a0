"""Labelled sites as Trace v1 records: real training power shapes, a real job mix, our evasions.

``TruthJob`` is the truth record of every evaluation job, here and in the scenario family
(``collector.evaluate.scenarios``), which ``python -m collector.evaluate`` now runs. The
site builders below are the first generator (one shape source, 20 s samples), kept for
reference and for anyone reproducing the figures it gave; the scenario family folds its
MLPerf replay in as the ``mlperf_replay`` shape.

A site is a list of components on disjoint nodes, played sample by sample (every
``sample_interval_s``, coarse on purpose so that the evaluation stays fast) into Trace v1
records, plus the truth the generator knows: which tenants run which training job on how
many GPUs from when, and how many FLOP it really did (the job's own MFU x peak dense BF16
x compute-active GPU-seconds). Labels come only from this truth, never from names.

* ``TrainingJob``: per-node power from a real MLPerf multi-node log (``data.PowerSource``),
  scaled from server wall power to per-GPU power; job node ``j`` plays metered node
  ``j mod M`` of the log with its own gain and noise, all on the job's clock, so the
  cross-node correlation is the data's. Variants are the evasions: accounts split, power
  and utilisation throttled, inference interleaved on the same nodes, a size that changes.
* ``SmallJobs``: ITP-sampled 1-8 GPU jobs on single nodes with real single-node MLPerf
  shapes (or interactive use), many accounts.
* ``InferenceFleet``: serving GPUs, memory preallocated ~90%, each GPU independent: bursty
  diurnal, or steady and hot (the fleet that "size alone" used to flag).
* ``SweepTenant``: one tenant running many independent one-node jobs (≥ 256 GPUs in all).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from collector.detect import flops
from collector.evaluate.data import GRID_MS, ItpJob, PowerSource, PublicData

_logger = logging.getLogger(__name__)

GPUS = 8
H100 = "NVIDIA H100 80GB HBM3"
H100_MEM = 85_520_809_984
IDLE_FRACTION = 0.10
RAMP_S = 60.0
"""Training ramps from idle to its plateau over this long; steady state starts after it."""
MFU_RANGE = (0.30, 0.55)
"""A job's true model FLOP utilisation (Llama 3, MegaScale report 38-55%; less tuned jobs lower)."""


def util_from_power(frac: float) -> float:
    """Utilisation (%) a training GPU shows at a power fraction (busy above ~half the limit)."""
    return max(0.0, min(99.0, 100.0 * (frac - IDLE_FRACTION) / 0.40))


@dataclass
class TruthJob:
    """What a training job really was. ``steps``: (time s, GPUs) whenever its size changes."""

    id: str
    kind: str
    tenants: tuple[str, ...]
    start_s: float
    end_s: float
    steps: list[tuple[float, int]]
    model: str
    mfu: float
    flop: float = 0.0
    gpu_s: float = 0.0
    # Added for the scenario families (collector.evaluate.scenarios); defaults keep the old
    # sites' meaning: every TruthJob there is a training run, any severity allowed.
    family: str = ""
    positive: bool = True
    """False: a negative (inference, fleets, sweeps, small jobs): not a run to find."""
    max_severity: str = "critical"
    """The most severe finding allowed on this job's tenants while it runs ("none": no finding)."""
    transparent: bool = False
    """Run by a fully transparent tenant: findings on it must be at most ``low``."""

    @property
    def peak_gpus(self) -> int:
        return max((g for _, g in self.steps), default=0)

    def first_at_least(self, gpus: int) -> float | None:
        """Steady-state time the job first ran on ``gpus`` GPUs or more (None: never)."""
        for t, g in self.steps:
            if g >= gpus:
                return max(t, self.start_s + RAMP_S)
        return None

    def seconds_at_least(self, gpus: int) -> float:
        total = 0.0
        for i, (t, g) in enumerate(self.steps):
            nxt = self.steps[i + 1][0] if i + 1 < len(self.steps) else self.end_s
            if g >= gpus:
                total += max(0.0, min(nxt, self.end_s) - max(t, self.start_s + RAMP_S))
        return total

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["peak_gpus"] = self.peak_gpus
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TruthJob:
        return cls(
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
            family=d.get("family", ""),
            positive=d.get("positive", True),
            max_severity=d.get("max_severity", "critical"),
            transparent=d.get("transparent", False),
        )


@dataclass
class _Node:
    name: str
    model: str
    limit_w: float
    mem_total: int
    uuids: list[str]
    energy: list[float]
    phase_s: float


def _node(rng: random.Random, name: str, model: str = H100, limit_w: float = 700.0, mem: int = H100_MEM) -> _Node:
    return _Node(
        name,
        model,
        limit_w,
        mem,
        [f"GPU-{rng.getrandbits(128):032x}" for _ in range(GPUS)],
        [float(rng.randrange(10**9, 10**11)) for _ in range(GPUS)],
        rng.uniform(0.0, 1.0),
    )


def _gpu(
    n: _Node, i: int, util: float, mem: int, frac: float, dt: float, procs: list[dict[str, Any]]
) -> dict[str, Any]:
    frac = min(1.0, max(0.05, frac))
    n.energy[i] += frac * n.limit_w * dt * 1000.0
    return {
        "index": i,
        "util_pct": round(min(100.0, max(0.0, util)), 1),
        "mem_used_bytes": mem,
        "power_w": round(frac * n.limit_w, 1),
        "energy_mj": int(n.energy[i]),
        "procs": procs,
    }


def _idle(n: _Node, i: int, dt: float) -> dict[str, Any]:
    return _gpu(n, i, 0.0, 0, IDLE_FRACTION, dt, [])


class Component:
    nodes: list[_Node]
    kind: str = "background"

    def step(self, t: float) -> None:
        """Advance shared state to time ``t`` (called once per sample before ``gpus``)."""

    def gpus(self, j: int, t: float, dt: float) -> list[dict[str, Any]]:
        raise NotImplementedError


def _infer_gpu(rng: random.Random, n: _Node, i: int, tenant: str, pod: str, load: float, dt: float) -> dict[str, Any]:
    util = min(90.0, max(5.0, rng.uniform(20.0, 80.0) * (0.6 + 0.8 * load)))
    frac = 0.25 + 0.35 * util / 100.0 + rng.gauss(0.0, 0.03)
    mem = int(n.mem_total * 0.9)
    return _gpu(n, i, util, mem, frac, dt, [{"pid": 7000 + i, "tenant": tenant, "workload": pod, "mem_bytes": mem}])


class TrainingJob(Component):
    """One synchronous training job driven by a real multi-node power log.

    ``accounts``: tenants the job's nodes are split across (node j -> accounts[j % k]).
    ``throttle``: scales power above idle and utilisation (1.0: none).
    ``interleave``: GPUs per node left to inference by the same tenant, plus a pause in
    training every ``pause_every_s`` when all GPUs serve.
    ``sizes``: (seconds after start, nodes active) steps for a job that grows and shrinks.
    """

    kind = "training"

    def __init__(
        self,
        rng: random.Random,
        names: list[str],
        source: PowerSource,
        truth: TruthJob,
        *,
        accounts: tuple[str, ...],
        throttle: float = 1.0,
        interleave: int = 0,
        pause_every_s: float = 0.0,
        pause_s: float = 0.0,
        sizes: list[tuple[float, int]] | None = None,
    ) -> None:
        self.rng = rng
        self.src = source
        self.truth = truth
        self.nodes = [_node(rng, n) for n in names]
        self.accounts = accounts
        self.throttle = throttle
        self.interleave = interleave
        self.pause_every_s = pause_every_s
        self.pause_s = pause_s
        self.sizes = sizes or [(0.0, len(names))]
        self.offset = rng.randrange(source.length)  # where in the log the job's clock starts
        # The job's own step rate: a log is ten back-to-back runs of one benchmark, nearly
        # periodic, and independent jobs do not share a step period (other model, batch or
        # GPU count). Every account and node of this job shares it: one job, one clock.
        self.rate = rng.uniform(0.85, 1.15)
        self.gain = [1.0 + rng.gauss(0.0, 0.03) for _ in names]
        self.jitter = [rng.randrange(0, 2) for _ in names]
        self.gpu_off = [[rng.gauss(0.0, 0.02) for _ in range(GPUS)] for _ in names]
        self.workload = [f"job-{rng.getrandbits(40):010x}" for _ in accounts]  # one per account
        self.pods = [f"pod-{rng.getrandbits(32):08x}" for _ in names]
        self.mem = [int(H100_MEM * rng.uniform(0.85, 0.93)) for _ in names]
        self.peak = flops.lookup(H100)
        self.active_nodes = 0
        self.paused = False

    def step(self, t: float) -> None:
        since = t - self.truth.start_s
        self.active_nodes = 0
        if not (self.truth.start_s <= t < self.truth.end_s):
            return
        for at, count in self.sizes:
            if since >= at:
                self.active_nodes = count
        self.paused = bool(self.pause_every_s) and (since % self.pause_every_s) >= self.pause_every_s - self.pause_s

    def gpus(self, j: int, t: float, dt: float) -> list[dict[str, Any]]:
        n = self.nodes[j]
        rng = self.rng
        if j >= self.active_nodes:
            return [_idle(n, i, dt) for i in range(GPUS)]
        since = t - self.truth.start_s
        src = self.src
        steps = max(1, int(dt * 1000 // GRID_MS))
        idx = self.offset + int(since * self.rate * 1000 // GRID_MS) - steps + self.jitter[j]
        w = src.mean_w(j % src.nodes, idx, steps)
        base = src.gpu_fraction(j % src.nodes, w)
        dyn = (base - IDLE_FRACTION) * self.gain[j] * self.throttle
        if since < RAMP_S:
            dyn *= max(0.1, since / RAMP_S)
        tenant = self.accounts[j % len(self.accounts)]
        wl = self.workload[j % len(self.accounts)]
        out = []
        peak = self.peak.bf16_dense_flops if self.peak else 0.0
        for i in range(GPUS):
            if self.paused or i >= GPUS - self.interleave:
                out.append(_infer_gpu(rng, n, i, tenant, f"{self.pods[j]}-{i}", 0.5, dt))
                continue
            frac = IDLE_FRACTION + dyn + self.gpu_off[j][i] + rng.gauss(0.0, 0.015)
            util = util_from_power(IDLE_FRACTION + dyn / max(self.throttle, 1e-6)) * (
                1.0 if self.throttle >= 1.0 else 0.55 + 0.1 * self.throttle
            )
            util += rng.gauss(0.0, 1.0)
            util = max(0.0, min(100.0, util))
            self.truth.flop += self.truth.mfu * peak * dt * util / 100.0
            self.truth.gpu_s += dt
            mem = self.mem[j]
            proc = [{"pid": 4000 + i, "tenant": tenant, "workload": wl, "mem_bytes": mem - 400_000_000}]
            out.append(_gpu(n, i, util, mem, frac, dt, proc))
        return out


class InferenceFleet(Component):
    """Serving GPUs of one tenant: independent GPUs; ``steady`` is hot and flat (batch inference)."""

    def __init__(self, rng: random.Random, names: list[str], tenant: str, *, steady: bool) -> None:
        self.rng = rng
        self.nodes = [_node(rng, n) for n in names]
        self.tenant = tenant
        self.steady = steady
        self.pods = [f"pod-{rng.getrandbits(32):08x}" for _ in names]
        self.ar = [[0.0] * GPUS for _ in names]
        self.load = 0.5

    def step(self, t: float) -> None:
        hour = (t % 86400) / 3600.0
        self.load = 0.5 + 0.2 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)

    def gpus(self, j: int, t: float, dt: float) -> list[dict[str, Any]]:
        rng = self.rng
        n = self.nodes[j]
        if not self.steady:
            return [_infer_gpu(rng, n, i, self.tenant, f"{self.pods[j]}-{i}", self.load, dt) for i in range(GPUS)]
        out = []
        mem = int(n.mem_total * 0.9)
        for i in range(GPUS):
            a = self.ar[j][i] = 0.8 * self.ar[j][i] + rng.gauss(0.0, 0.04)
            util = min(99.0, 92.0 + 20 * a + rng.gauss(0.0, 2.0))
            frac = 0.62 + a + rng.gauss(0.0, 0.02)
            proc = [{"pid": 9000 + i, "tenant": self.tenant, "workload": f"{self.pods[j]}-{i}", "mem_bytes": mem}]
            out.append(_gpu(n, i, util, mem, frac, dt, proc))
        return out


@dataclass
class _SmallJob:
    start_s: float
    end_s: float
    gpus: tuple[int, ...]
    tenant: str
    workload: str
    interactive: bool
    src_i: int
    offset: int
    mem: int


class SmallJobs(Component):
    """1-8 GPU jobs on single nodes, sizes and lengths from the ITP trace, many accounts."""

    def __init__(
        self,
        rng: random.Random,
        names: list[str],
        itp: list[ItpJob],
        sources: list[PowerSource],
        tenants: list[str],
        start_s: float,
        end_s: float,
        *,
        same_tenant_per_node: bool = False,
    ) -> None:
        self.rng = rng
        self.nodes = [_node(rng, n) for n in names]
        self.sources = sources
        self.jobs: list[list[list[_SmallJob]]] = []
        for j, _ in enumerate(names):
            per: list[list[_SmallJob]] = [[] for _ in range(GPUS)]
            free = [start_s - rng.uniform(0.0, 3 * 3600.0) for _ in range(GPUS)]
            while min(free) < end_s:
                pick = rng.choice(itp)
                size = min(pick.gpus, GPUS)
                order = sorted(range(GPUS), key=lambda g: free[g])[:size]
                begin = max(free[g] for g in order) + rng.expovariate(1.0 / 600.0)
                dur = min(max(pick.duration_s, 120.0), 3 * 86400.0)
                job = _SmallJob(
                    begin,
                    begin + dur,
                    tuple(sorted(order)),
                    tenants[j % len(tenants)] if same_tenant_per_node else rng.choice(tenants),
                    f"slurm-{rng.getrandbits(32):08x}",
                    rng.random() < 0.3,
                    rng.randrange(len(sources)),
                    rng.randrange(10**6),
                    int(H100_MEM * rng.uniform(0.2, 0.9)),
                )
                for g in order:
                    per[g].append(job)
                    free[g] = job.end_s
            self.jobs.append(per)
        self.cursor = [[0] * GPUS for _ in names]

    def gpus(self, j: int, t: float, dt: float) -> list[dict[str, Any]]:
        rng = self.rng
        n = self.nodes[j]
        out = []
        for i in range(GPUS):
            jobs = self.jobs[j][i]
            c = self.cursor[j][i]
            while c < len(jobs) and jobs[c].end_s <= t:
                c += 1
            self.cursor[j][i] = c
            job = jobs[c] if c < len(jobs) and jobs[c].start_s <= t else None
            if job is None:
                out.append(_idle(n, i, dt))
                continue
            if job.interactive:
                util = rng.choice((0.0, 0.0, rng.uniform(5.0, 60.0)))
                frac = IDLE_FRACTION + 0.3 * util / 100.0
            else:
                src = self.sources[job.src_i]
                steps = max(1, int(dt * 1000 // GRID_MS))
                idx = job.offset + int((t - job.start_s) * 1000 // GRID_MS)
                frac = src.gpu_fraction(0, src.mean_w(0, idx, steps)) + rng.gauss(0.0, 0.015)
                util = util_from_power(frac) + rng.gauss(0.0, 1.0)
            proc = [{"pid": 3000 + i, "tenant": job.tenant, "workload": job.workload, "mem_bytes": job.mem}]
            out.append(_gpu(n, i, util, job.mem, frac, dt, proc))
        return out


@dataclass
class Site:
    """A labelled trace: its components, when it runs, and what is true about it."""

    name: str
    seed: int
    start_s: float
    end_s: float
    sample_interval_s: float
    components: list[Component]
    jobs: list[TruthJob] = field(default_factory=list)
    tenants_toml: str = ""

    def node_days(self, kind: str) -> float:
        nodes = sum(len(c.nodes) for c in self.components if c.kind == kind)
        return nodes * (self.end_s - self.start_s) / 86400.0

    def records(self) -> Iterator[dict[str, Any]]:
        """Trace v1 records (no header): node records, then samples in time order."""
        for comp in self.components:
            for n in comp.nodes:
                yield {
                    "type": "node",
                    "node": n.name,
                    "gpus": [
                        {
                            "index": i,
                            "uuid": n.uuids[i],
                            "serial": f"{abs(hash((n.name, i))) % 10**13:013d}",
                            "model": n.model,
                            "mem_total_bytes": n.mem_total,
                            "power_limit_w": n.limit_w,
                        }
                        for i in range(GPUS)
                    ],
                }
        dt = self.sample_interval_s
        steps = int((self.end_s - self.start_s) // dt)
        for k in range(steps):
            t0 = self.start_s + k * dt
            for comp in self.components:
                comp.step(t0)
            for comp in self.components:
                for j, n in enumerate(comp.nodes):
                    t = t0 + n.phase_s
                    yield {"type": "sample", "t": round(t, 3), "node": n.name, "gpus": comp.gpus(j, t, dt)}


# --------------------------------------------------------------------------- sites


def _tenant_id(rng: random.Random) -> str:
    """Opaque tenant ids: nothing in a name says what the tenant does."""
    return f"t-{rng.getrandbits(32):08x}"


def _names(prefix: str, start: int, count: int) -> list[str]:
    return [f"{prefix}-n{i:05d}" for i in range(start, start + count)]


def _itp_duration(rng: random.Random, itp: list[ItpJob], min_gpus: int) -> float:
    pool = [j for j in itp if j.gpus >= min_gpus]
    return rng.choice(pool).duration_s


_OPAQUE_TOML = """[[tenant]]
id = "{id}"
country = "MY"
registered = 2025-10-14
ultimate_parent_country = "unknown"
beneficial_owners_disclosed = false
nominee_directors = true
declared_use = "{use}"
kyc_level = "basic"
"""
_OPEN_TOML = """[[tenant]]
id = "{id}"
country = "DE"
registered = 2001-01-01
ultimate_parent_country = "DE"
beneficial_owners_disclosed = true
nominee_directors = false
declared_use = "{use}"
kyc_level = "enhanced"
"""

# (kind, GPUs) of the training jobs on a training site; "itp" sizes come from the ITP trace.
TRAINING_MIX: tuple[tuple[str, int], ...] = (
    ("plain", 64),
    ("plain", 128),
    ("plain", 256),
    ("plain", 512),
    ("plain", 1024),
    ("itp", 0),
    ("itp", 0),
    ("itp", 0),
    ("split", 256),
    ("throttled", 256),
    ("interleaved", 288),
    ("grow_shrink", 320),
    ("declared_inference", 128),
)


def training_site(
    data: PublicData, seed: int, hours: float, *, sample_interval_s: float = 20.0, scale: float = 1.0
) -> Site:
    """Concurrent training jobs of many tenants (plain, ITP-sized, and every evasion)."""
    rng = random.Random(seed)
    start = 1_772_409_600.0 + rng.randrange(0, 24) * 3600.0  # 2026-03-02 + a random hour
    end = start + hours * 3600.0
    multi = data.multi_node_sources()
    itp = list(data.itp)
    comps: list[Component] = []
    jobs: list[TruthJob] = []
    toml: list[str] = []
    next_node = 0
    for i, (kind, gpus) in enumerate(TRAINING_MIX):
        if kind == "itp":
            gpus = rng.choice([j.gpus for j in itp if j.gpus >= 16])
        elif scale != 1.0 and gpus > 256:
            gpus = max(256, int(gpus * scale) // 8 * 8)
        nodes = max(1, gpus // GPUS)
        if kind == "interleaved":
            nodes = math.ceil(gpus / 6)
        if kind == "grow_shrink":
            nodes = gpus // GPUS
        begin = start + rng.uniform(600.0, max(900.0, 0.35 * (end - start)))
        dur = max(_itp_duration(rng, itp, 16), 2400.0)
        job_end = min(end, begin + dur)
        k = 4 if kind == "split" else 1
        accounts = tuple(_tenant_id(rng) for _ in range(k))
        mfu = rng.uniform(*MFU_RANGE)
        sizes: list[tuple[float, int]] | None = None
        steps: list[tuple[float, int]]
        per_node = 6 if kind == "interleaved" else GPUS
        if kind == "grow_shrink":
            sizes = [(0.0, nodes // 5), (1200.0, nodes), (3600.0, nodes * 2 // 5)]
            steps = [(begin + a, c * GPUS) for a, c in sizes if begin + a < job_end]
        else:
            steps = [(begin, nodes * per_node)]
        truth = TruthJob(f"{seed}-{i:02d}-{kind}", kind, accounts, begin, job_end, steps, H100, mfu)
        src = rng.choice(multi)
        comps.append(
            TrainingJob(
                rng,
                _names(f"s{seed}j{i:02d}", next_node, nodes),
                src,
                truth,
                accounts=accounts,
                throttle=0.45 if kind == "throttled" else 1.0,
                interleave=2 if kind == "interleaved" else 0,
                pause_every_s=2700.0 if kind == "interleaved" else 0.0,
                pause_s=360.0 if kind == "interleaved" else 0.0,
                sizes=sizes,
            )
        )
        next_node += nodes
        jobs.append(truth)
        use = "LLM inference serving" if kind == "declared_inference" else "AI cloud services"
        for a in accounts:
            if kind == "plain" and gpus == 128:
                toml.append(_OPEN_TOML.format(id=a, use="research and model training"))
            else:
                toml.append(_OPAQUE_TOML.format(id=a, use=use))
    # A little ordinary background on the same site.
    comps.append(InferenceFleet(rng, _names(f"s{seed}inf", 0, 8), _tenant_id(rng), steady=False))
    return Site(f"training-{seed}", seed, start, end, sample_interval_s, comps, jobs, "\n".join(toml))


def background_site(
    data: PublicData, seed: int, hours: float, *, sample_interval_s: float = 20.0, nodes: int = 40
) -> Site:
    """Inference fleets and small jobs only: every finding here is false."""
    rng = random.Random(seed)
    start = 1_772_409_600.0 + rng.randrange(0, 24) * 3600.0
    end = start + hours * 3600.0
    single = data.single_node_sources()
    small_itp = [j for j in data.itp if j.gpus <= GPUS]
    comps: list[Component] = [
        InferenceFleet(rng, _names(f"b{seed}inf", 0, nodes), _tenant_id(rng), steady=False),
        # 38 nodes = 304 GPUs of hot, flat inference by one tenant: the old "size alone" case.
        InferenceFleet(rng, _names(f"b{seed}hot", 0, max(33, nodes - 2)), _tenant_id(rng), steady=True),
        SmallJobs(
            rng, _names(f"b{seed}slm", 0, nodes), small_itp, single, [_tenant_id(rng) for _ in range(12)], start, end
        ),
        # One tenant, many independent one-node jobs: >= 256 GPUs busy, no single job.
        SmallJobs(
            rng,
            _names(f"b{seed}swp", 0, max(33, nodes - 2)),
            [j for j in small_itp if j.gpus == GPUS and j.duration_s > 3600] or small_itp,
            single,
            [_tenant_id(rng)],
            start,
            end,
            same_tenant_per_node=True,
        ),
    ]
    for c in comps:
        c.kind = "background"
    return Site(f"background-{seed}", seed, start, end, sample_interval_s, comps, [], "")
