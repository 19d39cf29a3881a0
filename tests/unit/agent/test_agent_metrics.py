"""agent.metrics: scrape success, bounded labels, no stale readings, a busy port is not fatal;
the spool, the signing key and the clock as read at scrape time."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from test_spool_signing import window

from agent.clock import ClockWatch
from agent.metrics import OTHER, AgentMetrics
from agent.rotation import RotationSchedule
from agent.signing import ChainSigner
from agent.spool import Spool
from attestation.keys import Ed25519Signer
from attestation.statement import statement_bytes
from core.samples import DeviceInfo, GpuSample, NodeSample

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


# -- read at scrape time: the spool's oldest statement, drops, the signing key, clock jumps -----


def _watched(tmp_path: Path, **bounds: int) -> tuple[AgentMetrics, Spool, ChainSigner, ClockWatch]:
    spool = Spool(tmp_path / "spool.db")
    chain = ChainSigner(Ed25519Signer.generate(), spool, **bounds)
    clock = ClockWatch(tolerance_s=2.0, monotonic=_Mono())
    m = AgentMetrics("1.0")
    m.attach(spool, chain.signer.key_id, _Stats())
    m.watch(chain, clock, None)
    return m, spool, chain, clock


class _Stats:
    acked = 0
    duplicates = 0
    reconnects = 0


class _Mono:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


OLDEST = "gpuaudit_agent_spool_oldest_window_end_timestamp_seconds"


def test_the_oldest_statement_waiting_is_absent_while_the_spool_is_empty(tmp_path: Path) -> None:
    m, spool, chain, _ = _watched(tmp_path)
    assert _get(m, "gpuaudit_agent_spool_statements") == 0
    assert _get(m, OLDEST) is None, "an empty spool has no oldest statement: absent, never 0"
    chain.sign(window(0))
    chain.sign(window(1))
    assert _get(m, "gpuaudit_agent_spool_statements") == 2
    assert _get(m, OLDEST) == window(0).end_ms / 1000
    spool.ack(chain.signer.key_id, 0)
    assert _get(m, OLDEST) == window(1).end_ms / 1000, "after an ack the next statement is the oldest"
    spool.ack(chain.signer.key_id, 1)
    assert _get(m, "gpuaudit_agent_spool_statements") == 0
    assert _get(m, OLDEST) is None


def test_a_spooled_statement_without_a_readable_window_end_gives_no_time(tmp_path: Path) -> None:
    m, spool, chain, _ = _watched(tmp_path)
    spool.append(chain.signer.key_id, 0, "d", b"not an envelope", 0)
    assert _get(m, "gpuaudit_agent_spool_statements") == 1
    assert _get(m, OLDEST) is None, "an unreadable window end must not become a made-up time"


def test_drops_are_counted_once_each_by_reason(tmp_path: Path) -> None:
    one = len(statement_bytes(window(0))) + 200
    m, spool, chain, _ = _watched(tmp_path, spool_max_bytes=5 * one)
    assert _get(m, "gpuaudit_agent_statements_dropped_total", reason="spool_size") == 0
    assert _get(m, "gpuaudit_agent_statements_dropped_total", reason="spool_age") == 0
    for i in range(40):  # the collector is unreachable: nothing is acknowledged
        chain.sign(window(i))
    dropped = _get(m, "gpuaudit_agent_statements_dropped_total", reason="spool_size")
    # Every statement signed is in the spool or was dropped; a drop record that takes in the
    # previous record's range must not count that range twice.
    assert dropped is not None and dropped > 0
    assert dropped + spool.count(chain.signer.key_id) == 40, (dropped, spool.count(chain.signer.key_id))
    assert _get(m, "gpuaudit_agent_statements_dropped_total", reason="spool_age") == 0


def test_age_bound_drops_are_counted_as_spool_age(tmp_path: Path) -> None:
    m, spool, chain, _ = _watched(tmp_path, spool_max_age_s=3600)
    for i in range(3):
        chain.sign(window(i))
    chain.sign(window(0, start_ms=window(2).end_ms + 2 * 3600_000))  # two hours later: the others are too old
    assert _get(m, "gpuaudit_agent_statements_dropped_total", reason="spool_age") == 3
    assert _get(m, "gpuaudit_agent_statements_dropped_total", reason="spool_size") == 0
    assert spool.count(chain.signer.key_id) == 1


def test_the_signing_key_epoch_and_first_window_follow_a_rotation(tmp_path: Path) -> None:
    m, _, chain, _ = _watched(tmp_path)
    assert _get(m, "gpuaudit_agent_key_epoch") == 0
    assert _get(m, "gpuaudit_agent_key_first_window_timestamp_seconds") is None, "a key that signed nothing has no age"
    assert _get(m, "gpuaudit_agent_key_rotation_period_seconds") is None, "no schedule: no period"
    chain.sign(window(0))
    chain.sign(window(1))
    assert _get(m, "gpuaudit_agent_key_first_window_timestamp_seconds") == window(0).start_ms / 1000
    chain.rotate(Ed25519Signer.generate())
    chain.sign(window(2))  # the old key's last statement hands over
    assert _get(m, "gpuaudit_agent_key_epoch") == 1
    assert _get(m, "gpuaudit_agent_key_first_window_timestamp_seconds") is None, "the new key has signed nothing yet"
    chain.sign(window(3))
    assert _get(m, "gpuaudit_agent_key_first_window_timestamp_seconds") == window(3).start_ms / 1000


def test_the_rotation_period_is_exported_only_when_keys_rotate_on_a_schedule(tmp_path: Path) -> None:
    spool = Spool(":memory:")
    chain = ChainSigner(Ed25519Signer.generate(), spool)
    uri = f"file:{tmp_path}/agent.key"
    for schedule, want in (
        (RotationSchedule(uri, 90), 90 * 86400.0),
        (RotationSchedule(uri, 0.5), 43200.0),
        (RotationSchedule(uri, 0), None),
        (RotationSchedule("pkcs11:token=x", 90), None),  # not a file: key: it is never rotated
    ):
        m = AgentMetrics("1.0")
        m.watch(chain, ClockWatch(2.0), schedule.period_s)
        assert _get(m, "gpuaudit_agent_key_rotation_period_seconds") == want, (schedule.uri, schedule.period_ms)


def test_clock_jumps_are_counted_by_direction(tmp_path: Path) -> None:
    m, _, _, clock = _watched(tmp_path)
    mono = clock._monotonic
    assert isinstance(mono, _Mono)
    assert _get(m, "gpuaudit_agent_clock_jumps_total", direction="back") == 0
    assert _get(m, "gpuaudit_agent_clock_jumps_total", direction="forward") == 0
    # Forward by 10 min; then back by 5 s (one step, however many samples it holds back);
    # then 1.5 s back, within the tolerance but behind a sample already used.
    for wall in (
        1000.0,
        1001.0,
        1602.0,
        1603.0,
        1599.0,
        1600.0,
        1601.0,
        1602.0,
        1603.0,
        1604.0,
        1603.5,
        1604.5,
        1605.5,
    ):
        clock.admit(wall, None)
        mono.t += 1.0
    assert _get(m, "gpuaudit_agent_clock_jumps_total", direction="forward") == 1
    assert _get(m, "gpuaudit_agent_clock_jumps_total", direction="back") == 2
    assert clock.jumps == 3


def test_without_a_running_loop_counters_are_0_and_gauges_absent() -> None:
    m = AgentMetrics("1.0")
    for reason in ("spool_size", "spool_age"):
        assert _get(m, "gpuaudit_agent_statements_dropped_total", reason=reason) == 0
    for direction in ("back", "forward"):
        assert _get(m, "gpuaudit_agent_clock_jumps_total", direction=direction) == 0
    for name in ("gpuaudit_agent_key_epoch", "gpuaudit_agent_key_first_window_timestamp_seconds", OLDEST):
        assert _get(m, name) is None, name
