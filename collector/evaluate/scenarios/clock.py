"""The shared step clock of a synchronous training job, and how shapes render it.

A synchronous run (DDP, FSDP, Megatron TP/PP/EP) advances one optimizer step at a time on
every rank: a rank cannot start step n+1 before the collective of step n has finished on all
ranks. So a straggler, a congested link or a slow storage read slows *everyone*, and over a
minute every node of the job does the same number of steps. ``JobClock`` is that shared
state, per second: the mode (ramp, train, checkpoint, eval, blocked, off; for RL rollout and
weight sync too), the throughput (an AR(1) wander of a few per cent plus occasional
straggler/congestion slowdowns, times what a power cap leaves) and the step phase.
``render`` turns the clock into a ``Timeline`` (busy, drive, progress per second) for the
whole job, one pipeline stage, one RL node or one node of an MLPerf power log.

Within a step a rank computes (full drive) and then waits in the step's collectives, where
the NCCL kernels keep the GPU "busy" at low drive; the clock's phase says which, so 1-s
sampling sees the step's rhythm and coarse sampling aliases it, as a real agent would.
"""

from __future__ import annotations

import random
from array import array
from dataclasses import dataclass

from collector.evaluate.data import PowerSource
from collector.evaluate.scenarios.physics import GpuModel, cap_progress
from collector.evaluate.scenarios.shocks import Shocks
from collector.evaluate.scenarios.site import Timeline

OFF, RAMP, TRAIN, CKPT, EVAL, STALL, FABRIC, ROLLOUT, SYNC = range(9)


@dataclass
class Recipe:
    """How a run behaves; every shape is a recipe plus a way of rendering it."""

    busy: float = 0.98
    drive: float = 1.0
    comm_drive: float = 0.6
    compute_frac: float = 0.85
    step_s: float = 6.0
    thr_sd: float = 0.04
    slowdowns_per_h: float = 1.5
    ckpt_every_s: float = 1800.0
    ckpt_len_s: tuple[float, float] = (60.0, 150.0)
    eval_every_s: float = 0.0
    eval_len_s: tuple[float, float] = (30.0, 90.0)
    ramp_s: tuple[float, float] = (60.0, 180.0)
    ib_bps: float = 12e9
    mfu: float = 0.42


def recipe_for(rng: random.Random, kind: str) -> Recipe:
    r = Recipe(
        step_s=rng.uniform(3.0, 12.0),
        mfu=rng.uniform(0.33, 0.50),
        ckpt_every_s=rng.uniform(1200, 2700),
        eval_every_s=rng.choice((0.0, rng.uniform(900, 1800))),
        ib_bps=rng.uniform(6e9, 25e9),
        drive=rng.uniform(0.9, 1.05),
    )
    if kind == "tp_dp":
        r.compute_frac, r.comm_drive, r.ib_bps = 0.75, 0.55, r.ib_bps * 0.5
    elif kind == "pp":
        r.mfu, r.ib_bps = rng.uniform(0.28, 0.45), r.ib_bps * 0.4
    elif kind == "moe":
        r.drive, r.compute_frac, r.comm_drive = rng.uniform(0.65, 0.78), 0.55, 0.35
        r.thr_sd, r.slowdowns_per_h, r.mfu, r.ib_bps = 0.08, 3.0, rng.uniform(0.15, 0.30), r.ib_bps * 2.5
    elif kind == "rl":
        r.mfu, r.ckpt_every_s, r.eval_every_s = rng.uniform(0.30, 0.42), 0.0, 0.0
    elif kind == "low_slow":
        r.busy, r.mfu, r.ib_bps, r.eval_every_s = 0.40, rng.uniform(0.35, 0.45), r.ib_bps * 0.3, 0.0
    elif kind == "long_ckpt":
        r.ckpt_every_s, r.ckpt_len_s = rng.uniform(900, 1800), (180.0, 480.0)
    elif kind == "mlperf_replay":
        r.ckpt_every_s, r.eval_every_s = 0.0, 0.0
    return r


