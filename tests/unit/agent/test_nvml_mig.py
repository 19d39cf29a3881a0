"""NvmlSource on MIG GPUs, NVLink counters without GPM, and kernel-thread PIDs.

The fake NVML (agent.sources.nvml.fake) raises the real ``pynvml.NVMLError`` codes and returns
the real ctypes structures (``c_nvmlDeviceAttributes``, ``c_nvmlFieldValue_t``,
``c_nvmlGpuInstanceProfileInfo_v2_t``). MIG behaviour follows nvml.h: utilisation rates are
not supported on MIG-enabled GPUs, ``nvmlDeviceGetAttributes`` only answers on MIG device
handles, an empty MIG slot answers NVML_ERROR_NOT_FOUND, and the parent's process list is
the aggregate of all instances.
"""

from __future__ import annotations

import logging
from typing import Any

import pynvml
import pytest
from test_nvml_source import GIB, MIB, _gpu, _h100, _source

from agent.sources.nvml import NvmlSource
from agent.sources.nvml.fake import FakeGpu, FakeMig, FakeNvml, FakeProcessInfo
from core.samples import MigSample

TX = pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX
RX = pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX
PARENT_LIST = "nvmlDeviceGetComputeRunningProcesses_v3"


def _h100_mig(**kw: Any) -> FakeGpu:
    """An H100 in MIG mode: 3g.40gb (GPU instance 1) runs the Kubernetes trainer (PID 4242),
    2g.20gb (GPU instance 2, in slot 3) the besteffort pod (9191), 1g.10gb (GPU instance 5)
    is idle. Slots 1, 2, 4 and 6 are empty."""
    gpu = _h100(0, **kw)
    gpu.mig_mode = (pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE)
    gpu.migs = [
        FakeMig(
            slot=0,
            gi=1,
            ci=0,
            slices=3,
            uuid="MIG-11111111-0000-5000-8000-000000000001",
            mem_total=40 * GIB,
            mem_used=21 * GIB,
            procs=[FakeProcessInfo(4242, 20 * GIB)],
            gpm_values={pynvml.NVML_GPM_METRIC_SM_UTIL: 60.0, pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 30.0},
        ),
        FakeMig(
            slot=3,
            gi=2,
            ci=0,
            slices=2,
            uuid="MIG-22222222-0000-5000-8000-000000000002",
            mem_total=20 * GIB,
            mem_used=3 * GIB,
            procs=[FakeProcessInfo(9191, 2 * GIB)],
            gpm_values={pynvml.NVML_GPM_METRIC_SM_UTIL: 10.0, pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 0.0},
        ),
        FakeMig(
            slot=5,
            gi=5,
            ci=0,
            slices=1,
            uuid="MIG-55555555-0000-5000-8000-000000000005",
            mem_total=10 * GIB,
            gpm_values={pynvml.NVML_GPM_METRIC_SM_UTIL: 0.0, pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 0.0},
        ),
    ]
    return gpu


def scenario_h100_mig() -> FakeNvml:
    return FakeNvml([_h100_mig()])


def scenario_a100_mig_without_gpm() -> FakeNvml:
    """An A100 in MIG mode: MIG devices, but no GPM (Hopper+), so no per-instance activity."""
    gpu = _h100_mig(name="NVIDIA A100-SXM4-80GB", gpm_supported=False)
    gpu.architecture = pynvml.NVML_DEVICE_ARCH_AMPERE
    return FakeNvml([gpu])


def _mig(fake: FakeNvml, samples: int = 1) -> tuple[NvmlSource, MigSample, Any]:
    src = _source(fake)
    for _ in range(samples):
        g = _gpu(src.sample(), 0)
    assert g.mig is not None, f"MIG is on: the sample must carry it; unavailable={g.unavailable}"
    return src, g.mig, g


# ---------------------------------------------------------------------------
# MIG


