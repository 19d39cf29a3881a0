"""Peak dense tensor throughput of GPU models, and how NVML names map to them.

All figures are per GPU, **dense** (without 2:4 structured sparsity). NVIDIA datasheets
usually print the sparse figure with a footnote ("with sparsity"); the dense figure is
half of it, and that is what is stored here. FP8 is ``None`` for GPUs without FP8 tensor
cores (Ampere); the hard upper bound then uses BF16, the fastest training format they have.

An unknown model returns ``None`` from ``lookup``: the caller reports FLOP as unavailable
with the reason, never as zero and never guessed from another model.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

_logger = logging.getLogger(__name__)

TERA = 1e12


@dataclass(frozen=True)
class GpuPeak:
    """Peak dense tensor-core FLOP/s of one GPU model, with where the figure comes from."""

    key: str
    bf16_dense_flops: float
    fp8_dense_flops: float | None
    source: str

    @property
    def upper_flops(self) -> float:
        """The fastest dense format the GPU can train in: FP8 where it has it, else BF16."""
        return self.fp8_dense_flops if self.fp8_dense_flops is not None else self.bf16_dense_flops


_H100_SXM_SRC = "NVIDIA H100 Tensor Core GPU datasheet (2023), H100 SXM: BF16 1,979 / FP8 3,958 TFLOPS with sparsity"
_H100_PCIE_SRC = "NVIDIA H100 Tensor Core GPU datasheet (2023), H100 PCIe: BF16 1,513 / FP8 3,026 TFLOPS with sparsity"
_H100_NVL_SRC = "NVIDIA H100 NVL datasheet (2024): BF16 1,671 / FP8 3,341 TFLOPS with sparsity"
_H200_SRC = "NVIDIA H200 Tensor Core GPU datasheet (2024), H200 SXM: BF16 1,979 / FP8 3,958 TFLOPS with sparsity"
_H200_NVL_SRC = "NVIDIA H200 Tensor Core GPU datasheet (2024), H200 NVL: BF16 1,671 / FP8 3,341 TFLOPS with sparsity"
_H800_SRC = "NVIDIA H800 product brief: same tensor cores as H100 (SXM: BF16 1,979 / FP8 3,958 TFLOPS with sparsity)"
_H800_PCIE_SRC = "NVIDIA H800 PCIe product brief: BF16 1,513 / FP8 3,026 TFLOPS with sparsity, as H100 PCIe"
_H20_SRC = "NVIDIA HGX H20 product brief (2024): BF16 148 / FP8 296 TFLOPS dense"
_GH200_SRC = "NVIDIA GH200 Grace Hopper Superchip datasheet: H100 GPU, BF16 1,979 / FP8 3,958 TFLOPS with sparsity"
_A100_SRC = "NVIDIA A100 Tensor Core GPU datasheet (2021): BF16 312 TFLOPS dense (624 with sparsity); no FP8"
_A800_SRC = "NVIDIA A800 product brief: BF16 312 TFLOPS dense (624 with sparsity), as A100; no FP8"
_L40S_SRC = "NVIDIA L40S datasheet (2023): BF16 362.05 / FP8 733 TFLOPS dense (733 / 1,466 with sparsity)"
_B200_SRC = "NVIDIA HGX B200 datasheet (2024), per GPU: FP16/BF16 4.5 / FP8 9 PFLOPS with sparsity"
_GB200_SRC = "NVIDIA GB200 NVL72 datasheet (2024): BF16 360 / FP8 720 PFLOPS with sparsity for 72 GPUs"

# key -> peak. Dense = the datasheet's sparse figure / 2 where the datasheet quotes sparse.
PEAKS: dict[str, GpuPeak] = {
    p.key: p
    for p in (
        GpuPeak("H100-SXM", 989.5 * TERA, 1979.0 * TERA, _H100_SXM_SRC),
        GpuPeak("H100-PCIe", 756.5 * TERA, 1513.0 * TERA, _H100_PCIE_SRC),
        GpuPeak("H100-NVL", 835.5 * TERA, 1670.5 * TERA, _H100_NVL_SRC),
        GpuPeak("GH200", 989.5 * TERA, 1979.0 * TERA, _GH200_SRC),
        GpuPeak("H200-SXM", 989.5 * TERA, 1979.0 * TERA, _H200_SRC),
        GpuPeak("H200-NVL", 835.5 * TERA, 1670.5 * TERA, _H200_NVL_SRC),
        GpuPeak("H800-SXM", 989.5 * TERA, 1979.0 * TERA, _H800_SRC),
        GpuPeak("H800-PCIe", 756.5 * TERA, 1513.0 * TERA, _H800_PCIE_SRC),
        GpuPeak("H20", 148.0 * TERA, 296.0 * TERA, _H20_SRC),
        GpuPeak("A100-40GB", 312.0 * TERA, None, _A100_SRC),
        GpuPeak("A100-80GB", 312.0 * TERA, None, _A100_SRC),
        GpuPeak("A800", 312.0 * TERA, None, _A800_SRC),
        GpuPeak("L40S", 362.05 * TERA, 733.0 * TERA, _L40S_SRC),
        GpuPeak("B200", 2250.0 * TERA, 4500.0 * TERA, _B200_SRC),
        GpuPeak("GB200", 2500.0 * TERA, 5000.0 * TERA, _GB200_SRC),
    )
}

# (pattern over the normalised NVML name, key). First match wins: specific before general.
# Normalised: upper case, "NVIDIA" dropped, every run of non-alphanumerics one space.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), k)
    for p, k in (
        (r"\bGB200\b", "GB200"),
        (r"\bB200\b", "B200"),
        (r"\bGH200\b", "GH200"),
        (r"\bH200 NVL\b", "H200-NVL"),
        (r"\bH200\b", "H200-SXM"),
        (r"\bH100 NVL\b", "H100-NVL"),
        (r"\bH100 PCIE\b", "H100-PCIe"),
        (r"\bH100\b.*\bPCIE\b", "H100-PCIe"),
        (r"\bH100\b", "H100-SXM"),  # "H100 80GB HBM3", "H100 SXM5 80GB"
        (r"\bH800\b.*\bPCIE\b", "H800-PCIe"),
        (r"\bH800\b", "H800-SXM"),
        (r"\bH20\b", "H20"),
        (r"\bA100\b.*\b40GB\b", "A100-40GB"),
        (r"\bA100\b.*\b80GB\b", "A100-80GB"),
        (r"\bA100\b", "A100-40GB"),  # the original A100 had 40 GB; same peak either way
        (r"\bA800\b", "A800"),
        (r"\bL40S\b", "L40S"),
    )
)
_NON_ALNUM = re.compile(r"[^A-Z0-9]+")


def normalise(nvml_name: str) -> str:
    s = _NON_ALNUM.sub(" ", nvml_name.upper()).strip()
    if s.startswith("NVIDIA "):
        s = s[len("NVIDIA ") :]
    return s


@functools.lru_cache(maxsize=256)
def model_key(nvml_name: str) -> str | None:
    """The table key for an NVML device name, or None when the model is not in the table."""
    s = normalise(nvml_name)
    for pattern, key in _RULES:
        if pattern.search(s):
            return key
    return None


@functools.lru_cache(maxsize=256)
def lookup(nvml_name: str) -> GpuPeak | None:
    """Peak dense throughput for an NVML name ("NVIDIA H100 80GB HBM3"), None if unknown.

    Cached (the peaks are immutable): metrics and the detector look it up per GPU and model."""
    key = model_key(nvml_name)
    return None if key is None else PEAKS[key]
