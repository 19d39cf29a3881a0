"""agent.sources.nvml.NvmlSource against a hand-written fake NVML.

The fake (agent.sources.nvml.fake, checked by mypy against the NVML interface) raises the
real ``pynvml.NVMLError_*`` classes and returns the real ctypes structures where pynvml
does, so the source is tested against NVML's actual error and data shapes. Scenarios are
named after the failure they reproduce (gpustat's convention).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pynvml
import pytest

from agent.sources.base import SourceError
from agent.sources.nodeio import NodeIo
from agent.sources.nvml import NvmlSource
from agent.sources.nvml.fake import H100_GPM, FakeAccounted, FakeGpu, FakeNvml, FakeProcessInfo
from core.samples import GpuSample, NodeSample

PROC = Path(__file__).resolve().parents[2] / "fixtures" / "proc"
SYS = Path(__file__).resolve().parents[2] / "fixtures" / "sys"
GIB = 1024**3
MIB = 1024**2

# ---------------------------------------------------------------------------
# The fake NVML is agent.sources.nvml.fake (typed against agent.sources.nvml.api.Nvml);
# the scenarios below describe GPUs for it.


def _h100(i: int, **kw: Any) -> FakeGpu:
    return FakeGpu(
        uuid=f"GPU-5fd2a8c0-0000-4000-8000-00000000000{i}",
        serial=f"16501234567{i:02d}",
        gpm_values=dict(H100_GPM),
        **kw,
    )


def scenario_h100_healthy() -> FakeNvml:
    """Two H100s; GPU 0 runs the Kubernetes trainer (PID 4242) and the besteffort pod (9191)."""
    gpu0 = _h100(
        0,
        procs=[FakeProcessInfo(4242, 40 * GIB), FakeProcessInfo(9191, 2 * GIB)],
        proc_util=[(4242, 1_000_000, 90), (4242, 1_166_000, 80), (9191, 1_100_000, 5)],
    )
    return FakeNvml([gpu0, _h100(1)])


def scenario_energy_not_supported() -> FakeNvml:
    """A Pascal GPU: no total-energy counter (Volta+), no GPM (Hopper+)."""
    p100 = FakeGpu(
        name="Tesla P100-PCIE-16GB",
        mem_total=16280 * MIB,
        enforced_limit_mw=250_000,
        gpm_supported=False,
        errors={"nvmlDeviceGetTotalEnergyConsumption": pynvml.NVML_ERROR_NOT_SUPPORTED},
    )
    return FakeNvml([p100])


def scenario_gpu_is_lost() -> FakeNvml:
    """Eight H100s; GPU 3 falls off the bus ("GPU has fallen off the bus", Xid 79) after its first read."""
    gpus = [_h100(i) for i in range(8)]
    gpus[3].lost_after_reads = 1
    return FakeNvml(gpus)


def scenario_nonexistent_pid() -> FakeNvml:
    """NVML lists PID 31337, which exits before its /proc entry is read."""
    return FakeNvml([_h100(0, procs=[FakeProcessInfo(4242, 40 * GIB), FakeProcessInfo(31337, 1 * GIB)])])


def scenario_driver_not_loaded() -> FakeNvml:
    """libnvidia-ml.so is installed but the kernel module is not loaded."""
    return FakeNvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)


def scenario_library_not_found() -> FakeNvml:
    """No NVIDIA driver on the node at all (or the container lacks the toolkit's mounts)."""
    return FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)


def scenario_process_memory_not_available() -> FakeNvml:
    """usedGpuMemory is NVML_VALUE_NOT_AVAILABLE (pynvml turns it into None): e.g. MIG without permission."""
    return FakeNvml([_h100(0, procs=[FakeProcessInfo(4242, None)])])


def scenario_old_driver_without_v3() -> FakeNvml:
    """A driver older than the _v3 process list: the call is not found in libnvidia-ml."""
    gpu = _h100(0, procs=[FakeProcessInfo(4242, 40 * GIB)])
    gpu.errors["nvmlDeviceGetComputeRunningProcesses_v3"] = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    return FakeNvml([gpu])


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _source(fake: FakeNvml, **kw: Any) -> NvmlSource:
    return NvmlSource(fake, proc_root=PROC, clock=Clock(), **kw)


