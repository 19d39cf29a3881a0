"""Hourly aggregates of a MIG GPU: shares that add up to less than 1000 (split_method
mig_slices) leave the rest of the GPU's time and energy to no tenant, instead of inflating
the tenants' part."""

from __future__ import annotations

import msgspec

from attestation.statement import Chain, GpuWindow, UsageWindow, Workload
from collector.retention import aggregate

START = 1_700_000_040_000


def _window(workloads: tuple[Workload, ...], split: str) -> UsageWindow:
    gpu = GpuWindow(
        index=0,
        uuid="GPU-0",
        serial="s0",
        model="NVIDIA H100 80GB HBM3",
        mem_total_bytes=1,
        power_limit_mw=700_000,
        samples=60,
        energy_start_mj=0,
        energy_end_mj=7_000,
        power_mean_mw=1,
        power_max_mw=1,
        util_mean_permille=None,
        mem_used_max_bytes=1,
        split_method=split,
        workloads=workloads,
        unavailable={"util_mean_permille": "NVML_ERROR_NOT_SUPPORTED"},
    )
    return UsageWindow("n", "b", "v", START, START + 60_000, 1000, Chain("k", 0, None), (gpu,))


def test_a_partly_used_mig_gpu_leaves_the_idle_slices_to_no_tenant() -> None:
    # t-a ran in a 3g instance (3/7 of the GPU: 428 permille), t-b in a 2g (2/7: 286).
    w = _window(
        (Workload("t-a", "k8s_pod", "a/p", 1, 1, 428, 25_714), Workload("t-b", "k8s_pod", "b/p", 1, 1, 286, 17_143)),
        "mig_slices",
    )
    rows = {r.tenant: r for r in aggregate([w])}
    # 60 000 ms and 7 000 mJ split 428 : 286 : 286 (idle).
    assert (rows["t-a"].window_ms, rows["t-a"].energy_mj) == (25_680, 2_996)
    assert (rows["t-b"].window_ms, rows["t-b"].energy_mj) == (17_160, 2_002)
    assert (rows[""].window_ms, rows[""].energy_mj) == (17_160, 2_002), "the idle 2/7 is nobody's"


def test_shares_that_add_up_to_1000_are_aggregated_as_before() -> None:
    w = _window(
        (Workload("t-a", "k8s_pod", "a/p", 1, 1, 750, 45_000), Workload("t-b", "k8s_pod", "b/p", 1, 1, 250, 15_000)),
        "memory",
    )
    rows = {r.tenant: r for r in aggregate([w])}
    assert set(rows) == {"t-a", "t-b"}, "no idle row when the GPU's time is all given out"
    assert (rows["t-a"].window_ms, rows["t-b"].window_ms) == (45_000, 15_000)
    idle = msgspec.structs.replace(w, gpus=(msgspec.structs.replace(w.gpus[0], workloads=()),))
    assert [(r.tenant, r.window_ms) for r in aggregate([idle])] == [("", 60_000)]