class JobClock:
    """The job-wide state per second over ``[k0, k1)``: mode, throughput, step phase."""

    def __init__(
        self,
        rng: random.Random,
        k0: int,
        k1: int,
        recipe: Recipe,
        shocks: Shocks,
        model: GpuModel,
        *,
        gaps: list[tuple[int, int]] | None = None,
        reconfigs: list[int] | None = None,
        multi_node: bool = True,
        rl: bool = False,
    ) -> None:
        gaps = gaps or []
        reconfigs = reconfigs or []
        n = max(0, k1 - k0)
        self.k0, self.n = k0, n
        self.mode = bytearray(n)
        self.thr = array("d", bytes(8 * n))
        self.phase = array("d", bytes(8 * n))
        self.phase_start = array("i", bytes(4 * n))  # RL: k at which the current phase began
        r = recipe
        starts = [k0] + [b for _, b in gaps] + list(reconfigs)
        ramp_until: dict[int, int] = {s: s + int(rng.uniform(*r.ramp_s)) for s in starts}
        ckpt_len = int(rng.uniform(*r.ckpt_len_s))
        x, slow_until, slow_f = 0.0, -1, 1.0
        phase, in_ckpt, in_eval = 0.0, -1, -1
        rl_mode, rl_until, rl_start = ROLLOUT, k0, k0
        last_start = k0
        for i in range(n):
            k = k0 + i
            if i % 10 == 0:
                x = 0.9 * x + rng.gauss(0.0, r.thr_sd * 0.436)
                if k > slow_until and rng.random() < r.slowdowns_per_h * 10 / 3600:
                    slow_until, slow_f = k + rng.randint(30, 180), rng.uniform(0.6, 0.85)
            thr = min(1.05, max(0.4, 1.0 + x)) * (slow_f if k <= slow_until else 1.0)
            if any(a <= k < b for a, b in gaps):
                continue  # OFF
            if k in ramp_until:
                last_start = k
            mode = TRAIN
            since = k - last_start
            if k < ramp_until.get(last_start, k0):
                mode = RAMP
            else:
                aligned = shocks.kind == "aligned_checkpoints"
                if aligned and shocks.checkpoint_started(k) and since > 300:
                    in_ckpt = k + ckpt_len
                elif not aligned and r.ckpt_every_s and since > 0 and since % int(r.ckpt_every_s) == 0:
                    in_ckpt = k + ckpt_len
                if r.eval_every_s and since > 0 and since % int(r.eval_every_s) == int(r.eval_every_s) // 2:
                    in_eval = k + int(rng.uniform(*r.eval_len_s))
                if k < in_ckpt:
                    mode = CKPT
                elif k < in_eval:
                    mode = EVAL
                elif rl:
                    if k >= rl_until:
                        rl_start = k
                        if rl_mode == ROLLOUT:
                            rl_mode, rl_until = SYNC, k + rng.randint(10, 30)
                        elif rl_mode == SYNC:
                            rl_mode, rl_until = TRAIN, k + rng.randint(60, 180)
                        else:
                            rl_mode, rl_until = ROLLOUT, k + rng.randint(180, 480)
                    mode = rl_mode
                    self.phase_start[i] = rl_start
            if shocks.stalled(k):
                mode = STALL
            elif multi_node and shocks.fabric_down(k):
                mode = FABRIC
            cap = shocks.cap_fraction(k)
            capp = cap_progress(model, r.drive, None if cap is None else cap * model.limit_w)
            self.mode[i] = mode
            self.thr[i] = thr * capp
            if mode == TRAIN:
                phase = (phase + thr * capp / r.step_s) % 1.0
            self.phase[i] = phase

    def steady_from(self, k: int) -> int:
        """First second at or after ``k`` that is past a ramp (the steady state)."""
        i = max(0, k - self.k0)
        while i < self.n and self.mode[i] in (OFF, RAMP):
            i += 1
        return self.k0 + i


def render(
    rng: random.Random,
    clock: JobClock,
    r: Recipe,
    *,
    stage: int = 0,
    stages: int = 1,
    micro: int = 8,
    rollout_speed: float = 1.0,
    power: PowerSource | None = None,
    src_node: int = 0,
    src_offset: int = 0,
    src_rate: float = 1.0,
) -> Timeline:
    """One Timeline from the clock: the whole job, one pipeline stage, one RL node or one MLPerf node."""
    tl = Timeline(clock.k0, clock.n)
    bubble = (stages - 1) / (micro + stages - 1) if stages > 1 else 0.0
    shift = stage / (micro + stages - 1) if stages > 1 else 0.0
    last = 1.06 if stages > 1 and stage == stages - 1 else 1.0
    low_busy = r.busy < 0.6
    roll = 0.5
    for i in range(clock.n):
        m = clock.mode[i]
        k = clock.k0 + i
        if m == OFF:
            continue
        thr = clock.thr[i]
        if m == TRAIN:
            if power is not None:
                w = power.mean_w(src_node, src_offset + int(i * src_rate) // 2, 1)
                d = max(0.0, (power.gpu_fraction(src_node, w) - 0.10) / 0.64) * r.drive
                tl.set(k, 0.98 if d > 0.12 else 0.1 + 7.0 * d, d, thr)
                continue
            if low_busy:
                b = min(1.0, max(0.02, rng.gauss(r.busy, 0.18)))
                tl.set(k, b, b * 1.05 * r.drive, thr * r.busy / 0.98)
                continue
            cf = r.compute_frac * thr * (1.0 - bubble)
            computing = ((clock.phase[i] - shift) % 1.0) < cf
            d = r.drive * last * (1.0 if computing else r.comm_drive)
            tl.set(k, r.busy * (1.0 - 0.8 * bubble), d, thr)
        elif m == RAMP:
            tl.set(k, rng.uniform(0.05, 0.4), 0.05, 0.0)
        elif m == CKPT:
            tl.set(k, 0.03, 0.01, 0.0)
        elif m == EVAL:
            tl.set(k, 0.9, 0.45 * r.drive, 0.0)
        elif m == STALL:
            tl.set(k, 0.04, 0.0, 0.0)
        elif m == FABRIC:
            tl.set(k, 0.97, 0.08, 0.0)
        elif m == SYNC:
            tl.set(k, 0.95, 0.2, 0.0)
        elif m == ROLLOUT:
            # This node generates until its share of the rollouts is done, then waits.
            since = k - clock.phase_start[i]
            if i % 5 == 0:
                roll = min(1.0, max(0.05, 0.8 * roll + rng.gauss(0.12, 0.15)))
            if since < 180 * rollout_speed:
                tl.set(k, 0.35 + 0.6 * roll, 0.25 + 0.35 * roll, 0.12 * thr)
            else:
                tl.set(k, 0.02, 0.0, 0.0)
    tl.finish()
    return tl