def test_mig_instances_are_enumerated_with_ids_uuid_slices_and_memory() -> None:
    _, mig, g = _mig(scenario_h100_mig())
    assert mig.slices_total == 7, "an H100's largest GPU instance profile (7g.80gb) has 7 slices"
    got = [(x.gpu_instance_id, x.compute_instance_id, x.uuid, x.slices) for x in mig.instances]
    assert got == [
        (1, 0, "MIG-11111111-0000-5000-8000-000000000001", 3),
        (2, 0, "MIG-22222222-0000-5000-8000-000000000002", 2),
        (5, 0, "MIG-55555555-0000-5000-8000-000000000005", 1),
    ], "empty slots (NVML_ERROR_NOT_FOUND) are skipped, not reported as failures"
    by_gi = {x.gpu_instance_id: x for x in mig.instances}
    assert (by_gi[1].mem_total_bytes, by_gi[1].mem_used_bytes) == (40 * GIB, 21 * GIB), "memory of the MIG handle"
    assert by_gi[5].mem_used_bytes == 0, "an idle instance's 0 bytes is a reading, not a gap"
    assert mig.unavailable == {}, mig.unavailable


def test_mig_processes_come_from_each_instance_and_carry_its_ids() -> None:
    fake = scenario_h100_mig()
    _, mig, g = _mig(fake)
    procs = {p.pid: p for p in g.procs}
    assert {pid: (p.gpu_instance_id, p.compute_instance_id) for pid, p in procs.items()} == {4242: (1, 0), 9191: (2, 0)}
    assert procs[4242].mem_bytes == 20 * GIB
    assert {x.gpu_instance_id: x.pids for x in mig.instances} == {1: (4242,), 2: (9191,), 5: ()}
    parent = [h for name, h in fake.calls if name == PARENT_LIST and h == 0]
    assert parent == [], "every instance list was read: the parent's aggregate list is not needed"


def test_mig_gpu_has_no_utilisation_rate_and_says_why() -> None:
    _, _, g = _mig(scenario_h100_mig())
    assert g.util_pct is None, "NVML does not give utilisation rates on a MIG-enabled GPU: not 0"
    assert g.unavailable["util_pct"] == "NVML_ERROR_NOT_SUPPORTED"


def test_mig_activity_per_gpu_instance_from_gpm() -> None:
    fake = scenario_h100_mig()
    src, first, _ = _mig(fake)
    assert all(x.sm_active_pct is None and x.unavailable["sm_active_pct"] == "first_sample" for x in first.instances)
    second = _gpu(src.sample(), 0).mig
    assert second is not None
    by_gi = {x.gpu_instance_id: x for x in second.instances}
    assert (by_gi[1].sm_active_pct, by_gi[1].tensor_active_pct) == (60.0, 30.0)
    assert by_gi[5].sm_active_pct == 0.0, "an idle instance reads 0 %, a real zero"
    assert "sm_active_pct" not in by_gi[1].unavailable
    gis = [args for name, args in fake.calls if name == "nvmlGpmMigSampleGet"]
    assert gis.count(0) == 6, "one nvmlGpmMigSampleGet per GPU instance per sample, on the parent handle"


def test_a100_mig_without_gpm_has_activity_unavailable_with_the_reason() -> None:
    _, mig, _ = _mig(scenario_a100_mig_without_gpm(), samples=2)
    for x in mig.instances:
        assert x.sm_active_pct is None and x.tensor_active_pct is None
        assert x.unavailable["sm_active_pct"] == "gpm_not_supported", x.unavailable


def test_an_instance_list_without_permission_falls_back_to_the_parent_aggregate() -> None:
    fake = FakeNvml([_h100_mig()])
    fake.gpus[0].migs[0].errors[PARENT_LIST] = pynvml.NVML_ERROR_NO_PERMISSION
    _, mig, g = _mig(fake)
    by_gi = {x.gpu_instance_id: x for x in mig.instances}
    assert by_gi[1].unavailable["procs"] == "NVML_ERROR_NO_PERMISSION"
    procs = {p.pid: p for p in g.procs}
    assert procs[4242].gpu_instance_id == 1, "the aggregate list still places PID 4242 in GPU instance 1"
    assert by_gi[1].pids == (4242,)
    assert "procs" not in g.unavailable, "the parent's list was read"


