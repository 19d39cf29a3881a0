"""Large training runs (the positives), from how such jobs physically run.

Every node of a synchronous run follows the job's shared step clock (``clock.JobClock``:
the same steps per minute on every rank, the same checkpoints, stalls and slowdowns); each
shape renders that clock into ``Timeline``s (one for the whole job, one per pipeline stage,
one per RL node or per metered MLPerf node), and nodes differ only by board-to-board gain,
sampling phase and noise.

Shapes (``TruthJob.kind``), with what distinguishes them physically:

* ``dp``: data parallel (DDP/FSDP): long compute, a gradient all-reduce per step (power dips,
  utilisation does not), checkpoints every 20-45 min (1-2.5 min, all nodes idle), periodic
  evaluation (forward only: ~half the power). Heavy east-west IB tied to the step rate.
* ``tp_dp``: tensor parallel inside a node (NVLink all-reduces in every layer) and DP across:
  a little less compute-bound, less IB per node.
* ``pp``: pipeline parallel: bubbles of (S-1)/(m+S-1) of each step in which a stage has
  nothing queued (utilisation and power lower), stages offset in time within a step; the
  last stage carries the loss and draws a little more.
* ``moe``: mixture of experts: all-to-all dominated, low power for the utilisation, uneven
  expert load makes step times wander more; roughly twice the IB of a dense job.
* ``rl``: RL post-training: rollout phases (3-8 min) in which each node generates like an
  inference server (bursty, lower power, not in lockstep; fast nodes idle waiting for the
  slowest), a weight sync, then 1-3 min of synchronous training.
* ``low_slow``: input-bound fine-tuning: ~40% utilisation and ~45% of the power limit.
* ``restarts``: a node fails, the whole job stops, 2-10 min later it restarts from the last
  checkpoint on a partly different node set.
* ``long_ckpt``: checkpoint pauses of 3-8 minutes every 15-30 minutes.
* ``multi_account``: one run spread over 2-8 tenant accounts (single-node accounts too).
* ``grow_shrink``: an elastic run that changes size (brief reconfiguration at each change).
* ``mlperf_replay``: per-node power from a real multi-node MLPerf Training log (the data's
  own correlation between nodes), rescaled to the site's GPU model.

Truth FLOP: MFU x dense peak x sum over the job's GPUs and seconds of ``progress`` (1 at
full-speed steps; 0 in checkpoints, evaluation, stalls; rollouts count at 0.12: generation
runs at a small fraction of training MFU).
"""

from __future__ import annotations

import random

from collector.evaluate.data import PowerSource
from collector.evaluate.scenarios.clock import FABRIC, SYNC, JobClock, recipe_for, render
from collector.evaluate.scenarios.physics import Node
from collector.evaluate.scenarios.shocks import Shocks
from collector.evaluate.scenarios.site import IB_IDLE_BPS, Component, Proc, Timeline, rid
from collector.evaluate.truth import TruthJob

SHAPES: tuple[str, ...] = (
    "dp",
    "tp_dp",
    "pp",
    "moe",
    "rl",
    "low_slow",
    "restarts",
    "long_ckpt",
    "multi_account",
    "grow_shrink",
    "mlperf_replay",
)


