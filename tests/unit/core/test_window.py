"""WindowAggregator: alignment, integer means/maxima, unavailable readings, energy carry-over,
series buckets and the split of each GPU between workloads. Expected values are worked out by
hand in the comments, not recomputed with the code under test.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from attestation.chain import ENERGY_RESET_EVENT, ChainHead, check_next
from attestation.statement import Chain, GpuWindow, UsageWindow, statement_bytes
from core.pipeline import windows_from_records
from core.samples import Attribution, DeviceInfo, GpuSample, NodeSample, ProcessSample
from core.trace import NodeRecord, SampleRecord
from core.window import NO_SAMPLE, WindowAggregator

T0 = 1_700_000_040  # a multiple of 60 s
GIB = 2**30
DEVICES = (
    DeviceInfo(0, "GPU-0", "s0", "H100", 80 * GIB, 700_000),
    DeviceInfo(1, "GPU-1", None, "H100", None, None, unavailable={"serial": "nvml_not_supported"}),
)


def agg(window_s: int = 60, bucket_s: int = 10, interval_s: float = 1.0) -> WindowAggregator:
    return WindowAggregator(
        "n1", "boot-1", "0.1.0", DEVICES, window_s=window_s, bucket_s=bucket_s, sample_interval_s=interval_s
    )


def g(index: int = 0, **kw: Any) -> GpuSample:
    base: dict[str, Any] = {"util_pct": None, "mem_used_bytes": None, "power_mw": None, "energy_mj": None}
    base.update(kw)
    return GpuSample(index=index, **base)


def at(t: float, *gpus: GpuSample, **kw: Any) -> NodeSample:
    return NodeSample(t=t, gpus=tuple(gpus), **kw)


def run(a: WindowAggregator, *samples: NodeSample) -> list[UsageWindow]:
    out: list[UsageWindow] = []
    for s in samples:
        out.extend(a.add(s))
    last = a.flush()
    if last is not None:
        out.append(last)
    return out


def only(windows: list[UsageWindow]) -> UsageWindow:
    assert len(windows) == 1, f"expected one window, got {[(w.start_ms, w.end_ms) for w in windows]}"
    return windows[0]


def gpu0(w: UsageWindow) -> GpuWindow:
    return next(x for x in w.gpus if x.index == 0)


def proc(
    pid: int, tenant: str, *, mem: int | None = None, sm: float | None = None, workload: str = ""
) -> ProcessSample:
    return ProcessSample(
        pid=pid, mem_bytes=mem, sm_pct=sm, attribution=Attribution(tenant, "k8s_pod", workload or f"{tenant}/pod")
    )


# -- alignment -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window_s", "t", "start_s"),
    [
        (60, T0 + 0.0, T0),
        (60, T0 + 59.5, T0),
        (60, T0 + 60.0, T0 + 60),
        (300, 1_700_000_040.0, 1_699_999_800),  # 1_699_999_800 = 5_666_666 * 300
        (10, 1_700_000_049.9, 1_700_000_040),
        (3600, 1_700_000_040.0, 1_699_999_200),  # 472_222 * 3600
    ],
)
def test_window_is_aligned_to_multiples_of_window_s_since_the_epoch(window_s: int, t: float, start_s: int) -> None:
    w = only(run(agg(window_s=window_s, bucket_s=window_s), at(t, g(util_pct=1.0))))
    assert (w.start_ms, w.end_ms) == (start_s * 1000, (start_s + window_s) * 1000)


def test_a_sample_at_the_boundary_closes_the_window() -> None:
    a = agg()
    assert a.add(at(T0 + 30, g(util_pct=1.0))) == []
    assert a.add(at(T0 + 59.9, g(util_pct=1.0))) == []
    closed = a.add(at(T0 + 60, g(util_pct=1.0)))
    assert [(w.start_ms, gpu0(w).samples) for w in closed] == [(T0 * 1000, 2)]
    rest = a.flush()
    assert rest is not None and rest.start_ms == (T0 + 60) * 1000 and gpu0(rest).samples == 1
    assert a.flush() is None, "flushing twice must not produce a second window"


def test_a_sample_earlier_than_the_open_window_raises() -> None:
    a = agg()
    a.add(at(T0 + 60, g(util_pct=1.0)))
    with pytest.raises(ValueError, match="before the open window"):
        a.add(at(T0 + 59, g(util_pct=1.0)))


@pytest.mark.parametrize(("window_s", "bucket_s"), [(60, 7), (60, 0), (0, 10), (-60, 10), (60, 120)])
def test_window_must_be_a_positive_multiple_of_bucket(window_s: int, bucket_s: int) -> None:
    with pytest.raises(ValueError):
        agg(window_s=window_s, bucket_s=bucket_s)


# -- means, maxima, series -------------------------------------------------------------


def test_means_and_maxima_are_integers_computed_over_available_readings() -> None:
    a = agg(interval_s=5.0)
    w = only(
        run(
            a,
            at(
                T0 + 0,
                g(
                    util_pct=10,
                    power_mw=100_000,
                    mem_used_bytes=1 * GIB,
                    energy_mj=1000,
                    sm_active_pct=50,
                    nvlink_tx_bytes_per_s=100.0,
                ),
            ),
            at(
                T0 + 5,
                g(
                    util_pct=20,
                    power_mw=200_000,
                    mem_used_bytes=5 * GIB,
                    energy_mj=2000,
                    sm_active_pct=60,
                    nvlink_tx_bytes_per_s=300.0,
                ),
            ),
            at(T0 + 10, g(util_pct=35, power_mw=301_000, mem_used_bytes=3 * GIB, energy_mj=3500)),
            at(
                T0 + 25,
                g(
                    util_pct=None,
                    power_mw=150_000,
                    mem_used_bytes=2 * GIB,
                    energy_mj=4000,
                    unavailable={"util_pct": "nvml_error_unknown"},
                ),
            ),
        )
    )
    x = gpu0(w)
    assert x.samples == 4
    # util: (10 + 20 + 35) / 3 = 21.67 % -> 216.7 -> 217 permille (the missing reading is not a 0)
    assert x.util_mean_permille == 217
    # power: (100000 + 200000 + 301000 + 150000) / 4 = 187750 mW; max 301000
    assert (x.power_mean_mw, x.power_max_mw) == (187_750, 301_000)
    assert x.mem_used_max_bytes == 5 * GIB
    assert (x.energy_start_mj, x.energy_end_mj) == (1000, 4000)
    # sm: (50 + 60) / 2 = 55 % -> 550 permille
    assert x.sm_active_mean_permille == 550
    # nvlink: mean 200 B/s over 4 samples * 5 s = 20 s -> 4000 B
    assert x.nvlink_tx_bytes == 4000
    assert w.sample_interval_ms == 5000
    # series (10 s buckets): b0 = {T0, T0+5}, b1 = {T0+10}, b2 = {T0+25}; b3..b5 empty
    assert x.series is not None and x.series.bucket_ms == 10_000
    assert x.series.util_permille == (150, 350, None, None, None, None)
    assert x.series.power_mw == (150_000, 301_000, 150_000, None, None, None)
    # identity comes from the device record
    assert (x.uuid, x.serial, x.model, x.mem_total_bytes, x.power_limit_mw) == (
        "GPU-0",
        "s0",
        "H100",
        80 * GIB,
        700_000,
    )


@pytest.mark.parametrize(("bucket_s", "n"), [(10, 6), (20, 3), (60, 1), (1, 60)])
def test_series_has_window_over_bucket_buckets_and_empty_ones_are_none(bucket_s: int, n: int) -> None:
    w = only(run(agg(bucket_s=bucket_s), at(T0 + 0.5, g(util_pct=42.0, power_mw=7))))
    s = gpu0(w).series
    assert s is not None
    assert len(s.util_permille) == n and len(s.power_mw) == n
    assert s.util_permille[0] == 420 and s.power_mw[0] == 7
    assert all(v is None for v in s.util_permille[1:]), f"buckets without samples must be None: {s.util_permille}"
    assert all(v is None for v in s.power_mw[1:])


def test_permille_is_clamped_to_0_1000() -> None:
    w = only(run(agg(), at(T0, g(sm_active_pct=100.04, util_pct=100.0))))
    assert gpu0(w).sm_active_mean_permille == 1000 and gpu0(w).util_mean_permille == 1000


# -- unavailable readings --------------------------------------------------------------

READING_FIELDS = {
    # GpuSample field -> the statement fields computed from it
    "util_pct": ("util_mean_permille",),
    "power_mw": ("power_mean_mw", "power_max_mw"),
    "mem_used_bytes": ("mem_used_max_bytes",),
    "energy_mj": ("energy_start_mj", "energy_end_mj"),
    "sm_active_pct": ("sm_active_mean_permille",),
    "tensor_active_pct": ("tensor_active_mean_permille",),
    "nvlink_rx_bytes_per_s": ("nvlink_rx_bytes",),
    "pcie_tx_bytes_per_s": ("pcie_tx_bytes",),
}
FULL = {
    "util_pct": 50.0,
    "power_mw": 1,
    "mem_used_bytes": 1,
    "energy_mj": 1,
    "sm_active_pct": 1.0,
    "tensor_active_pct": 1.0,
    "nvlink_rx_bytes_per_s": 1.0,
    "pcie_tx_bytes_per_s": 1.0,
}


@pytest.mark.parametrize("source_field", sorted(READING_FIELDS))
def test_reading_unavailable_in_every_sample_is_none_with_the_source_reason(source_field: str) -> None:
    kw = {**FULL, source_field: None, "unavailable": {source_field: "nvml_not_supported"}}
    w = only(run(agg(), at(T0, g(**kw)), at(T0 + 1, g(**kw))))
    x = gpu0(w)
    for name in READING_FIELDS[source_field]:
        assert getattr(x, name) is None, (
            f"{name} must be None when {source_field} was never read, not {getattr(x, name)!r}"
        )
        assert x.unavailable.get(name) == "nvml_not_supported", f"{name}: unavailable={x.unavailable}"
    others = {n for f, names in READING_FIELDS.items() if f != source_field for n in names}
    assert not others & set(x.unavailable), f"only {source_field}'s fields are unavailable: {x.unavailable}"


def test_reading_unavailable_without_a_reason_says_not_reported() -> None:
    w = only(run(agg(), at(T0, g(util_pct=10.0))))
    assert gpu0(w).power_mean_mw is None
    assert gpu0(w).unavailable["power_mean_mw"] == "not_reported"


def test_device_reasons_are_carried_into_the_window() -> None:
    w = only(run(agg(), at(T0, g(0, util_pct=1.0), g(1, util_pct=1.0))))
    gpu1 = w.gpus[1]
    assert gpu1.serial is None and gpu1.unavailable["serial"] == "nvml_not_supported"


@pytest.mark.parametrize(
    ("node_unavailable", "reason"),
    [({}, NO_SAMPLE), ({"gpu[1]": "gpu_is_lost"}, "gpu_is_lost")],
    ids=["no-reason-given", "source-reason"],
)
def test_gpu_absent_from_every_sample_is_reported_with_zero_samples_and_a_reason(
    node_unavailable: dict[str, str], reason: str
) -> None:
    w = only(
        run(
            agg(),
            at(T0, g(0, util_pct=90.0, power_mw=5), unavailable=node_unavailable),
            at(T0 + 1, g(0, util_pct=90.0, power_mw=5)),
        )
    )
    assert [x.index for x in w.gpus] == [0, 1], "a known GPU must appear even when it was never read"
    gpu1 = w.gpus[1]
    assert gpu1.samples == 0
    assert gpu1.unavailable["readings"] == reason
    for name in ("power_mean_mw", "power_max_mw", "util_mean_permille", "mem_used_max_bytes"):
        assert getattr(gpu1, name) is None, f"{name} of an unread GPU must be None, not {getattr(gpu1, name)!r}"
    assert gpu1.workloads == ()


# -- energy ----------------------------------------------------------------------------


def test_energy_is_carried_over_between_consecutive_windows() -> None:
    ws = run(
        agg(),
        at(T0, g(energy_mj=1000)),
        at(T0 + 30, g(energy_mj=2000)),
        at(T0 + 60, g(energy_mj=2500)),
        at(T0 + 90, g(energy_mj=3000)),
        at(T0 + 120, g(energy_mj=3100)),
    )
    energies = [(gpu0(w).energy_start_mj, gpu0(w).energy_end_mj) for w in ws]
    # each window starts at the last reading before it, so no millijoule falls between windows
    assert energies == [(1000, 2000), (2000, 3000), (3000, 3100)]
    assert all(gpu0(w).events == () for w in ws)


def test_energy_is_carried_across_a_window_where_the_gpu_was_not_read() -> None:
    ws = run(agg(), at(T0, g(energy_mj=1000)), at(T0 + 60, g(1, util_pct=1.0)), at(T0 + 120, g(energy_mj=1500)))
    assert [(gpu0(w).samples, gpu0(w).energy_start_mj, gpu0(w).energy_end_mj) for w in ws] == [
        (1, 1000, 1000),
        (0, 1000, 1000),
        (1, 1000, 1500),
    ]


@pytest.mark.parametrize(
    ("second_window", "end"),
    [((500, 600), 600), ((2500, 100), 100)],
    ids=["reset-at-window-start", "reset-mid-window"],
)
def test_counter_going_back_is_recorded_as_a_reset_and_the_chain_accepts_it(
    second_window: tuple[int, int], end: int
) -> None:
    a, b = second_window
    ws = run(
        agg(),
        at(T0, g(energy_mj=1000)),
        at(T0 + 1, g(energy_mj=2000)),
        at(T0 + 60, g(energy_mj=a)),
        at(T0 + 61, g(energy_mj=b)),
    )
    first, second = (gpu0(w) for w in ws)
    assert first.events == ()
    assert [e.kind for e in second.events] == [ENERGY_RESET_EVENT], f"events: {second.events}"
    assert (second.energy_start_mj, second.energy_end_mj) == (2000, end)
    head = ChainHead(
        key_id="k", seq=0, digest="0" * 64, end_ms=ws[0].end_ms, boot_id="boot-1", energy_end_mj={"GPU-0": 2000}
    )
    stmt = msgspec.structs.replace(ws[1], chain=Chain("k", 1, "0" * 64))
    check_next(head, stmt, "1" * 64, "k")  # must not raise energy_decrease


# -- workloads -------------------------------------------------------------------------


def shares(x: GpuWindow) -> dict[str, tuple[int, int]]:
    return {wl.tenant: (wl.share_permille, wl.gpu_ms) for wl in x.workloads}


def four(*procs_per_sample: tuple[ProcessSample, ...], util: float = 80.0) -> GpuWindow:
    samples = [at(T0 + i, g(util_pct=util, procs=p)) for i, p in enumerate(procs_per_sample)]
    return gpu0(only(run(agg(), *samples)))


def test_single_workload_is_exclusive() -> None:
    x = four(*[(proc(1, "t-a", mem=GIB, sm=80.0), proc(2, "t-a", mem=GIB, sm=5.0))] * 4)
    assert x.split_method == "exclusive"
    (wl,) = x.workloads
    assert (wl.tenant, wl.kind, wl.workload) == ("t-a", "k8s_pod", "t-a/pod")
    assert (wl.share_permille, wl.gpu_ms, wl.processes, wl.mem_max_bytes) == (1000, 4000, 2, 2 * GIB)


def test_two_workloads_with_process_sm_are_split_by_sm() -> None:
    # A's fraction per sample: 60/80, 60/80, 10/40, 30/40 = .75 + .75 + .25 + .75 = 2.5 -> 625 permille, 2500 ms
    # B's: .25 + .25 + .75 + .25 = 1.5 -> 375 permille, 1500 ms
    x = four(
        (proc(1, "A", sm=60.0), proc(2, "B", sm=20.0)),
        (proc(1, "A", sm=60.0), proc(2, "B", sm=20.0)),
        (proc(1, "A", sm=10.0), proc(2, "B", sm=30.0)),
        (proc(1, "A", sm=30.0), proc(2, "B", sm=10.0)),
    )
    assert x.split_method == "process_sm"
    assert shares(x) == {"A": (625, 2500), "B": (375, 1500)}


def test_without_sm_but_with_memory_the_split_is_by_memory() -> None:
    x = four(*[(proc(1, "A", mem=3 * GIB), proc(2, "B", mem=1 * GIB, sm=50.0))] * 4)
    assert x.split_method == "memory"
    assert shares(x) == {"A": (750, 3000), "B": (250, 1000)}
    assert {wl.tenant: wl.mem_max_bytes for wl in x.workloads} == {"A": 3 * GIB, "B": GIB}


def test_without_sm_or_memory_the_split_is_equal() -> None:
    x = four(*[(proc(1, "A", mem=GIB), proc(2, "B", sm=50.0))] * 4)
    assert x.split_method == "equal"
    assert shares(x) == {"A": (500, 2000), "B": (500, 2000)}


def test_three_equal_workloads_still_add_up_to_1000() -> None:
    x = four(*[(proc(1, "A"), proc(2, "B"), proc(3, "C"))] * 4)
    got = sorted(wl.share_permille for wl in x.workloads)
    assert got == [333, 333, 334] and sum(got) == 1000


def test_busy_gpu_with_no_process_is_unattributed() -> None:
    x = four((), (), (), ())
    assert x.split_method == "exclusive"
    (wl,) = x.workloads
    assert (wl.tenant, wl.share_permille, wl.gpu_ms) == ("unattributed", 1000, 4000)


def test_busy_time_with_no_process_is_split_against_the_visible_workload() -> None:
    # 2 samples with A, 2 busy samples with nothing visible: half the GPU time is unattributed
    x = four((proc(1, "A", sm=50.0),), (proc(1, "A", sm=50.0),), (), ())
    assert x.split_method == "equal"
    assert shares(x) == {"A": (500, 2000), "unattributed": (500, 2000)}


def test_idle_gpu_with_no_process_has_no_workloads() -> None:
    assert four((), (), (), (), util=0.0).workloads == ()


def test_process_memory_unavailable_is_none_not_zero() -> None:
    x = four(*[(proc(1, "A", sm=50.0),)] * 4)
    (wl,) = x.workloads
    assert wl.mem_max_bytes is None, f"no process reported memory, yet mem_max_bytes={wl.mem_max_bytes!r}"


# -- the signed form -------------------------------------------------------------------


def _floats(v: Any, path: str = "$") -> list[str]:
    if isinstance(v, float):
        return [path]
    if isinstance(v, dict):
        return [p for k, x in v.items() for p in _floats(x, f"{path}.{k}")]
    if isinstance(v, list):
        return [p for i, x in enumerate(v) for p in _floats(x, f"{path}[{i}]")]
    return []


def test_windows_built_from_float_readings_sign_no_floats() -> None:
    from core.samples import NodeIoSample

    io = NodeIoSample(ib_tx_bytes_per_s=1.5, net_rx_bytes_per_s=2.25)
    ws = run(
        agg(interval_s=0.7),
        at(
            T0 + 0.3,
            g(
                util_pct=33.3,
                power_mw=1,
                energy_mj=5,
                sm_active_pct=12.34,
                pcie_rx_bytes_per_s=0.1,
                procs=(proc(1, "A", mem=3, sm=1.1), proc(2, "B", mem=5, sm=2.2)),
            ),
            node_io=io,
        ),
        at(T0 + 1.0, g(util_pct=66.6, procs=(proc(1, "A", sm=0.3),)), g(1, util_pct=0.5)),
    )
    doc = json.loads(statement_bytes(only(ws)))
    assert _floats(doc) == [], f"floats in the signed statement at {_floats(doc)}"


# -- trace pipeline --------------------------------------------------------------------


def test_windows_from_records_infers_the_interval_from_the_first_two_samples() -> None:
    recs: list[Any] = [NodeRecord("a", DEVICES[:1]), NodeRecord("b", DEVICES[:1])]
    for i in range(60):  # a: every 2 s for 120 s; b: every 5 s, interleaved
        recs.append(SampleRecord("a", at(T0 + 2 * i, g(util_pct=50.0))))
        if i % 2 == 0 and 5 * (i // 2) < 120:
            recs.append(SampleRecord("b", at(T0 + 5 * (i // 2), g(util_pct=50.0))))
    ws = list(windows_from_records(recs))
    by_node = {(w.node_id, w.start_ms): w for w in ws}
    assert sorted(by_node) == [("a", T0 * 1000), ("a", (T0 + 60) * 1000), ("b", T0 * 1000), ("b", (T0 + 60) * 1000)]
    for (node, _), w in by_node.items():
        interval_ms, samples = {"a": (2000, 30), "b": (5000, 12)}[node]
        assert w.sample_interval_ms == interval_ms, f"node {node}: interval {w.sample_interval_ms} ms"
        assert gpu0(w).samples == samples, f"node {node}: {gpu0(w).samples} samples in {w.start_ms}"


def test_windows_from_records_with_one_sample_still_yields_its_window() -> None:
    ws = list(windows_from_records([NodeRecord("a", DEVICES[:1]), SampleRecord("a", at(T0 + 1, g(util_pct=1.0)))]))
    assert len(ws) == 1 and gpu0(ws[0]).samples == 1 and ws[0].start_ms == T0 * 1000