def test_a_destroyed_instance_is_noted_then_dropped_at_the_next_enumeration() -> None:
    fake = scenario_h100_mig()
    src = _source(fake)
    src.sample()
    fake.gpus[0].migs = [m for m in fake.gpus[0].migs if m.gi != 2]  # `nvidia-smi mig -dgi -gi 2`
    mig2 = _gpu(src.sample(), 0).mig
    assert mig2 is not None
    gone = next(x for x in mig2.instances if x.gpu_instance_id == 2)
    assert gone.mem_used_bytes is None and gone.unavailable["mem_used_bytes"] == "NVML_ERROR_INVALID_ARGUMENT"
    mig3 = _gpu(src.sample(), 0).mig
    assert mig3 is not None
    assert [x.gpu_instance_id for x in mig3.instances] == [1, 5], "the next sample enumerates again at once"


def test_a_new_instance_appears_within_the_rescan_period() -> None:
    fake = scenario_h100_mig()
    src = _source(fake)
    src.sample()
    fake.gpus[0].migs.append(FakeMig(slot=6, gi=6, ci=0, slices=1, uuid="MIG-6"))
    seen = []
    for _ in range(10):
        mig = _gpu(src.sample(), 0).mig
        assert mig is not None
        seen.append(6 in [x.gpu_instance_id for x in mig.instances])
    assert seen[-1], "an instance created while the agent runs is reported within 10 samples"
    assert not seen[0], "enumeration is not repeated every sample"


def test_slices_total_unreadable_is_null_with_the_reason() -> None:
    fake = FakeNvml([_h100_mig(gi_profiles={})])
    _, mig, _ = _mig(fake)
    assert mig.slices_total is None
    assert mig.unavailable == {"slices_total": "no_profile_supported"}
    fake2 = FakeNvml([_h100_mig()])
    fake2.gpus[0].errors["nvmlDeviceGetGpuInstanceProfileInfo"] = pynvml.NVML_ERROR_NO_PERMISSION
    _, mig2, _ = _mig(fake2)
    assert mig2.slices_total is None and mig2.unavailable["slices_total"] == "NVML_ERROR_NO_PERMISSION"


def test_slices_total_on_a_driver_without_the_v2_profile_call() -> None:
    fake = FakeNvml([_h100_mig(gi_profiles_v2_missing=True)])
    _, mig, _ = _mig(fake)
    assert mig.slices_total == 7, "the v1 call gives the same slice counts"
    versions = [v for name, v in fake.calls if name == "profile_info_version"]
    assert versions[:2] == [2, 1] and set(versions[2:]) == {1}, "v2 is tried once, then v1 for every profile"


