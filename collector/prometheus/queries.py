"""The range queries ``detect --prometheus`` makes per chunk, which statement field is read
from which of them, and the boards' default power limits (``POWER_LIMITS_W``;
collector/prometheus/windows.py says what each field is)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from collector.detect.flops import normalise

NOT_EXPORTED = "not_exported_by_dcgm_exporter"


@dataclass(frozen=True)
class MetricQuery:
    """One range query per chunk: ``key`` names what the window builder reads from it."""

    key: str
    metric: str
    template: str  # {m}: the label matchers ("" or "{...}"), {r}: the step as a range

    def expr(self, matchers: str, range_: str) -> str:
        return self.template.format(m=matchers, r=range_)


METRICS: tuple[MetricQuery, ...] = (
    MetricQuery("util", "DCGM_FI_DEV_GPU_UTIL", "avg_over_time(DCGM_FI_DEV_GPU_UTIL{m}[{r}])"),
    MetricQuery("power", "DCGM_FI_DEV_POWER_USAGE", "avg_over_time(DCGM_FI_DEV_POWER_USAGE{m}[{r}])"),
    MetricQuery("power_max", "DCGM_FI_DEV_POWER_USAGE", "max_over_time(DCGM_FI_DEV_POWER_USAGE{m}[{r}])"),
    MetricQuery("mem_used", "DCGM_FI_DEV_FB_USED", "max_over_time(DCGM_FI_DEV_FB_USED{m}[{r}])"),
    MetricQuery(
        "mem_total",
        "DCGM_FI_DEV_FB_FREE",
        "last_over_time(DCGM_FI_DEV_FB_USED{m}[{r}]) + last_over_time(DCGM_FI_DEV_FB_FREE{m}[{r}])",
    ),
    MetricQuery(
        "energy",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "last_over_time(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{m}[{r}])",
    ),
    MetricQuery("sm", "DCGM_FI_PROF_SM_ACTIVE", "avg_over_time(DCGM_FI_PROF_SM_ACTIVE{m}[{r}])"),
    MetricQuery("tensor", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "avg_over_time(DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{m}[{r}])"),
    MetricQuery("power_limit", "DCGM_FI_DEV_POWER_MGMT_LIMIT", "last_over_time(DCGM_FI_DEV_POWER_MGMT_LIMIT{m}[{r}])"),
)
METRIC_OF = {q.key: q.metric for q in METRICS}
# A GPU is in a window when one of these has a point there.
_PRESENCE = ("util", "power", "mem_used", "energy")
_READ_KEYS = tuple(q.key for q in METRICS)
# Statement field -> the query it is read from (whose metric a null field's reason names).
_FIELD_KEYS = (
    ("util_mean_permille", "util"),
    ("power_mean_mw", "power"),
    ("power_max_mw", "power"),
    ("mem_used_max_bytes", "mem_used"),
    ("mem_total_bytes", "mem_total"),
    ("energy_start_mj", "energy"),
    ("energy_end_mj", "energy"),
    ("sm_active_mean_permille", "sm"),
    ("tensor_active_mean_permille", "tensor"),
)

# Default board power limit (W) by model, where no limit series is exported: the maximum
# TDP of NVIDIA's datasheets (H100: "H100 Tensor Core GPU" datasheet, 2023, SXM up to
# 700 W, PCIe 300-350 W, NVL 350-400 W; H200: datasheet 2024, SXM up to 700 W, NVL up to
# 600 W; A100: datasheet 2021, SXM 400 W, PCIe 250 W (40 GB) and 300 W (80 GB); L40S and
# L40: datasheets, 350 W and 300 W; L4 72 W; A10 150 W; A30 165 W; A40 300 W; B200: HGX
# B200 datasheet, 1,000 W; GB200: the B200 of a GB200 superchip, configured up to 1,200 W in
# GB200 NVL72 racks). An operator who capped the limit lower (nvidia-smi -pl) makes
# the power fraction read low; export DCGM_FI_DEV_POWER_MGMT_LIMIT to use the real one.
# (words that must all be in collector.detect.flops.normalise(name), watts); first match wins.
POWER_LIMITS_W: tuple[tuple[str, int], ...] = (
    ("GB200", 1200),
    ("B200", 1000),
    ("H200 NVL", 600),
    ("H200", 700),
    ("H100 NVL", 400),
    ("H100 PCIE", 350),
    ("H100", 700),
    ("H800 PCIE", 350),
    ("H800", 700),
    ("A100 PCIE 40GB", 250),
    ("A100 PCIE 80GB", 300),
    ("A100 PCIE", 250),
    ("A100", 400),
    ("L40S", 350),
    ("L40", 300),
    ("L4", 72),
    ("A10", 150),
    ("A30", 165),
    ("A40", 300),
)


@functools.lru_cache(maxsize=256)
def default_power_limit_mw(model: str) -> int | None:
    """The model's default power limit in mW from ``POWER_LIMITS_W``, or None."""
    words = set(normalise(model).split())
    for pattern, watts in POWER_LIMITS_W:
        if words.issuperset(pattern.split()):
            return watts * 1000
    return None


__all__ = ["METRICS", "METRIC_OF", "NOT_EXPORTED", "POWER_LIMITS_W", "MetricQuery", "default_power_limit_mw"]
