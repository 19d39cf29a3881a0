"""A scenario site: components on disjoint nodes, sampled into Trace v1 records.

Every component describes its GPUs second by second with ``Timeline``s (busy, drive,
progress; see ``physics``), built once when the site is built. ``Site.records`` then samples
them every ``interval_s`` at each node's own phase (plus a little jitter), turns them into
readings with ``physics.read``, keeps each GPU's energy counter from the *true* mean power
since its previous sample (a counter integrates; a power reading is a point), and adds the
node's IB/ethernet/disk rates. Truth FLOP comes from the timelines on the 1-second grid, so it
does not depend on how coarsely the site is sampled.

Names are random ids: nothing in a tenant, node or workload name says what it runs.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from collector.evaluate.scenarios import physics
from collector.evaluate.scenarios.physics import GpuModel, Node
from collector.evaluate.scenarios.shocks import Shocks
from collector.evaluate.truth import TruthJob

IB_IDLE_BPS = 2.0e4
"""Background IB traffic of a node running nothing across nodes (subnet management, monitoring)."""


class Timeline:
    """Per-second (busy, drive, progress) of a workload over ``[k0, k0 + n)``; ``alive`` 0:
    no process (the job is not running there)."""

    __slots__ = ("k0", "n", "busy", "drive", "progress", "alive", "_pb", "_pd")

    def __init__(self, k0: int, n: int) -> None:
        self.k0 = k0
        self.n = max(0, n)
        self.busy = array("d", bytes(8 * self.n))
        self.drive = array("d", bytes(8 * self.n))
        self.progress = array("d", bytes(8 * self.n))
        self.alive = bytearray(self.n)
        self._pb: array[float] | None = None
        self._pd: array[float] | None = None

    @property
    def k1(self) -> int:
        return self.k0 + self.n

    def set(self, k: int, busy: float, drive: float, progress: float = 0.0, alive: bool = True) -> None:
        i = k - self.k0
        if 0 <= i < self.n:
            self.busy[i] = busy
            self.drive[i] = drive
            self.progress[i] = progress
            self.alive[i] = 1 if alive else 0

    def is_alive(self, k: int) -> bool:
        i = k - self.k0
        return 0 <= i < self.n and self.alive[i] == 1

    def finish(self) -> None:
        pb = array("d", [0.0])
        pd = array("d", [0.0])
        sb = sd = 0.0
        for i in range(self.n):
            sb += self.busy[i]
            sd += self.drive[i]
            pb.append(sb)
            pd.append(sd)
        self._pb, self._pd = pb, pd

    def at(self, k: int) -> tuple[float, float]:
        i = k - self.k0
        if 0 <= i < self.n:
            return self.busy[i], self.drive[i]
        return 0.0, 0.0

    def mean(self, k_from: int, k_to: int) -> tuple[float, float]:
        """Mean (busy, drive) over seconds ``[k_from, k_to)``; zero outside the span."""
        if self._pb is None or self._pd is None:
            self.finish()
        assert self._pb is not None and self._pd is not None
        span = max(1, k_to - k_from)
        a = min(max(k_from - self.k0, 0), self.n)
        b = min(max(k_to - self.k0, 0), self.n)
        return (self._pb[b] - self._pb[a]) / span, (self._pd[b] - self._pd[a]) / span

    def gpu_seconds(self) -> tuple[float, float]:
        """(alive seconds, progress-seconds) of one GPU following this timeline."""
        return float(sum(self.alive)), float(sum(self.progress))


@dataclass
class Proc:
    """The process a GPU shows while a workload runs on it."""

    tenant: str
    workload: str
    mem_bytes: int
    pid: int
    kind: str = "k8s_pod"

    def json(self) -> dict[str, Any]:
        cached: dict[str, Any] | None = self.__dict__.get("_json")
        if cached is None:
            cached = {
                "pid": self.pid,
                "tenant": self.tenant,
                "workload": self.workload,
                "mem_bytes": self.mem_bytes,
                "kind": self.kind,
            }
            self.__dict__["_json"] = cached
        return cached


class Component:
    """Some nodes of the site and what runs on them.

    ``gpu_state(j, i, k)`` answers (timeline, process, memory used) for GPU ``i`` of node
    ``j`` at second ``k``, or None when the GPU is idle with no process. ``io(j, k)`` gives
    the node's IB bytes/s. ``multi_node`` and ``checkpoints`` say which shocks reach it.
    """

    nodes: list[Node]
    tensor_ratio: float = 0.55
    sm_ratio: float = 0.85
    truths: list[TruthJob]

    def gpu_state(self, j: int, i: int, k: int) -> tuple[Timeline, Proc, int] | None:
        raise NotImplementedError

    def io(self, j: int, k: int) -> float:
        return IB_IDLE_BPS


def rid(rng: random.Random, prefix: str, bits: int = 32) -> str:
    return f"{prefix}{rng.getrandbits(bits):0{bits // 4}x}"


@dataclass
class NamePool:
    """Node names of a site, handed out in shuffled order so that a job's nodes are not a
    contiguous, recognisable range."""

    rng: random.Random
    prefix: str
    size: int = 4096
    _free: list[int] = field(default_factory=list)

    def take(self, n: int) -> list[str]:
        if not self._free:
            self._free = list(range(self.size))
            self.rng.shuffle(self._free)
        out = [f"{self.prefix}-{self._free.pop():04d}" for _ in range(n)]
        return out


_OPAQUE_FILE = """[[tenant]]
id = "{id}"
country = "{country}"
registered = {registered}
parent = "{parent}"
parent_country = "{pcountry}"
ultimate_parent_country = "unknown"
beneficial_owners_disclosed = false
nominee_directors = true
declared_use = "{use}"
kyc_level = "basic"
"""
_TRANSPARENT_FILE = """[[tenant]]
id = "{id}"
name = "{name}"
country = "{country}"
registered = {registered}
parent = "{parent}"
parent_country = "{country}"
ultimate_parent_country = "{country}"
beneficial_owners_disclosed = true
nominee_directors = false
declared_use = "model training"
kyc_level = "enhanced"
"""


def tenant_entry(rng: random.Random, tid: str, kind: str) -> str:
    """A Tenants v1 entry: ``transparent``, ``opaque`` (nominees, offshore parent) or
    ``absent`` (not in the file at all: ``""``)."""
    if kind == "absent":
        return ""
    if kind == "transparent":
        country = rng.choice(("DE", "FR", "NL", "US", "GB", "JP", "CA"))
        return _TRANSPARENT_FILE.format(
            id=tid,
            name=f"Org {rng.getrandbits(24):06x}",
            country=country,
            registered=f"{rng.randint(1990, 2015)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
            parent=f"Holding {rng.getrandbits(24):06x}",
        )
    return _OPAQUE_FILE.format(
        id=tid,
        country=rng.choice(("MY", "AE", "SC", "CY", "PA")),
        registered=f"2025-{rng.randint(10, 12)}-{rng.randint(10, 28)}",
        parent=f"Holding {rng.getrandbits(24):06x}",
        pcountry=rng.choice(("VG", "KY", "unknown")),
        use=rng.choice(("AI cloud services", "general compute", "LLM inference serving", "research")),
    )


@dataclass
class Site:
    """A labelled site: components, shocks, truth (positives and negatives) and tenants file."""

    name: str
    seed: int
    start_s: float
    duration_s: int
    interval_s: float
    model: GpuModel
    shocks: Shocks
    components: list[Component] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)  # TOML entries
    axes: dict[str, str] = field(default_factory=dict)

    @property
    def truths(self) -> list[TruthJob]:
        return [t for c in self.components for t in c.truths]

    @property
    def tenants_toml(self) -> str:
        return "\n".join(e for e in self.tenants if e)

    def node_count(self) -> int:
        return sum(len(c.nodes) for c in self.components)

    def records(self, rng: random.Random | None = None) -> Iterator[dict[str, Any]]:
        """Trace v1 records (no header): node records, then samples in time order."""
        rng = rng or random.Random(self.seed * 7919 + 1)
        for comp in self.components:
            for n in comp.nodes:
                yield n.record()
        dt = self.interval_s
        steps = int(self.duration_s // dt)
        jitter_sd = min(0.1, 0.02 * dt)
        start = self.start_s
        read = physics.read
        for s in range(steps):
            t0 = start + s * dt
            for comp in self.components:
                for j, node in enumerate(comp.nodes):
                    t = t0 + node.phase_s + rng.gauss(0.0, jitter_sd)
                    k = int(t - start)
                    kp = max(0, int(t - dt - start))
                    cap_f = self.shocks.cap_fraction(k)
                    model = node.model
                    cap_w = None if cap_f is None else cap_f * model.limit_w
                    gpus = []
                    for g in node.gpus:
                        st = comp.gpu_state(j, g.index, k)
                        if st is None:
                            pw = round(g.idle_w * (1.0 + rng.gauss(0.0, 0.01)), 1)
                            g.energy_mj += g.idle_w * dt * 1000.0
                            gpus.append(
                                {
                                    "index": g.index,
                                    "util_pct": 0.0,
                                    "mem_used_bytes": 0,
                                    "power_w": pw,
                                    "energy_mj": int(g.energy_mj),
                                    "sm_active_pct": 0.0,
                                    "tensor_active_pct": 0.0,
                                    "procs": [],
                                }
                            )
                            continue
                        tl, proc, mem = st
                        busy, drive = tl.at(k)
                        util, pw, sm, ten = read(
                            rng,
                            model,
                            g,
                            busy,
                            drive,
                            cap_w=cap_w,
                            tensor_ratio=comp.tensor_ratio,
                            sm_ratio=comp.sm_ratio,
                        )
                        mb, md = tl.mean(kp, k) if dt > 1.5 else (busy, drive)
                        g.energy_mj += physics.power_w(model, g, mb, md, cap_w) * dt * 1000.0
                        gpus.append(
                            {
                                "index": g.index,
                                "util_pct": util,
                                "mem_used_bytes": mem,
                                "power_w": pw,
                                "energy_mj": int(g.energy_mj),
                                "sm_active_pct": sm,
                                "tensor_active_pct": ten,
                                "procs": [proc.json()],
                            }
                        )  # the same dict each time: no copy
                    ib = comp.io(j, k) * math.exp(rng.gauss(0.0, 0.08))
                    node_io = {
                        "ib_tx_bytes_per_s": round(ib),
                        "ib_rx_bytes_per_s": round(ib * (1.0 + rng.gauss(0.0, 0.02))),
                        "net_tx_bytes_per_s": round(rng.uniform(2e5, 2e6)),
                        "net_rx_bytes_per_s": round(rng.uniform(2e5, 2e6)),
                        "disk_read_bytes_per_s": round(rng.uniform(0.0, 5e6)),
                        "disk_write_bytes_per_s": round(rng.uniform(0.0, 5e6)),
                    }
                    yield {"type": "sample", "t": round(t, 3), "node": node.name, "gpus": gpus, "node_io": node_io}