def _gpu(sample: NodeSample, index: int) -> GpuSample:
    found = [g for g in sample.gpus if g.index == index]
    assert found, f"GPU {index} missing from the sample; unavailable={sample.unavailable}"
    return found[0]


# ---------------------------------------------------------------------------
# Tests


def test_h100_devices() -> None:
    src = _source(scenario_h100_healthy())
    devs = src.devices()
    assert [d.index for d in devs] == [0, 1]
    d = devs[0]
    assert (d.uuid, d.serial, d.model) == (
        "GPU-5fd2a8c0-0000-4000-8000-000000000000",
        "1650123456700",
        "NVIDIA H100 80GB HBM3",
    )
    assert d.mem_total_bytes == 81559 * MIB, "total memory is in bytes"
    assert d.power_limit_mw == 700_000, "the enforced power limit, in mW"
    assert d.unavailable == {}, f"a healthy H100 must have every device field: {d.unavailable}"


def test_h100_sample_values_and_units() -> None:
    fake = scenario_h100_healthy()
    s = _source(fake).sample()
    assert s.unavailable == {}, f"no GPU or node field should be missing: {s.unavailable}"
    assert s.t == 1_700_000_001.0, "t comes from the injected clock"
    g = _gpu(s, 0)
    assert (g.util_pct, g.mem_used_bytes, g.power_mw, g.energy_mj) == (87.0, 42 * GIB, 612_345, 987_654_321)
    procs = {p.pid: p for p in g.procs}
    assert set(procs) == {4242, 9191}
    assert procs[4242].mem_bytes == 40 * GIB
    assert procs[4242].start_time_ticks == 123456, "start time is field 22 of the fixture's /proc/4242/stat"
    assert procs[4242].sm_pct == pytest.approx(85.0), "SM % is the mean of NVML's samples since the last call"
    assert procs[9191].sm_pct == pytest.approx(5.0)
    assert procs[4242].attribution is None, "the NVML source leaves attribution to agent.attribution"
    assert _gpu(s, 1).procs == ()


def test_gpm_needs_two_samples_then_reports_sm_and_tensor_activity() -> None:
    src = _source(scenario_h100_healthy())
    first = _gpu(src.sample(), 0)
    assert first.sm_active_pct is None and first.unavailable.get("sm_active_pct") == "first_sample"
    second = _gpu(src.sample(), 0)
    assert second.sm_active_pct == pytest.approx(71.5)
    assert second.tensor_active_pct == pytest.approx(42.25)
    assert second.nvlink_tx_bytes_per_s == 1024.0 * MIB, "GPM gives MiB/s; the sample holds bytes/s"
    assert second.nvlink_rx_bytes_per_s == 512.0 * MIB
    assert (second.pcie_tx_bytes_per_s, second.pcie_rx_bytes_per_s) == (2.0 * MIB, 4.0 * MIB)
    assert second.unavailable == {}, second.unavailable


def test_gpm_metric_the_driver_does_not_support() -> None:
    fake = scenario_h100_healthy()
    del fake.gpus[0].gpm_values[pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC]
    src = _source(fake)
    src.sample()
    g = _gpu(src.sample(), 0)
    assert g.nvlink_tx_bytes_per_s is None
    assert g.unavailable == {"nvlink_tx_bytes_per_s": "NVML_ERROR_NOT_SUPPORTED"}
    assert g.sm_active_pct == pytest.approx(71.5), "one unsupported metric must not hide the others"


def test_process_utilisation_remembers_the_last_timestamp() -> None:
    fake = scenario_h100_healthy()
    src = _source(fake)
    src.sample()
    g = _gpu(src.sample(), 0)  # no samples newer than 1_166_000: NVML says NOT_FOUND
    seen = [arg for name, arg in fake.calls if name == "last_seen"]
    assert seen[:2] == [0, 1_166_000], f"the second query must start after the newest sample seen: {seen}"
    assert all(p.sm_pct is None for p in g.procs), "no new samples: SM % is not measured, not 0"
    assert "procs.sm_pct" not in g.unavailable, "NOT_FOUND means 'no new samples', which is not a failure"


