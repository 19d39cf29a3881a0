"""agent.metrics: scrape success, bounded labels, no stale readings, a busy port is not fatal."""

from __future__ import annotations

import socket

import pytest

from agent.metrics import OTHER, AgentMetrics
from agent.sources.base import DeviceInfo, GpuSample, NodeSample

DEVICES = tuple(DeviceInfo(i, f"GPU-{i}", f"S{i}", "NVIDIA H100 80GB HBM3", 1, 700_000) for i in range(2))


class LostGpuSource:
    """A source whose read fails the way NvmlSource does when the driver goes away."""

    def devices(self) -> tuple[DeviceInfo, ...]:
        return DEVICES

    def sample(self) -> NodeSample:
        raise RuntimeError("NVML_ERROR_GPU_IS_LOST")

    def close(self) -> None:
        pass


class OneGpuSource(LostGpuSource):
    """GPU 0 read with its power unavailable; GPU 1 not read at all."""

    def sample(self) -> NodeSample:
        g = GpuSample(0, 50.0, 1, None, 1, unavailable={"power_mw": "NVML_ERROR_NOT_SUPPORTED"})
        return NodeSample(1.0, (g,), unavailable={"gpu[1]": "NVML_ERROR_GPU_IS_LOST"})


def _get(m: AgentMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_a_failing_source_read_is_success_0_and_the_error_goes_on() -> None:
    m = AgentMetrics("1.0")
    with pytest.raises(RuntimeError):
        m.sample(LostGpuSource())
    assert _get(m, "gpuaudit_agent_source_scrape_success", source="gpu") == 0
    assert (_get(m, "gpuaudit_agent_source_scrape_duration_seconds", source="gpu") or -1) >= 0
    assert _get(m, "gpuaudit_agent_samples_total") == 0


def test_unavailable_readings_are_counted_and_never_left_as_stale_values() -> None:
    m = AgentMetrics("1.0")
    m.set_devices(DEVICES)
    m.gpu_power.labels("GPU-0").set(300.0)  # from an earlier sample
    m.gpu_util.labels("GPU-1").set(0.9)
    m.sample(OneGpuSource())
    assert _get(m, "gpuaudit_agent_source_scrape_success", source="gpu") == 1
    assert _get(m, "gpuaudit_agent_samples_total") == 1
    assert _get(m, "gpuaudit_agent_gpu_utilization_ratio", gpu="GPU-0") == 0.5
    assert _get(m, "gpuaudit_agent_gpu_power_watts", gpu="GPU-0") is None, "an unavailable reading must not stay"
    assert _get(m, "gpuaudit_agent_gpu_utilization_ratio", gpu="GPU-1") is None, "a GPU not read has no value"
    assert (
        _get(m, "gpuaudit_agent_readings_unavailable_total", field="power_mw", reason="NVML_ERROR_NOT_SUPPORTED") == 1
    )
    # gpu[<index>] is folded into one field value: the index is in the logs, not in a label.
    assert _get(m, "gpuaudit_agent_readings_unavailable_total", field="gpu", reason="NVML_ERROR_GPU_IS_LOST") == 1


def test_unavailable_labels_are_bounded() -> None:
    m = AgentMetrics("1.0", max_unavailable_series=3)
    gpus = tuple(GpuSample(0, 1.0, 1, 1, 1, unavailable={f"field{i}": f"R{i}"}) for i in range(10))
    m.observe_sample(NodeSample(1.0, gpus, unavailable={"nodeio": "PermissionError: [Errno 13] /sys/x"}))
    fams = [f for f in m.registry.collect() if f.name == "gpuaudit_agent_readings_unavailable"]
    labels = {(s.labels["field"], s.labels["reason"]) for s in fams[0].samples}
    assert len(labels) == 4 and (OTHER, OTHER) in labels, labels
    assert all(" " not in r for _, r in labels), "free-text reasons must not become label values"


def test_rejects_by_reason() -> None:
    m = AgentMetrics("1.0")
    m.rejected("seq_gap")
    m.rejected("bad reason with spaces")
    assert _get(m, "gpuaudit_agent_rejects_total", reason="seq_gap") == 1
    assert _get(m, "gpuaudit_agent_rejects_total", reason=OTHER) == 1


def test_a_busy_port_does_not_stop_the_agent() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        m = AgentMetrics("1.0")
        assert m.serve(f"127.0.0.1:{port}") is None
    m2 = AgentMetrics("1.0")
    try:
        assert m2.serve("127.0.0.1:0") is not None and m2.port
    finally:
        m2.close()