def test_instance_slices_unreadable_is_null_with_the_reason() -> None:
    fake = scenario_h100_mig()
    fake.gpus[0].migs[1].errors["nvmlDeviceGetAttributes"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    _, mig, _ = _mig(fake)
    x = next(x for x in mig.instances if x.gpu_instance_id == 2)
    assert x.slices is None and x.unavailable["slices"] == "NVML_ERROR_NOT_SUPPORTED"


def test_mig_enumeration_failure_is_named_and_the_parent_list_is_read() -> None:
    fake = scenario_h100_mig()
    fake.gpus[0].errors["nvmlDeviceGetMaxMigDeviceCount"] = pynvml.NVML_ERROR_NO_PERMISSION
    _, mig, g = _mig(fake)
    assert mig.instances == () and mig.unavailable["instances"] == "NVML_ERROR_NO_PERMISSION"
    assert {p.pid: p.gpu_instance_id for p in g.procs} == {4242: 1, 9191: 2}, "processes still come from the parent"


def test_mig_off_costs_one_call_per_rescan_and_reports_nothing() -> None:
    fake = FakeNvml([_h100(0)])
    src = _source(fake)
    for _ in range(11):
        g = _gpu(src.sample(), 0)
        assert g.mig is None and "mig" not in g.unavailable
    names = [name for name, h in fake.calls if h == 0]
    assert names.count("nvmlDeviceGetMigMode") == 2, "MIG mode is read at samples 1 and 11, not every sample"
    assert "nvmlDeviceGetMaxMigDeviceCount" not in names


def test_mig_mode_unreadable_is_named_every_sample_and_not_supported_is_not() -> None:
    fake = FakeNvml([_h100(0), FakeGpu(name="Tesla V100-SXM2-32GB", gpm_supported=False)])
    fake.gpus[0].errors["nvmlDeviceGetMigMode"] = pynvml.NVML_ERROR_NO_PERMISSION
    fake.gpus[1].errors["nvmlDeviceGetMigMode"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    src = _source(fake)
    for _ in range(3):
        s = src.sample()
        assert _gpu(s, 0).unavailable["mig"] == "NVML_ERROR_NO_PERMISSION"
        assert "mig" not in _gpu(s, 1).unavailable, "a GPU without MIG lacks nothing"


def test_close_frees_the_mig_gpm_buffers() -> None:
    fake = scenario_h100_mig()
    src = _source(fake)
    src.sample()
    src.sample()
    src.close()
    assert fake.gpm_allocated == 2 + 3 * 2, "two buffers for the GPU, two per GPU instance"
    assert fake.gpm_freed == fake.gpm_allocated


def test_a_mig_gpu_lost_is_left_out() -> None:
    fake = scenario_h100_mig()
    fake.gpus[0].lost_after_reads = 1
    src = _source(fake)
    src.sample()
    s = src.sample()
    assert s.gpus == () and s.unavailable == {"gpu[0]": "NVML_ERROR_GPU_IS_LOST"}


# ---------------------------------------------------------------------------
# NVLink counters without GPM


def scenario_a100_nvlink() -> FakeNvml:
    """An A100 SXM (NVLink 3, no GPM) whose counters read 1000 KiB sent and 500 KiB received."""
    gpu = FakeGpu(name="NVIDIA A100-SXM4-80GB", gpm_supported=False, nvlink_kib={TX: 1000, RX: 500})
    return FakeNvml([gpu])


def test_nvlink_bytes_per_second_from_the_counters_between_two_samples() -> None:
    fake = scenario_a100_nvlink()
    src = _source(fake)
    first = _gpu(src.sample(), 0)
    assert first.nvlink_tx_bytes_per_s is None and first.unavailable["nvlink_tx_bytes_per_s"] == "first_sample"
    g0 = fake.gpus[0]
    g0.nvlink_kib = {TX: 1000 + 2048, RX: 500 + 512}
    g0.nvlink_ts_us += 2_000_000  # NVML read the counters 2 s apart (the sample clock says 1 s)
    second = _gpu(src.sample(), 0)
    assert second.nvlink_tx_bytes_per_s == 2048 * 1024 / 2, "KiB -> bytes, over NVML's own 2 s"
    assert second.nvlink_rx_bytes_per_s == 512 * 1024 / 2
    assert "nvlink_tx_bytes_per_s" not in second.unavailable
    assert second.unavailable["sm_active_pct"] == "gpm_not_supported", "SM activity still needs GPM"
    fields = [args for name, args in fake.calls if name == "field"]
    assert set(fields) == {(TX, 0xFFFFFFFF), (RX, 0xFFFFFFFF)}, "data counters, summed over all links"


def test_nvlink_counter_reset_gives_no_rate_then_counts_from_the_new_value() -> None:
    fake = scenario_a100_nvlink()
    src = _source(fake)
    src.sample()
    g0 = fake.gpus[0]
    g0.nvlink_kib = {TX: 10, RX: 10}  # the driver was reloaded
    g0.nvlink_ts_us += 1_000_000
    reset = _gpu(src.sample(), 0)
    assert reset.nvlink_tx_bytes_per_s is None, "a counter that went back must not become a rate"
    assert reset.unavailable["nvlink_tx_bytes_per_s"] == "counter_reset"
    g0.nvlink_kib = {TX: 10 + 1024, RX: 10}
    g0.nvlink_ts_us += 1_000_000
    after = _gpu(src.sample(), 0)
    assert after.nvlink_tx_bytes_per_s == 1024 * 1024
    assert after.nvlink_rx_bytes_per_s == 0.0, "an unchanged counter is a real 0 B/s"


def test_nvlink_counter_read_at_the_same_instant_gives_no_rate() -> None:
    fake = scenario_a100_nvlink()
    src = _source(fake)
    src.sample()
    g = _gpu(src.sample(), 0)  # NVML's timestamp did not move
    assert g.nvlink_tx_bytes_per_s is None and g.unavailable["nvlink_tx_bytes_per_s"] == "no_interval"


def test_no_nvlink_is_unavailable_logged_once_and_not_asked_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources.nvml")
    fake = FakeNvml([FakeGpu(name="NVIDIA A100-PCIE-40GB", gpm_supported=False)])
    src = _source(fake)
    for _ in range(4):
        g = _gpu(src.sample(), 0)
        assert g.nvlink_tx_bytes_per_s is None
        assert g.unavailable["nvlink_tx_bytes_per_s"] == "NVML_ERROR_NOT_SUPPORTED"
    assert len([a for name, a in fake.calls if name == "field"]) == 2, "asked once (TX and RX), then remembered"
    logs = [r for r in caplog.records if "nvlink_tx_bytes_per_s" in r.getMessage()]
    assert len(logs) == 1, f"logged once, got {len(logs)}"


def test_field_values_call_failing_is_retried_next_sample() -> None:
    fake = scenario_a100_nvlink()
    fake.gpus[0].errors["nvmlDeviceGetFieldValues"] = pynvml.NVML_ERROR_NO_PERMISSION
    src = _source(fake)
    g = _gpu(src.sample(), 0)
    assert g.unavailable["nvlink_rx_bytes_per_s"] == "NVML_ERROR_NO_PERMISSION"
    del fake.gpus[0].errors["nvmlDeviceGetFieldValues"]
    assert _gpu(src.sample(), 0).unavailable["nvlink_rx_bytes_per_s"] == "first_sample"


def test_gpu_with_gpm_never_reads_the_counters() -> None:
    fake = FakeNvml([_h100(0, nvlink_kib={TX: 1, RX: 1})])
    src = _source(fake)
    src.sample()
    g = _gpu(src.sample(), 0)
    assert g.nvlink_tx_bytes_per_s == 1024.0 * MIB, "GPM's reading"
    assert not [a for name, a in fake.calls if name == "field"]


def test_pynvml_without_field_values_keeps_the_gpm_reason() -> None:
    fake = FakeNvml([FakeGpu(name="Tesla P100-SXM2-16GB", gpm_supported=False)], without=("nvmlDeviceGetFieldValues",))
    g = _gpu(_source(fake).sample(), 0)
    assert g.unavailable["nvlink_tx_bytes_per_s"] == "gpm_not_supported"


# ---------------------------------------------------------------------------
# Kernel threads


def test_a_kernel_thread_pid_is_suspect_never_a_process_to_attribute() -> None:
    """PID 88 of tests/fixtures/proc is kworker/3:1 (PF_KTHREAD): a container PID that
    happens to be a kernel thread's number on the host."""
    g = _gpu(_source(FakeNvml([_h100(0, procs=[FakeProcessInfo(88, 1 * GIB)])])).sample(), 0)
    (p,) = g.procs
    assert p.suspect == "kernel_thread", "a kernel thread never runs CUDA: the PID is not the host's"
    assert p.start_time_ticks == 1789