def test_energy_not_supported_is_unavailable_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources.nvml")
    src = _source(scenario_energy_not_supported())
    samples = [src.sample() for _ in range(5)]
    g = _gpu(samples[-1], 0)
    assert g.energy_mj is None, "an unsupported counter must be None, never 0"
    assert g.unavailable["energy_mj"] == "NVML_ERROR_NOT_SUPPORTED"
    assert g.power_mw == 612_345, "other fields are still read"
    for f in ("sm_active_pct", "tensor_active_pct", "pcie_rx_bytes_per_s"):
        assert g.unavailable[f] == "gpm_not_supported", f"{f}: a Pascal GPU has no GPM"
    assert g.unavailable["nvlink_tx_bytes_per_s"] == "NVML_ERROR_NOT_SUPPORTED", (
        "without GPM the NVLink counters are asked for; a PCIe P100 has none"
    )
    energy_logs = [r for r in caplog.records if "energy_mj" in r.getMessage()]
    assert len(energy_logs) == 1, f"a recurring failure must be logged once, got {len(energy_logs)} in 5 samples"
    assert src.devices()[0].model == "Tesla P100-PCIE-16GB"


def test_one_lost_gpu_of_eight_is_left_out_and_the_rest_sampled(caplog: pytest.LogCaptureFixture) -> None:
    src = _source(scenario_gpu_is_lost())
    before = src.sample()
    assert [g.index for g in before.gpus] == list(range(8)), "all 8 GPUs are read before the loss"
    after = [src.sample() for _ in range(3)]
    for s in after:
        assert [g.index for g in s.gpus] == [0, 1, 2, 4, 5, 6, 7], "GPU 3 is lost; the other 7 must still be read"
        assert s.unavailable == {"gpu[3]": "NVML_ERROR_GPU_IS_LOST"}
        assert all(g.power_mw == 612_345 for g in s.gpus), "no lost-GPU placeholder values may appear"
    lost_logs = [r for r in caplog.records if "GPU 3" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(lost_logs) == 1, f"the lost GPU must be logged once, got {len(lost_logs)}"
    assert [d.index for d in src.devices()] == [0, 1, 2, 4, 5, 6, 7]


def test_process_that_exited_before_the_proc_read() -> None:
    g = _gpu(_source(scenario_nonexistent_pid()).sample(), 0)
    procs = {p.pid: p for p in g.procs}
    assert set(procs) == {4242, 31337}, "the exited process used GPU memory: it must stay in the sample"
    assert procs[31337].start_time_ticks is None and procs[31337].mem_bytes == 1 * GIB
    assert procs[4242].start_time_ticks == 123456
    assert g.unavailable["procs.start_time_ticks"] == "proc_unreadable"


def test_process_memory_not_available_is_none_not_zero() -> None:
    g = _gpu(_source(scenario_process_memory_not_available()).sample(), 0)
    assert g.procs[0].mem_bytes is None, "NVML_VALUE_NOT_AVAILABLE must not become 0 bytes"
    assert g.unavailable["procs.mem_bytes"] == "NVML_VALUE_NOT_AVAILABLE"


def test_raw_sentinels_are_not_readings() -> None:
    fake = FakeNvml([_h100(0, procs=[FakeProcessInfo(4242, 2**64 - 1)])])
    fake.gpus[0].power_mw = 2**32 - 1  # (unsigned int)-1
    g = _gpu(_source(fake).sample(), 0)
    assert g.power_mw is None and g.unavailable["power_mw"] == "NVML_VALUE_NOT_AVAILABLE"
    assert g.procs[0].mem_bytes is None


def test_old_driver_falls_back_to_v2_process_list() -> None:
    fake = scenario_old_driver_without_v3()
    src = _source(fake)
    for _ in range(2):
        g = _gpu(src.sample(), 0)
        assert [p.pid for p in g.procs] == [4242] and "procs" not in g.unavailable
    names = [name for name, _ in fake.calls if name.startswith("nvmlDeviceGetComputeRunningProcesses")]
    assert names == [
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlDeviceGetComputeRunningProcesses_v2",
    ], "v3 is tried once; afterwards the source remembers v2 works"


def test_process_list_failure_is_recorded_not_empty() -> None:
    fake = scenario_h100_healthy()
    fake.gpus[0].errors["nvmlDeviceGetComputeRunningProcesses_v3"] = pynvml.NVML_ERROR_NO_PERMISSION
    g = _gpu(_source(fake).sample(), 0)
    assert g.procs == () and g.unavailable["procs"] == "NVML_ERROR_NO_PERMISSION", (
        "an empty process list must be distinguishable from one that could not be read"
    )


@pytest.mark.parametrize(
    ("scenario", "needle"),
    [(scenario_driver_not_loaded, "kernel driver is not loaded"), (scenario_library_not_found, "libnvidia-ml.so.1")],
)
def test_no_driver_is_a_source_error_with_a_remedy(scenario: Any, needle: str) -> None:
    with pytest.raises(SourceError) as info:
        NvmlSource(scenario())
    text = info.value.diagnostics()
    assert needle in text, text
    assert "nvidia-smi" in text, f"the remedy must tell a person how to check the driver: {text}"
    assert isinstance(info.value.__cause__, pynvml.NVMLError), "the NVML error is kept as the cause"


def test_power_limit_falls_back_then_is_unavailable() -> None:
    fake = scenario_h100_healthy()
    fake.gpus[0].errors["nvmlDeviceGetEnforcedPowerLimit"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.gpus[0].management_limit_mw = 650_000
    fake.gpus[1].errors["nvmlDeviceGetEnforcedPowerLimit"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.gpus[1].errors["nvmlDeviceGetPowerManagementLimit"] = pynvml.NVML_ERROR_NO_PERMISSION
    d0, d1 = _source(fake).devices()
    assert d0.power_limit_mw == 650_000 and d0.unavailable == {}
    assert d1.power_limit_mw is None and d1.unavailable == {"power_limit_mw": "NVML_ERROR_NOT_SUPPORTED"}


def test_serial_not_supported_on_consumer_gpu() -> None:
    fake = FakeNvml([FakeGpu(name="NVIDIA GeForce RTX 4090", gpm_supported=False)])
    fake.gpus[0].errors["nvmlDeviceGetSerial"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    (d,) = _source(fake).devices()
    assert d.serial is None and d.unavailable == {"serial": "NVML_ERROR_NOT_SUPPORTED"}


def test_gpu_that_cannot_be_opened_at_start() -> None:
    fake = scenario_h100_healthy()
    fake.gpus[1].errors["nvmlDeviceGetHandleByIndex"] = pynvml.NVML_ERROR_NO_PERMISSION
    src = _source(fake)
    s = src.sample()
    assert [g.index for g in s.gpus] == [0]
    assert s.unavailable == {"gpu[1]": "NVML_ERROR_NO_PERMISSION"}
    assert [d.index for d in src.devices()] == [0]


def test_pynvml_without_gpm_api() -> None:
    fake = FakeNvml([_h100(0)], without=("nvmlGpmQueryDeviceSupport",))
    g = _gpu(_source(fake).sample(), 0)
    assert g.sm_active_pct is None and g.unavailable["sm_active_pct"] == "gpm_api_absent"


def test_node_io_is_merged_into_the_sample() -> None:
    class NoPsutil:
        def net_io_counters(self, pernic: bool = False) -> dict[str, Any]:
            return {}

        def disk_io_counters(self, perdisk: bool = False) -> dict[str, Any]:
            return {}

    src = _source(scenario_h100_healthy(), node_io=NodeIo(SYS, psutil_module=NoPsutil()))
    s = src.sample()
    assert s.node_io is not None
    assert s.unavailable["node_io.ib_tx_bytes_per_s"] == "first_sample"


def test_close_frees_gpm_and_shuts_down_once() -> None:
    fake = scenario_h100_healthy()
    src = _source(fake)
    src.sample()
    src.close()
    src.close()
    assert fake.shutdowns == 1, "nvmlShutdown must be called exactly once"
    assert fake.gpm_freed == fake.gpm_allocated == 4, "two GPM buffers per H100, all freed"
    with pytest.raises(SourceError, match="after close"):
        src.sample()


def test_real_pynvml_without_a_driver_is_a_source_error() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has a working NVIDIA driver; tests/gpu covers it")
    with pytest.raises(SourceError) as info:
        NvmlSource()  # the default: import the real pynvml lazily
    assert "nvidia-smi" in info.value.diagnostics()


# ---------------------------------------------------------------------------
# Identity, health, Xid events, MPS, accounting, PID namespaces (issue 3)


def scenario_xid_79_then_quiet() -> FakeNvml:
    """An H100 reports Xid 79 (fallen off the bus, recovered by reset) and Xid 48 (DBE)."""
    gpu = _h100(0)
    gpu.xids = [79, 48]
    return FakeNvml([gpu])


def scenario_hami_core_112_pid_namespaces() -> FakeNvml:
    """Driver 560.35.03 in a container (HAMi-core #112): the process list gives the container
    PID 324, the utilisation samples the host PID 645400 of the same process."""
    gpu = _h100(0, procs=[FakeProcessInfo(324, 8 * GIB)], proc_util=[(645400, 1_000_000, 13)])
    return FakeNvml([gpu])


def scenario_short_job_between_samples() -> FakeNvml:
    """Accounting mode on: PID 5151 ran for 1.5 s between two samples and is gone; 4242 runs."""
    gpu = _h100(0, procs=[FakeProcessInfo(4242, 40 * GIB)])
    gpu.accounted = [FakeAccounted(4242, 40 * GIB, running=True), FakeAccounted(5151, 3 * GIB)]
    return FakeNvml([gpu])


def scenario_mps_clients() -> FakeNvml:
    """MPS: the compute list shows the MPS server (4242); the clients are 6161 and 7171."""
    gpu = _h100(0, procs=[FakeProcessInfo(4242, 1 * GIB)])
    gpu.mps_procs = [FakeProcessInfo(6161, 5 * GIB), FakeProcessInfo(7171, 6 * GIB)]
    return FakeNvml([gpu])


def test_identity_fields_of_an_h100() -> None:
    (d, _) = _source(scenario_h100_healthy()).devices()
    assert d.identity == {
        "pci_bus_id": "00000000:18:00.0",
        "board_part_number": "692-2G520-0200-000",
        "vbios_version": "96.00.74.00.0D",
        "architecture": "hopper",
        "mig_mode": "disabled",
        "driver_version": "550.54.15",
        "cuda_driver_version": "12.4",
        "cc_mode": "off",
    }
    assert d.mem_reserved_bytes == 527 * MIB


@pytest.mark.parametrize(
    ("fn", "key"),
    [
        ("nvmlDeviceGetBoardPartNumber", "identity.board_part_number"),
        ("nvmlDeviceGetMigMode", "identity.mig_mode"),
        ("nvmlDeviceGetVbiosVersion", "identity.vbios_version"),
    ],
)
def test_identity_field_not_supported_is_named(fn: str, key: str) -> None:
    fake = FakeNvml([FakeGpu(name="NVIDIA GeForce RTX 4090", gpm_supported=False)])
    fake.gpus[0].errors[fn] = pynvml.NVML_ERROR_NOT_SUPPORTED
    (d,) = _source(fake).devices()
    assert d.unavailable == {key: "NVML_ERROR_NOT_SUPPORTED"}
    assert key.removeprefix("identity.") not in d.identity, "an unreadable identity field must be absent, not ''"


def test_confidential_computing_on_and_old_pynvml_without_cc_api() -> None:
    fake = scenario_h100_healthy()
    fake.cc_feature = pynvml.NVML_CC_SYSTEM_FEATURE_ENABLED
    assert _source(fake).devices()[0].identity["cc_mode"] == "on"
    old = FakeNvml([_h100(0)], without=("nvmlSystemGetConfComputeState",))
    (d,) = _source(old).devices()
    assert "cc_mode" not in d.identity and d.unavailable["identity.cc_mode"] == "api_absent"


def test_health_readings_and_ecc_counters() -> None:
    fake = scenario_h100_healthy()
    g0 = fake.gpus[0]
    g0.throttle_mask = pynvml.nvmlClocksThrottleReasonSwPowerCap
    g0.ecc = {(pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC): 12}
    g0.remapped_rows = (3, 1, 0, 0)
    h = _gpu(_source(fake).sample(), 0).health
    assert h["temp_gpu_c"] == 47 and h["sm_clock_mhz"] == 1980 and h["mem_clock_mhz"] == 2619
    assert h["throttle_reasons_mask"] == pynvml.nvmlClocksThrottleReasonSwPowerCap
    assert h["ecc_aggregate_corrected"] == 12 and h["ecc_volatile_uncorrected"] == 0
    assert (h["remapped_rows_correctable"], h["remapped_rows_uncorrectable"]) == (3, 1)
    assert h["retired_pages_sbe"] == 0 and h["retired_pages_pending"] == 0


def test_hopper_has_no_retired_pages_and_consumer_gpu_no_ecc() -> None:
    fake = FakeNvml([_h100(0), FakeGpu(name="NVIDIA GeForce RTX 4090", gpm_supported=False)])
    fake.gpus[0].errors["nvmlDeviceGetRetiredPages"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.gpus[1].errors["nvmlDeviceGetTotalEccErrors"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.gpus[1].errors["nvmlDeviceGetRemappedRows"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    s = _source(fake).sample()
    h100, rtx = _gpu(s, 0), _gpu(s, 1)
    assert "retired_pages_sbe" not in h100.health and h100.unavailable["health.retired_pages_sbe"] == (
        "NVML_ERROR_NOT_SUPPORTED"
    )
    assert "ecc_volatile_uncorrected" not in rtx.health, "no ECC must not read as 0 errors"
    assert rtx.unavailable["health.ecc_volatile_uncorrected"] == "NVML_ERROR_NOT_SUPPORTED"
    assert rtx.unavailable["health.remapped_rows_failure"] == "NVML_ERROR_NOT_SUPPORTED"


def test_slow_counters_are_read_every_tenth_sample() -> None:
    fake = scenario_h100_healthy()
    src = _source(fake)
    for _ in range(11):
        src.sample()
    reads = [h for name, h in fake.calls if name == "nvmlDeviceGetRemappedRows" and h == 0]
    assert len(reads) == 2, f"remapped rows read at samples 1 and 11, got {len(reads)} reads"


def test_xid_events_are_drained_without_waiting() -> None:
    fake = scenario_xid_79_then_quiet()
    src = _source(fake)
    first = _gpu(src.sample(), 0)
    assert first.events == (("xid", "Xid 79"), ("xid", "Xid 48"))
    assert _gpu(src.sample(), 0).events == (), "events are reported once"
    src.close()
    assert fake.event_sets_freed == 1


def test_xid_registration_not_supported_is_noted() -> None:
    fake = FakeNvml([FakeGpu(name="Tesla P100-PCIE-16GB", gpm_supported=False)])
    fake.gpus[0].errors["nvmlDeviceRegisterEvents"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    g = _gpu(_source(fake).sample(), 0)
    assert g.events == () and g.unavailable["xid_events"] == "NVML_ERROR_NOT_SUPPORTED"


def test_mps_clients_are_listed_beside_the_server() -> None:
    g = _gpu(_source(scenario_mps_clients()).sample(), 0)
    via = {p.pid: p.via for p in g.procs}
    assert via == {4242: "compute", 6161: "mps", 7171: "mps"}
    assert {p.pid: p.mem_bytes for p in g.procs}[7171] == 6 * GIB


def test_accounting_catches_a_process_that_lived_between_samples() -> None:
    fake = scenario_short_job_between_samples()
    src = _source(fake)
    g = _gpu(src.sample(), 0)
    short = [p for p in g.procs if p.via == "accounting"]
    assert [(p.pid, p.mem_bytes, p.suspect) for p in short] == [(5151, 3 * GIB, "exited_before_sample")]
    assert [p.pid for p in g.procs if p.via == "compute"] == [4242], "the running process is not doubled"
    g2 = _gpu(src.sample(), 0)
    assert [p.pid for p in g2.procs] == [4242], "a finished process is reported once"
    asked = [pid for name, pid in fake.calls if name == "accounting_pid"]
    assert asked == [5151], f"stats are asked once per new PID, never for listed ones: {asked}"


def test_node_blind_spots_accounting_off_and_no_gpm() -> None:
    fake = FakeNvml([_h100(0), FakeGpu(name="NVIDIA A100-SXM4-80GB", gpm_supported=False)])
    fake.gpus[0].accounting_mode = pynvml.NVML_FEATURE_DISABLED
    fake.gpus[1].accounting_mode = pynvml.NVML_FEATURE_DISABLED
    s = _source(fake).sample()
    assert s.unavailable == {"accounting_mode": "disabled on GPU 0,1", "gpm": "gpm_not_supported on GPU 1"}


def test_hami_core_112_mismatched_pid_namespaces() -> None:
    g = _gpu(_source(scenario_hami_core_112_pid_namespaces()).sample(), 0)
    (p,) = g.procs
    assert p.pid == 324 and p.sm_pct is None, "the host PID's SM % must not be given to container PID 324"
    assert g.unavailable["procs.sm_pct"] == "pid_namespace_mismatch"
    assert p.suspect == "pid_not_in_host_proc", "PID 324 is not in the host's /proc: it must not be attributed"
