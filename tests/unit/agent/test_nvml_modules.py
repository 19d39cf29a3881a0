"""The NVML source's modules one at a time, each over the fake NVML, and the interface
against the real pynvml (which mypy cannot check: nvidia-ml-py has no type information)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import pynvml
import pytest

from agent.sources.nvml import api, confidential, identity
from agent.sources.nvml.common import Ctx, GpuLostError
from agent.sources.nvml.constants import NvmlConstants
from agent.sources.nvml.fake import H100_GPM, FakeGpu, FakeHandle, FakeNvml, FakeProcessInfo
from agent.sources.nvml.gpm import Gpm
from agent.sources.nvml.health import SLOW_EVERY, Health, Xid
from agent.sources.nvml.nvlink import NvlinkCounters
from agent.sources.nvml.processes import Processes

CALLS = sorted(n for n in dir(api.Nvml) if n.startswith("nvml"))
H0 = FakeHandle(0)


def _ctx(*gpus: FakeGpu, without: tuple[str, ...] = ()) -> tuple[Ctx, FakeNvml]:
    fake = FakeNvml(list(gpus) or [FakeGpu(gpm_values=dict(H100_GPM))], without=without)
    return Ctx(fake), fake


def _positional(fn: Callable[..., object]) -> tuple[int, int]:
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    return len(params), len([p for p in params if p.default is inspect.Parameter.empty])


@pytest.mark.parametrize("name", CALLS)
def test_every_call_of_the_interface_is_in_pynvml_with_the_same_arguments(name: str) -> None:
    assert hasattr(pynvml, name), f"nvidia-ml-py has no {name}: the interface names a call that does not exist"
    assert _positional(getattr(api.Nvml, name)) == _positional(getattr(pynvml, name)), (
        f"{name}: (parameters, required) differ between the interface and pynvml"
    )


def test_load_gives_the_pynvml_module() -> None:
    assert api.load() is pynvml


def test_constants_of_an_old_binding_fall_back_to_nvml_h() -> None:
    class Old:
        NVML_ERROR_NOT_FOUND = 6

    k = NvmlConstants.of(Old())
    assert (k.error("NOT_FOUND"), k.error("GPU_IS_LOST")) == (6, None)
    assert (k.mig_enable, k.clock_mem, k.memory_v2, k.gpm_metrics_get_t) == (1, 2, None, None)
    real = NvmlConstants.of(pynvml)
    assert real.arch_names[pynvml.NVML_DEVICE_ARCH_HOPPER] == "hopper"
    assert pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE in real.gi_profiles
    assert pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT not in real.gi_profiles, "a count is not a profile"


def test_a_failed_call_is_a_reason_logged_once_and_a_lost_gpu_raises(caplog: pytest.LogCaptureFixture) -> None:
    c, fake = _ctx()
    fake.gpus[0].errors["nvmlDeviceGetSerial"] = pynvml.NVML_ERROR_NO_PERMISSION
    un: dict[str, str] = {}
    for _ in range(3):
        assert c.call(0, "serial", un, fake.nvmlDeviceGetSerial, H0) is None
    assert un == {"serial": "NVML_ERROR_NO_PERMISSION"}
    assert len([r for r in caplog.records if "serial" in r.getMessage()]) == 1
    assert c.opt(0, "x", un, None) is None and un["x"] == "api_absent"
    fake.gpus[0].errors["nvmlDeviceGetName"] = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(GpuLostError, match="NVML_ERROR_GPU_IS_LOST"):
        c.call(0, "model", un, fake.nvmlDeviceGetName, H0)


def test_identity_alone() -> None:
    c, _ = _ctx()
    d = identity.device_info(c, 0, H0)
    assert (d.model, d.power_limit_mw, d.identity["architecture"]) == ("NVIDIA H100 80GB HBM3", 700_000, "hopper")


def test_health_reads_the_slow_counters_every_tenth_time() -> None:
    c, fake = _ctx()
    health = Health(c)
    for _ in range(SLOW_EVERY + 1):
        h = health.read(0, H0, {})
    assert h["temp_gpu_c"] == 47 and h["ecc_volatile_corrected"] == 0
    assert [n for n, _ in fake.calls].count("nvmlDeviceGetRemappedRows") == 2


def test_xid_without_the_event_api_says_so() -> None:
    c, _ = _ctx(without=("nvmlEventSetCreate",))
    xid = Xid(c)
    xid.setup(0, H0)
    un: dict[str, str] = {}
    assert xid.drain(0, un) == () and un == {"xid_events": "api_absent"}


def test_gpm_alone_first_sample_then_values_and_buffers_freed() -> None:
    c, fake = _ctx()
    gpm = Gpm(c)
    gpm.setup(0, H0)
    un: dict[str, str] = {}
    assert gpm.metrics(0, H0, un) == {} and un["sm_active_pct"] == "first_sample"
    assert gpm.metrics(0, H0, {})["sm_active_pct"] == pytest.approx(71.5)
    gpm.close()
    assert fake.gpm_allocated == fake.gpm_freed == 2


def test_nvlink_counters_alone() -> None:
    tx, rx = pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX
    c, fake = _ctx(FakeGpu(gpm_supported=False, nvlink_kib={tx: 0, rx: 0}))
    counters = NvlinkCounters(c)
    counters.read(0, H0, {}, 0.0, "gpm_not_supported")
    fake.gpus[0].nvlink_kib = {tx: 1024, rx: 0}
    fake.gpus[0].nvlink_ts_us += 1_000_000
    assert counters.read(0, H0, {}, 1.0, "gpm_not_supported") == {
        "nvlink_tx_bytes_per_s": 1024 * 1024,
        "nvlink_rx_bytes_per_s": 0.0,
    }


def test_processes_alone_without_proc_root() -> None:
    c, _ = _ctx(FakeGpu(procs=[FakeProcessInfo(4242, 1024)], proc_util=[(4242, 1, 40)]))
    (p,) = Processes(c, None).read(0, H0, {})
    assert (p.pid, p.mem_bytes, p.sm_pct, p.start_time_ticks, p.suspect) == (4242, 1024, 40.0, None, None)


def test_confidential_computing_alone_names_an_unopened_gpu(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    c, fake = _ctx()
    fake.cc_feature = pynvml.NVML_CC_SYSTEM_FEATURE_ENABLED
    ev = confidential.cc_attestation(c, [H0, None], {1: "NVML_ERROR_NO_PERMISSION"}, bytes(32))
    assert ev.reason == "no_gpu_attested"
    assert ev.unavailable == {0: "NVML_ERROR_NOT_SUPPORTED", 1: "NVML_ERROR_NO_PERMISSION"}
