"""Per-GPU physics: what NVML, GPM and the IB counters read for a given activity, per GPU model.

A workload in these scenarios is described, second by second, by three numbers that every
component computes for itself (``training.py``, ``negatives.py``):

* ``busy`` (0..1): the share of the sampling period in which some kernel ran. NVML's
  "utilization.gpu" is exactly this, so it stays near 100% while a training step waits on a
  NCCL collective (the collective is a kernel that spins) and falls only when the GPU has
  nothing queued: a checkpoint write, a data-loader stall, a pipeline bubble, a restart.
* ``drive`` (0..1): how hard the busy kernels drive the chip, relative to a dense BF16
  GEMM-bound training step on this model (1.0). Power above idle scales with it; an
  all-reduce or an all-to-all draws far less than a GEMM, memory-bound decoding in between.
* ``progress`` (0..1): useful training work relative to full-speed steps, for the truth FLOP
  (``TruthJob.flop``): model FLOP = MFU x dense peak x GPU-seconds x progress.

``read`` turns (busy, drive) into one GPU's reading: utilisation, power (capped by a
facility power cap when one is in force), GPM SM and tensor activity. It is deliberately
cheap (it runs once per GPU per sample).

Per-model figures (``MODELS``) and where they come from:

* Power limits (TDP): A100-SXM4-80GB 400 W, H100-SXM5 (80GB HBM3) 700 W, H200-SXM 700 W,
  B200 (HGX) 1000 W: NVIDIA data sheets.
* Idle draw with nothing loaded, from nvidia-smi readings published by users and the
  MLPerf server logs (an 8xH100 server idles at ~2 kW wall, of which ~70 W per GPU):
  A100 ~55-60 W, H100 ~70 W, H200 ~75 W, B200 ~120-140 W.
* Dense BF16 peak (no sparsity): A100 312 TFLOP/s, H100 and H200 989 TFLOP/s (same die),
  B200 2.25 PFLOP/s (DGX B200: 72 PFLOP/s FP8 *sparse* training for 8 GPUs -> 4.5 dense FP8
  -> 2.25 dense BF16 per GPU). These are *our* numbers for the truth, not the detector's.
* Mean power of a dense-LLM training step as a share of the limit (``train_frac``): the
  MLPerf Training logs in ``../shared/data`` put an 8xH100 server at 5.5-7 kW wall during
  single-node runs and 4.2-5.7 kW in multi-node runs; with ~2 kW idle and 85% of the rest
  drawn by the GPUs that is 0.6-0.86 of 700 W, so H100 0.74. The B200 server's logs read
  9.6-10 kW against ~3.6 kW idle: ~0.77 of 1000 W. A100 jobs run closer to their (lower)
  limit: Patel et al., "Characterizing Power Management Opportunities for LLMs in the
  Cloud" (ASPLOS 2024), report A100 training peaking at TDP with means around 0.8 of it;
  0.82. H200 has the H100 die with faster HBM, so steps stall less on memory: 0.77.
* Memory sizes are NVML's ``memory.total`` of each board: 81920 MiB (A100 80GB),
  81559 MiB (H100 80GB HBM3), 143771 MiB (H200 141GB), 183359 MiB (B200 180GB).
* GB200 (a GB200 NVL72 compute tray: **4 GPUs per node**, each at a 1200 W TGP): dense BF16
  2.5 PFLOP/s (GB200 NVL72 datasheet: 360 PFLOPS sparse BF16 for 72 GPUs). Its idle draw
  (140-170 W), ``train_frac`` (0.72: the higher limit leaves more headroom than HGX B200's
  1000 W) and ``memory.total`` (189471 MiB, of the 192 GB HBM3e board) are our estimates,
  scaled from B200: no public per-GPU power log of a GB200 tray was at hand. What matters
  for the evaluation is the node shape: twice the nodes for the same GPUs, and accounts of
  one node holding four GPUs.
* GPM ratios: SM activity during a training step runs 0.75-0.9 of the time busy (NCCL
  kernels occupy few SMs), tensor-pipe activity tracks ``drive`` and MFU (Llama 3 and
  MegaScale report 38-55% MFU on H100; tensor activity of 0.4-0.6 is typical in DCGM
  profiles of such jobs). Inference decoding keeps SMs busy with little tensor work.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

GPUS_PER_NODE = 8
"""GPUs of an HGX/DGX board (A100, H100, H200, B200); a GB200 NVL72 compute tray holds 4."""


@dataclass(frozen=True)
class GpuModel:
    key: str
    name: str  # NVML name
    limit_w: float
    idle_w: tuple[float, float]  # (low, high) idle draw of one board
    mem_bytes: int
    peak_bf16: float  # dense FLOP/s
    train_frac: float  # mean power / limit of a dense BF16 training step at full drive
    gpus_per_node: int = GPUS_PER_NODE


MODELS: dict[str, GpuModel] = {
    "A100": GpuModel("A100", "NVIDIA A100-SXM4-80GB", 400.0, (55.0, 60.0), 81920 * 2**20, 312e12, 0.82),
    "H100": GpuModel("H100", "NVIDIA H100 80GB HBM3", 700.0, (66.0, 74.0), 81559 * 2**20, 989e12, 0.74),
    "H200": GpuModel("H200", "NVIDIA H200", 700.0, (72.0, 80.0), 143771 * 2**20, 989e12, 0.77),
    "B200": GpuModel("B200", "NVIDIA B200", 1000.0, (120.0, 140.0), 183359 * 2**20, 2250e12, 0.76),
    "GB200": GpuModel("GB200", "NVIDIA GB200", 1200.0, (140.0, 170.0), 189471 * 2**20, 2500e12, 0.72, 4),
}
MODEL_KEYS: tuple[str, ...] = tuple(MODELS)


@dataclass
class Gpu:
    """One board: fixed identity, its own idle draw and efficiency, and its energy counter (mJ)."""

    index: int
    uuid: str
    serial: str
    idle_w: float
    gain: float  # silicon lottery: the same work draws a few per cent more or less
    energy_mj: float


@dataclass
class Node:
    name: str
    model: GpuModel
    gpus: list[Gpu]
    phase_s: float  # when within the sample interval this node's agent samples

    def record(self) -> dict[str, object]:
        """The Trace v1 ``node`` record."""
        return {
            "type": "node",
            "node": self.name,
            "gpus": [
                {
                    "index": g.index,
                    "uuid": g.uuid,
                    "serial": g.serial,
                    "model": self.model.name,
                    "mem_total_bytes": self.model.mem_bytes,
                    "power_limit_w": self.model.limit_w,
                }
                for g in self.gpus
            ],
        }


def make_node(rng: random.Random, name: str, model: GpuModel, interval_s: float) -> Node:
    gpus = [
        Gpu(
            i,
            f"GPU-{rng.getrandbits(128):032x}",
            f"{rng.randrange(10**12, 10**13)}",
            rng.uniform(*model.idle_w),
            1.0 + rng.gauss(0.0, 0.025),
            float(rng.randrange(10**9, 10**11)),
        )
        for i in range(model.gpus_per_node)
    ]
    # Agents start at arbitrary times: each node samples at its own phase of the interval.
    return Node(name, model, gpus, rng.uniform(0.0, min(interval_s, 60.0)))


def power_w(model: GpuModel, gpu: Gpu, busy: float, drive: float, cap_w: float | None) -> float:
    """Noise-free power of ``gpu`` at (busy, drive): idle plus dynamic power, capped."""
    dyn = (model.limit_w * model.train_frac - gpu.idle_w) * drive * gpu.gain
    # A busy GPU with nothing heavy running still clocks up: ~8% of the limit above idle.
    p = gpu.idle_w + 0.08 * model.limit_w * min(1.0, busy * 1.5) + max(0.0, dyn)
    p = min(p, model.limit_w)
    if cap_w is not None:
        p = min(p, cap_w)
    return p


def read(
    rng: random.Random,
    model: GpuModel,
    gpu: Gpu,
    busy: float,
    drive: float,
    *,
    cap_w: float | None = None,
    tensor_ratio: float = 0.55,
    sm_ratio: float = 0.85,
) -> tuple[float, float, float, float]:
    """(util %, power W, SM active %, tensor active %) of one sample.

    Noise is triangular (sum of two uniforms: cheaper than a Gaussian, and bounded): about
    1% of full scale on utilisation, 2% on drive and 0.6% of the limit on power."""
    r = rng.random
    busy = min(1.0, max(0.0, busy + 0.014 * (r() + r() - 1.0)))
    drive = max(0.0, drive + 0.028 * (r() + r() - 1.0))
    limit = model.limit_w
    p = power_w(model, gpu, busy, drive, cap_w) + 0.0085 * limit * (r() + r() - 1.0)
    p = min(max(p, gpu.idle_w * 0.9), limit * 1.02 if cap_w is None else cap_w)
    sm = 100.0 * min(1.0, busy * sm_ratio * (0.7 + 0.3 * min(1.0, drive)))
    tensor = 100.0 * min(1.0, drive * tensor_ratio) if busy > 0.0 else 0.0
    return round(100.0 * busy, 1), round(p, 1), round(sm, 1), round(tensor, 1)


def cap_progress(model: GpuModel, drive: float, cap_w: float | None) -> float:
    """Throughput left under a power cap: clocks fall until the board fits, P ~ f^2.5."""
    if cap_w is None or drive <= 0.0:
        return 1.0
    want = model.limit_w * model.train_frac * drive
    if want <= cap_w:
        return 1.0
    return float((cap_w / want) ** 0.4)