class TrainingRun(Component):
    """One run: nodes, which timeline each node follows, when each node takes part, and its truth."""

    def __init__(
        self,
        rng: random.Random,
        kind: str,
        nodes: list[Node],
        accounts: list[str],
        k0: int,
        k1: int,
        shocks: Shocks,
        start_s: float,
        *,
        power: PowerSource | None = None,
        transparent: bool = False,
        gpus: int | None = None,
    ) -> None:
        self.nodes = nodes
        model = nodes[0].model
        r = recipe_for(rng, kind)
        self.recipe = r
        self.tensor_ratio = min(0.9, r.mfu * 1.25)
        gpn = model.gpus_per_node
        n = len(nodes) if gpus is None else gpus // gpn
        self.ib_bps = r.ib_bps
        gaps: list[tuple[int, int]] = []
        reconfigs: list[int] = []
        spans: list[list[tuple[int, int]]] = [[(k0, k1)] if j < n else [] for j in range(len(nodes))]
        sizes: list[tuple[int, int]] = [(k0, n)]  # (k, nodes) for the truth
        if kind == "restarts":
            spans = [[] for _ in nodes]
            active = list(range(n))
            spare = list(range(n, len(nodes)))
            a = k0
            when = range(k0 + 900, max(k0 + 901, k1 - 1500), 60)
            fails = sorted(rng.sample(when, min(len(when), rng.randint(1, 2))))
            for f in fails:
                if f <= a:
                    continue
                b = f + rng.randint(120, 600)
                for j in active:
                    spans[j].append((a, f))
                gaps.append((f, b))
                sizes += [(f, 0), (b, n)]
                swap = rng.randint(1, max(1, min(len(spare), n // 4)))
                out = rng.sample(active, swap)
                active = [j for j in active if j not in out] + spare[:swap]
                spare = spare[swap:] + out
                a = b
            for j in active:
                spans[j].append((a, k1))
        elif kind == "grow_shrink":
            full = len(nodes)
            phases = [
                (k0, max(1, full // 2)),
                (k0 + rng.randint(1200, 1800), full),
                (k0 + rng.randint(2700, 3300), max(1, full * 3 // 5)),
            ]
            phases = [(k, c) for k, c in phases if k < k1 - 300]
            sizes = phases
            reconfigs = [k for k, _ in phases[1:]]
            spans = [[] for _ in nodes]
            for s_i, (k, c) in enumerate(phases):
                end = phases[s_i + 1][0] if s_i + 1 < len(phases) else k1
                for j in range(c):
                    spans[j].append((k, end))
        self.spans = spans
        clock = JobClock(rng, k0, k1, r, shocks, model, gaps=gaps, reconfigs=reconfigs, rl=kind == "rl")
        self.clock = clock
        if kind == "pp":
            stages = rng.choice((4, 8))
            micro = rng.choice((8, 16, 32))
            tls = [render(rng, clock, r, stage=s, stages=stages, micro=micro) for s in range(stages)]
            self.tl_of = [tls[j * stages // max(1, len(nodes))] for j in range(len(nodes))]
        elif kind == "rl":
            self.tl_of = [render(rng, clock, r, rollout_speed=rng.uniform(0.9, 2.6)) for _ in nodes]
        elif kind == "mlperf_replay" and power is not None:
            off, rate = rng.randrange(power.length), rng.uniform(0.85, 1.15)
            tls = [
                render(rng, clock, r, power=power, src_node=m, src_offset=off, src_rate=rate)
                for m in range(power.nodes)
            ]
            self.tl_of = [tls[j % power.nodes] for j in range(len(nodes))]
        else:
            one = render(rng, clock, r)
            self.tl_of = [one for _ in nodes]
        # Accounts: node -> account. Single-node accounts first, the rest split evenly.
        acct_of = [0] * len(nodes)
        if len(accounts) > 1:
            singles = rng.randint(1, max(1, len(accounts) // 2))
            order = list(range(len(nodes)))
            rng.shuffle(order)
            for a_i in range(singles):
                acct_of[order[a_i]] = a_i
            rest = order[singles:]
            for x, j in enumerate(rest):
                acct_of[j] = singles + x % (len(accounts) - singles)
        workloads = [rid(rng, "w-") for _ in accounts]
        pkind = rng.choice(("k8s_pod", "slurm_job"))
        mem = int(model.mem_bytes * rng.uniform(0.82, 0.95))
        self.mem = mem

        # The id the agent gives the process: a Slurm job has one job id on every node it
        # runs on; Kubernetes runs one pod per node (a PyTorchJob's or JobSet's workers), and
        # the agent's id is the pod's namespace/name, so a job's pods share no id.
        def workload(j: int) -> str:
            w = workloads[acct_of[j]]
            return w if pkind == "slurm_job" else f"{w}/worker-{j}"

        self.procs = [
            [
                Proc(accounts[acct_of[j]], workload(j), mem - 300_000_000, rng.randrange(2000, 60000), pkind)
                for _ in range(gpn)
            ]
            for j in range(len(nodes))
        ]
        # Truth.
        flop = gpu_s = 0.0
        for j, tl in enumerate(self.tl_of):
            for a, b in spans[j]:
                for k in range(max(a, tl.k0), min(b, tl.k1)):
                    gpu_s += tl.alive[k - tl.k0]
                    flop += tl.progress[k - tl.k0]
        steps: list[tuple[float, int]] = [(start_s + (clock.steady_from(k) if c else k), c * gpn) for k, c in sizes]
        self.truths = [
            TruthJob(
                id=rid(rng, "run-"),
                kind=kind,
                tenants=tuple(dict.fromkeys(accounts[acct_of[j]] for j in range(len(nodes)) if spans[j])),
                start_s=start_s + k0,
                end_s=start_s + k1,
                steps=steps,
                model=model.name,
                mfu=r.mfu,
                flop=flop * gpn * r.mfu * model.peak_bf16,
                gpu_s=gpu_s * gpn,
                family=kind,
                transparent=transparent,
            )
        ]

    def _in_span(self, j: int, k: int) -> bool:
        for a, b in self.spans[j]:
            if a <= k < b:
                return True
        return False

    def gpu_state(self, j: int, i: int, k: int) -> tuple[Timeline, Proc, int] | None:
        tl = self.tl_of[j]
        if not tl.is_alive(k) or not self._in_span(j, k):
            return None
        return tl, self.procs[j][i], self.mem

    def io(self, j: int, k: int) -> float:
        tl = self.tl_of[j]
        if not tl.is_alive(k) or not self._in_span(j, k):
            return IB_IDLE_BPS
        i = k - tl.k0
        m = self.clock.mode[i]
        if m == SYNC:
            return self.ib_bps * 2.0
        if m == FABRIC:
            return self.ib_bps * 0.02
        nominal = self.recipe.busy / 0.98 if self.recipe.busy < 0.6 else 1.0
        return IB_IDLE_BPS + self.ib_bps * min(1.2, tl.progress[i] / nominal)


def job_minutes(rng: random.Random, site_minutes: int) -> tuple[int, int]:
    """(start, end) seconds of a positive within a site: it starts early enough to be scored."""
    a = int(rng.uniform(2, max(3, min(25, site_minutes - 45))) * 60)
    b = int(min(site_minutes * 60, a + max(40 * 60, rng.uniform(0.6, 1.0) * (site_minutes * 60 - a))))
    return a, b


__all__ = ["SHAPES", "TrainingRun", "job_minutes"]
