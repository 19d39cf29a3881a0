"""WindowAggregator on MIG GPUs (split ``mig_slices``, per-instance readings) and the
``sharing`` of every GPU. Expected shares are worked out by hand in the comments."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from attestation.statement import UNATTRIBUTED, GpuWindow, UsageWindow, Workload, parse_statement, statement_bytes
from core.samples import Attribution, DeviceInfo, GpuSample, MigInstanceSample, MigSample, NodeSample, ProcessSample
from core.window import WindowAggregator

T0 = 1_700_000_040  # a multiple of 60 s
GIB = 2**30
DEVICES = (DeviceInfo(0, "GPU-0", "s0", "NVIDIA H100 80GB HBM3", 80 * GIB, 700_000),)


def run(*samples: NodeSample) -> UsageWindow:
    a = WindowAggregator("n1", "boot-1", "0.1.0", DEVICES, window_s=60, bucket_s=10, sample_interval_s=1.0)
    out: list[UsageWindow] = []
    for s in samples:
        out.extend(a.add(s))
    last = a.flush()
    if last is not None:
        out.append(last)
    assert len(out) == 1, f"expected one window, got {len(out)}"
    return out[0]


def proc(
    pid: int, tenant: str, gi: int | None, *, ci: int | None = 0, mem: int | None = None, via: str = "compute"
) -> ProcessSample:
    return ProcessSample(
        pid=pid,
        mem_bytes=mem,
        attribution=Attribution(tenant, "k8s_pod", f"{tenant}/pod"),
        gpu_instance_id=gi,
        compute_instance_id=ci if gi is not None else None,
        via=via,
    )


def inst(
    gi: int, slices: int | None, *, sm: float | None = None, pids: tuple[int, ...] = (), **kw: Any
) -> MigInstanceSample:
    base: dict[str, Any] = {
        "compute_instance_id": 0,
        "uuid": f"MIG-{gi}",
        "mem_total_bytes": slices * 10 * GIB if slices else None,
        "mem_used_bytes": GIB,
    }
    base.update(kw)
    un = dict(base.pop("unavailable", {}))
    if slices is None:
        un.setdefault("slices", "NVML_ERROR_NOT_SUPPORTED")
    if sm is None:
        un.setdefault("sm_active_pct", "gpm_not_supported")
        un.setdefault("tensor_active_pct", "gpm_not_supported")
    return MigInstanceSample(
        gpu_instance_id=gi, slices=slices, sm_active_pct=sm, tensor_active_pct=sm, pids=pids, unavailable=un, **base
    )


def mig_gpu(
    procs: tuple[ProcessSample, ...], instances: tuple[MigInstanceSample, ...], total: int | None = 7
) -> GpuSample:
    return GpuSample(
        index=0,
        util_pct=None,
        mem_used_bytes=30 * GIB,
        power_mw=400_000,
        energy_mj=None,
        procs=procs,
        unavailable={"util_pct": "NVML_ERROR_NOT_SUPPORTED", "energy_mj": "NVML_ERROR_NOT_SUPPORTED"},
        mig=MigSample(
            slices_total=total,
            instances=instances,
            unavailable={} if total is not None else {"slices_total": "no_profile_supported"},
        ),
    )


def window_of(*gpu_samples: GpuSample) -> GpuWindow:
    w = run(*(NodeSample(t=T0 + k, gpus=(gs,)) for k, gs in enumerate(gpu_samples)))
    (g,) = w.gpus
    again = parse_statement(statement_bytes(w)).gpus[0]
    assert again == g, "the window must survive signing and strict parsing unchanged"
    return g


def shares(g: GpuWindow) -> dict[str, tuple[int, int]]:
    return {w.tenant: (w.share_permille, w.gpu_ms) for w in g.workloads}


TWO_TENANTS = mig_gpu(
    (proc(4242, "t-acme", 1, mem=20 * GIB), proc(9191, "t-lumen", 2, mem=2 * GIB)),
    (inst(1, 3, sm=60.0, pids=(4242,)), inst(2, 2, sm=10.0, pids=(9191,)), inst(5, 1, sm=0.0)),
)


def test_two_tenants_in_two_instances_get_their_slices() -> None:
    g = window_of(*[TWO_TENANTS] * 60)
    assert (g.split_method, g.sharing) == ("mig_slices", "mig")
    # t-acme: 3 of 7 slices = 428.571 permille; t-lumen: 2 of 7 = 285.714; in use 714.286 -> 714.
    # Floors 428 + 285 = 713; the one left goes to the larger remainder (t-lumen's .714).
    # gpu_ms: 60 s x 3/7 = 25714.3 ms and 60 s x 2/7 = 17142.9 ms.
    assert shares(g) == {"t-acme": (428, 25_714), "t-lumen": (286, 17_143)}
    assert sum(w.share_permille for w in g.workloads) <= 1000, "the idle 1g instance is nobody's"
    assert g.util_mean_permille is None and g.unavailable["util_mean_permille"] == "NVML_ERROR_NOT_SUPPORTED"


def test_the_window_reports_each_instance() -> None:
    g = window_of(*[TWO_TENANTS] * 60)
    assert g.mig is not None and g.mig.slices_total == 7 and g.mig.unavailable == {}
    by_gi = {x.gpu_instance_id: x for x in g.mig.instances}
    a = by_gi[1]
    assert (a.compute_instance_id, a.uuid, a.slices, a.samples) == (0, "MIG-1", 3, 60)
    assert (a.mem_total_bytes, a.mem_used_max_bytes) == (30 * GIB, GIB)
    assert a.sm_active_mean_permille == 600 and a.processes == 1
    assert a.workloads == (("t-acme", "k8s_pod", "t-acme/pod"),)
    assert by_gi[5].processes == 0 and by_gi[5].workloads == () and by_gi[5].sm_active_mean_permille == 0
    assert a.unavailable == {}


def test_two_workloads_in_one_instance_split_its_slices_equally() -> None:
    s = mig_gpu((proc(1, "t-a", 3), proc(2, "t-b", 3)), (inst(3, 4, sm=90.0, pids=(1, 2)),))
    g = window_of(*[s] * 10)
    # Each gets 4/7 / 2 = 2/7 of the GPU = 285.714 permille; in use 571.43 -> 571: 285 + 286.
    # gpu_ms: 10 s x 2/7 = 2857.1 ms each.
    got = shares(g)
    assert sorted(v[0] for v in got.values()) == [285, 286] and {v[1] for v in got.values()} == {2857}


def test_a_busy_instance_with_no_visible_process_is_unattributed() -> None:
    s = mig_gpu((proc(4242, "t-acme", 1),), (inst(1, 3, sm=50.0, pids=(4242,)), inst(2, 2, sm=40.0)))
    g = window_of(*[s] * 7)
    # GPM says GPU instance 2 is busy, but NVML lists no process in it: 2/7 of the GPU
    # (285.714 -> 286 by the larger remainder; 7 s x 2/7 = 2000 ms) is unattributed.
    assert shares(g) == {"t-acme": (428, 3000), UNATTRIBUTED: (286, 2000)}
    assert next(w for w in g.workloads if w.tenant == UNATTRIBUTED).workload == "no-visible-process"


def test_a_process_in_no_instance_falls_back_and_says_why() -> None:
    s = mig_gpu(
        (proc(4242, "t-acme", 1, mem=3 * GIB), proc(77, "t-lumen", None, mem=1 * GIB)),
        (inst(1, 3, sm=50.0, pids=(4242,)),),
    )
    g = window_of(*[s] * 4)
    assert g.split_method == "memory" and g.sharing == "mig"
    assert g.unavailable["mig_slices"] == "process_without_instance: pid 77"
    assert shares(g) == {"t-acme": (750, 3000), "t-lumen": (250, 1000)}, "3 GiB : 1 GiB"


def test_unknown_slice_counts_fall_back_and_say_why() -> None:
    no_total = mig_gpu((proc(1, "t-a", 1), proc(2, "t-b", 2)), (inst(1, 3), inst(2, 2)), total=None)
    g = window_of(no_total)
    assert g.split_method == "equal" and g.unavailable["mig_slices"] == "slices_total: no_profile_supported"
    assert (
        g.mig is not None
        and g.mig.slices_total is None
        and g.mig.unavailable == {"slices_total": "no_profile_supported"}
    )
    no_slices = mig_gpu((proc(1, "t-a", 1),), (inst(1, None),))
    g2 = window_of(no_slices)
    assert g2.split_method == "exclusive" and g2.unavailable["mig_slices"] == "slices_unknown: GPU instance 1"
    assert g2.mig is not None and g2.mig.instances[0].unavailable["slices"] == "NVML_ERROR_NOT_SUPPORTED"


def test_a_single_tenant_on_a_whole_mig_gpu_gets_1000() -> None:
    s = mig_gpu((proc(1, "t-a", 0),), (inst(0, 7, sm=99.0, pids=(1,)),))
    g = window_of(*[s] * 60)
    assert shares(g) == {"t-a": (1000, 60_000)}


def test_an_idle_mig_gpu_has_no_workloads_but_reports_its_instances() -> None:
    s = mig_gpu((), (inst(1, 3, sm=0.0), inst(2, 4, sm=0.0)))
    g = window_of(*[s] * 3)
    assert g.workloads == () and g.sharing == "mig" and "mig_slices" not in g.unavailable
    assert g.mig is not None and [x.samples for x in g.mig.instances] == [3, 3]


def test_an_instance_reading_missing_all_window_is_null_with_its_reason() -> None:
    s = mig_gpu((), (inst(1, 3, mem_used_bytes=None, unavailable={"mem_used_bytes": "NVML_ERROR_NO_PERMISSION"}),))
    g = window_of(s, s)
    x = g.mig.instances[0] if g.mig else None
    assert x is not None and x.mem_used_max_bytes is None
    assert x.unavailable == {
        "mem_used_max_bytes": "NVML_ERROR_NO_PERMISSION",
        "sm_active_mean_permille": "gpm_not_supported",
        "tensor_active_mean_permille": "gpm_not_supported",
    }


def test_sharing_of_gpus_without_mig() -> None:
    def plain(*procs: ProcessSample) -> GpuSample:
        util = 90.0 if procs else 0.0
        return GpuSample(index=0, util_pct=util, mem_used_bytes=GIB, power_mw=1, energy_mj=1, procs=procs)

    one = window_of(plain(proc(1, "t-a", None)))
    assert (one.sharing, one.split_method, one.mig) == ("exclusive", "exclusive", None)
    two = window_of(plain(proc(1, "t-a", None), proc(2, "t-b", None)))
    assert two.sharing == "time_slice"
    mps = window_of(plain(proc(1, "t-a", None), proc(2, "t-b", None, via="mps")))
    assert mps.sharing == "mps"
    idle = window_of(plain())
    assert idle.sharing is None and idle.workloads == ()


def test_mig_fields_in_the_signed_json() -> None:
    w = run(NodeSample(t=T0, gpus=(TWO_TENANTS,)))
    gpu = json.loads(statement_bytes(w))["predicate"]["gpus"][0]
    assert gpu["split_method"] == "mig_slices" and gpu["sharing"] == "mig"
    assert gpu["mig"]["slices_total"] == 7
    first = gpu["mig"]["instances"][0]
    assert first["gpu_instance_id"] == 1 and first["workloads"] == [
        {"tenant": "t-acme", "kind": "k8s_pod", "workload": "t-acme/pod"}
    ]
    assert set(gpu["workloads"][0]) == {f.name for f in msgspec.structs.fields(Workload)}, "workloads keep their shape"


def test_mig_mode_switched_within_the_window_falls_back() -> None:
    plain = GpuSample(
        index=0, util_pct=90.0, mem_used_bytes=GIB, power_mw=1, energy_mj=1, procs=(proc(1, "t-a", None),)
    )
    g = window_of(plain, mig_gpu((proc(2, "t-b", 1),), (inst(1, 7, sm=90.0, pids=(2,)),)))
    assert g.split_method == "equal" and g.unavailable["mig_slices"] == "mig_mode_changed"
