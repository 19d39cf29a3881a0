"""Reconciling the kubelet's allocation with observed use on MIG GPUs.

With the NVIDIA device plugin's ``single`` or ``mixed`` MIG strategy the kubelet allocates
MIG devices, named by their MIG UUIDs (``nvidia.com/gpu`` or ``nvidia.com/mig-<profile>``);
a process is placed on its MIG device by its GPU (and compute) instance id. The layout used
throughout is that of test_nvml_mig.py's H100: GPU instance 1 (3g.40gb), 2 (2g.20gb) and 5
(1g.10gb), one compute instance each.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_kubelet_reconcile import POD, PROC, FakeKubelet, _pod_logs
from test_nvml_mig import _h100_mig
from test_nvml_source import FakeNvml, _gpu, _source

from agent.attribution import Attributor
from agent.node import attribute
from agent.reconcile import FOREIGN_POD_USE, MIG_ALLOCATION, UNALLOCATED_USE, Reconciler
from agent.sources.kubelet import DeviceOwner, MigPlacement, PodResourcesResolver, UnmappedDevice
from agent.sources.podresources import api_pb2, api_pb2_grpc
from attestation.statement import parse_statement, statement_bytes
from core.samples import Attribution, DeviceInfo, GpuSample, MigInstanceSample, MigSample, NodeSample, ProcessSample
from core.tenantrules import TenantRules
from core.window import WindowAggregator

GPU0 = "GPU-5fd2a8c0-0000-4000-8000-000000000000"
MIG1 = "MIG-11111111-0000-5000-8000-000000000001"  # GPU instance 1, 3g.40gb
MIG2 = "MIG-22222222-0000-5000-8000-000000000002"  # GPU instance 2, 2g.20gb
MIG5 = "MIG-55555555-0000-5000-8000-000000000005"  # GPU instance 5, 1g.10gb: allocatable, idle
BESTEFFORT_POD = "7d8e9f00-1122-4334-8556-778899aabbcc"  # tests/fixtures/proc/9191 runs in this pod
T = 1_700_000_040.0
GIB = 2**30

# The resource each MIG device is registered under, per device-plugin MIG strategy.
RESOURCES = {
    "single": {MIG1: "nvidia.com/gpu", MIG2: "nvidia.com/gpu", MIG5: "nvidia.com/gpu"},
    "mixed": {MIG1: "nvidia.com/mig-3g.40gb", MIG2: "nvidia.com/mig-2g.20gb", MIG5: "nvidia.com/mig-1g.10gb"},
}
DEVICE = DeviceInfo(
    0, GPU0, "1650123456700", "NVIDIA H100 80GB HBM3", 80 * GIB, 700_000, identity={"mig_mode": "enabled"}
)


class Allocations:
    """The kubelet's answer, given directly (the gRPC path is tested end to end below)."""

    def __init__(self, alloc: dict[str, tuple[DeviceOwner, ...]], allocatable: frozenset[str]) -> None:
        self._alloc = alloc
        self._allocatable = allocatable

    def status(self) -> str | None:
        return None

    def allocation(self) -> dict[str, tuple[DeviceOwner, ...]]:
        return self._alloc

    def allocatable(self) -> frozenset[str]:
        return self._allocatable

    def mig_allocation(self) -> dict[MigPlacement, tuple[DeviceOwner, ...]]:
        return {}

    def unmapped(self) -> tuple[UnmappedDevice, ...]:
        return ()


def _owner(workload: str, uuid: str, strategy: str = "mixed") -> DeviceOwner:
    ns, pod = workload.split("/")
    return DeviceOwner(ns, pod, "main", RESOURCES[strategy].get(uuid, "nvidia.com/gpu"))


def _proc(
    pid: int, kind: str, workload: str, gi: int | None, ci: int | None = 0, *, tenant: str = "t-1", **kw: Any
) -> ProcessSample:
    return ProcessSample(
        pid=pid,
        mem_bytes=GIB,
        attribution=Attribution(tenant, kind, workload),
        gpu_instance_id=gi,
        compute_instance_id=ci if gi is not None else None,
        **kw,
    )


def _inst(gi: int, uuid: str | None, ci: int | None = 0, **kw: Any) -> MigInstanceSample:
    return MigInstanceSample(
        gpu_instance_id=gi,
        compute_instance_id=ci,
        uuid=uuid,
        slices=kw.pop("slices", 1),
        mem_total_bytes=10 * GIB,
        mem_used_bytes=GIB,
        **kw,
    )


LAYOUT = MigSample(slices_total=7, instances=(_inst(1, MIG1, slices=3), _inst(2, MIG2, slices=2), _inst(5, MIG5)))


def _mig_gpu(procs: tuple[ProcessSample, ...], mig: MigSample | None = LAYOUT, **kw: Any) -> GpuSample:
    return GpuSample(
        index=0, util_pct=None, mem_used_bytes=GIB, power_mw=300_000, energy_mj=1, procs=procs, mig=mig, **kw
    )


def _reconcile(
    g: GpuSample,
    alloc: dict[str, tuple[DeviceOwner, ...]],
    allocatable: frozenset[str] = frozenset({MIG1, MIG2, MIG5}),
    device: DeviceInfo = DEVICE,
) -> GpuSample:
    out = Reconciler((device,), allocations=Allocations(alloc, allocatable)).apply(NodeSample(t=T, gpus=(g,)))
    assert out.unavailable == {}, "no node-level blind spot: the allocation was read"
    return out.gpus[0]


def _alloc(strategy: str) -> dict[str, tuple[DeviceOwner, ...]]:
    return {
        MIG1: (_owner("team-a/trainer-0", MIG1, strategy),),
        MIG2: (_owner("team-b/infer-1", MIG2, strategy),),
    }


def _where(uuid: str, gi: int) -> str:
    return f"MIG device {uuid} (GPU instance {gi}, compute instance 0 of GPU {GPU0})"


TRAINER = ("k8s_pod", "team-a/trainer-0")
INFER = ("k8s_pod", "team-b/infer-1")

# (name, processes, events); allocation: MIG1 -> team-a/trainer-0, MIG2 -> team-b/infer-1,
# MIG5 allocatable and allocated to no pod.
MIG_CASES: list[tuple[str, tuple[ProcessSample, ...], tuple[tuple[str, str], ...]]] = [
    ("the allocated pod on its MIG device", (_proc(4242, *TRAINER, gi=1),), ()),
    ("two pods on two instances of one GPU", (_proc(4242, *TRAINER, gi=1), _proc(9191, *INFER, gi=2)), ()),
    (
        "a pod on another pod's MIG device",
        (_proc(9191, *INFER, gi=1),),
        ((FOREIGN_POD_USE, f"pod team-b/infer-1 uses {_where(MIG1, 1)} allocated to team-a/trainer-0"),),
    ),
    (
        "a pod without a compute instance id, in a GPU instance with one MIG device",
        (_proc(9191, *INFER, gi=1, ci=None),),
        ((FOREIGN_POD_USE, f"pod team-b/infer-1 uses {_where(MIG1, 1)} allocated to team-a/trainer-0"),),
    ),
    (
        "a pod on its own MIG device and, with a second process, on another's",
        (_proc(4242, *TRAINER, gi=1), _proc(4243, *TRAINER, gi=2)),
        ((FOREIGN_POD_USE, f"pod team-a/trainer-0 uses {_where(MIG2, 2)} allocated to team-b/infer-1"),),
    ),
    (
        "a pod on an allocatable MIG device allocated to no pod",
        (_proc(9191, *INFER, gi=5),),
        ((UNALLOCATED_USE, f"pod team-b/infer-1 uses {_where(MIG5, 5)} allocated to no pod"),),
    ),
    (
        "a host process on an allocated MIG device",
        (_proc(4242, *TRAINER, gi=1), _proc(77, "process", "pid:77", gi=1, tenant="unattributed")),
        ((UNALLOCATED_USE, f"process pid:77, outside any pod, uses {_where(MIG1, 1)} allocated to team-a/trainer-0"),),
    ),
    (
        "a Slurm job on an allocatable MIG device",
        (_proc(5151, "slurm_job", "job:123", gi=5),),
        ((UNALLOCATED_USE, f"slurm_job job:123, outside any pod, uses {_where(MIG5, 5)} allocated to no pod"),),
    ),
    ("a lease holder is not reconciled", (_proc(1, "lease", "lease:t-9", gi=5),), ()),
    (
        "a suspect PID is not reconciled",
        (_proc(324, "process", "pid:324", gi=1, tenant="unattributed", suspect="pid_not_in_host_proc"),),
        (),
    ),
]


@pytest.mark.parametrize("strategy", ["single", "mixed"])
@pytest.mark.parametrize(("name", "procs", "events"), MIG_CASES, ids=[c[0] for c in MIG_CASES])
def test_reconcile_mig(
    strategy: str, name: str, procs: tuple[ProcessSample, ...], events: tuple[tuple[str, str], ...]
) -> None:
    g = _reconcile(_mig_gpu(procs), _alloc(strategy))
    assert g.events == events, name
    assert MIG_ALLOCATION not in g.unavailable, f"{name}: every process was placed on its MIG device"


def test_mig_time_slicing_replicas_share_one_mig_device() -> None:
    """``MIG-x::0`` and ``MIG-x::1`` fold into MIG-x: both pods are its owners."""
    alloc = {MIG1: (_owner("team-a/trainer-0", MIG1), _owner("team-b/infer-1", MIG1))}
    g = _reconcile(_mig_gpu((_proc(4242, *TRAINER, gi=1), _proc(9191, *INFER, gi=1))), alloc)
    assert g.events == ()


# ---------------------------------------------------------------------------
# Where the MIG mapping is unknown: no flag, the reason recorded

UNKNOWN_CASES: list[tuple[str, GpuSample, str]] = [
    (
        "no GPU instance id (the parent's aggregate list, read when an instance list was not)",
        _mig_gpu((_proc(9191, *INFER, gi=None),)),
        "no_instance_id: k8s_pod team-b/infer-1",
    ),
    (
        "an instance the layout does not list",
        _mig_gpu(
            (_proc(9191, *INFER, gi=3),),
            MigSample(slices_total=7, instances=LAYOUT.instances, unavailable={"instance[4]": "NVML_ERROR_UNKNOWN"}),
        ),
        "instance_not_enumerated: k8s_pod team-b/infer-1 in GPU instance 3, compute instance 0",
    ),
    (
        "the MIG UUID could not be read",
        _mig_gpu(
            (_proc(9191, *INFER, gi=1),),
            MigSample(
                slices_total=7,
                instances=(_inst(1, None, unavailable={"uuid": "NVML_ERROR_UNKNOWN"}), *LAYOUT.instances[1:]),
            ),
        ),
        "mig_uuid_unknown: k8s_pod team-b/infer-1 in GPU instance 1, compute instance 0 (uuid: NVML_ERROR_UNKNOWN)",
    ),
    (
        "no compute instance id, and the GPU instance has two compute instances",
        _mig_gpu(
            (_proc(9191, *INFER, gi=1, ci=None),),
            MigSample(slices_total=7, instances=(_inst(1, MIG1, ci=0), _inst(1, MIG2, ci=1))),
        ),
        "compute_instance_unknown: k8s_pod team-b/infer-1 in GPU instance 1 (2 MIG devices)",
    ),
    (
        "MIG is on but this sample has no layout",
        _mig_gpu((_proc(9191, *INFER, gi=1),), None, unavailable={"mig": "NVML_ERROR_UNKNOWN"}),
        "mig_layout_unknown: NVML_ERROR_UNKNOWN",
    ),
]


@pytest.mark.parametrize(("name", "g", "reason"), UNKNOWN_CASES, ids=[c[0] for c in UNKNOWN_CASES])
def test_unknown_mig_mapping_is_not_flagged_and_says_why(name: str, g: GpuSample, reason: str) -> None:
    # team-b/infer-1 owns no MIG device on which the process could be known to run: any guess
    # (GPU instance 1 is team-a's) would flag it.
    alloc = {MIG1: (_owner("team-a/trainer-0", MIG1),)}
    out = _reconcile(g, alloc)
    assert out.events == (), f"{name}: a process that cannot be placed must not be flagged"
    assert out.unavailable[MIG_ALLOCATION] == reason, name


def test_a_named_compute_instance_is_placed_among_several() -> None:
    layout = MigSample(slices_total=7, instances=(_inst(1, MIG1, ci=0), _inst(1, MIG2, ci=1)))
    g = _reconcile(_mig_gpu((_proc(9191, *INFER, gi=1, ci=1),), layout), {MIG2: (_owner("team-b/infer-1", MIG2),)})
    assert g.events == () and MIG_ALLOCATION not in g.unavailable


def test_placed_and_unplaced_processes_on_one_gpu() -> None:
    """The placed process is still checked; the unplaced one only explains itself."""
    g = _reconcile(_mig_gpu((_proc(9191, *INFER, gi=1), _proc(4242, *TRAINER, gi=None))), _alloc("mixed"))
    assert g.events == ((FOREIGN_POD_USE, f"pod team-b/infer-1 uses {_where(MIG1, 1)} allocated to team-a/trainer-0"),)
    assert g.unavailable[MIG_ALLOCATION] == "no_instance_id: k8s_pod team-a/trainer-0"


def test_many_unplaced_processes_are_counted_not_listed() -> None:
    procs = tuple(_proc(100 + k, "k8s_pod", f"ns/pod-{k}", gi=None) for k in range(5))
    g = _reconcile(_mig_gpu(procs), _alloc("mixed"))
    reason = g.unavailable[MIG_ALLOCATION]
    assert reason.count("no_instance_id") == 3 and reason.endswith("; 2 more"), reason


def test_an_idle_mig_gpu_has_nothing_to_explain() -> None:
    g = _reconcile(_mig_gpu((), None), _alloc("mixed"))
    assert g.events == () and MIG_ALLOCATION not in g.unavailable


# ---------------------------------------------------------------------------
# Which GPUs are checked


def test_mig_strategy_none_checks_the_whole_gpu() -> None:
    """Strategy ``none``: the kubelet hands out the MIG-enabled GPU itself, so whoever runs in
    any of its instances must be the GPU's pod, and no instance mapping is needed."""
    alloc = {GPU0: (DeviceOwner("team-a", "trainer-0", "main", "nvidia.com/gpu"),)}
    allocatable = frozenset({GPU0})
    ok = _reconcile(_mig_gpu((_proc(4242, *TRAINER, gi=1), _proc(4243, *TRAINER, gi=None))), alloc, allocatable)
    assert ok.events == () and MIG_ALLOCATION not in ok.unavailable
    foreign = _reconcile(_mig_gpu((_proc(9191, *INFER, gi=2),)), alloc, allocatable)
    assert foreign.events == ((FOREIGN_POD_USE, f"pod team-b/infer-1 uses GPU {GPU0} allocated to team-a/trainer-0"),)


def test_a_mig_gpu_the_kubelet_does_not_hand_out_is_not_checked() -> None:
    """Allocatable devices are another GPU's: this one is reserved by the operator."""
    other = frozenset({"MIG-99999999-0000-5000-8000-000000000009"})
    g = _reconcile(_mig_gpu((_proc(9191, *INFER, gi=1), _proc(77, "process", "pid:77", gi=2))), {}, other)
    assert g.events == () and MIG_ALLOCATION not in g.unavailable


def test_a_mig_device_the_kubelet_does_not_hand_out_is_not_checked() -> None:
    """MIG1 and MIG2 are handed out, MIG5 (kept back by the operator) is not."""
    g = _reconcile(_mig_gpu((_proc(77, "process", "pid:77", gi=5),)), _alloc("mixed"), frozenset({MIG1, MIG2}))
    assert g.events == ()


def test_mig_devices_are_not_matched_to_the_gpu_uuid() -> None:
    """A MIG GPU is not reconciled as a whole when the kubelet lists its MIG devices: the
    allocation of MIG1 says nothing about a process in GPU instance 2."""
    g = _reconcile(_mig_gpu((_proc(4242, *TRAINER, gi=2),)), {MIG1: (_owner("team-a/trainer-0", MIG1),)})
    assert [k for k, _ in g.events] == [UNALLOCATED_USE], g.events
    assert MIG2 in g.events[0][1]


def test_a_gpu_whose_mig_mode_was_turned_on_after_start_is_checked_by_its_layout() -> None:
    """The device identity (read at start) says MIG is off; the sample's layout says on."""
    device = DeviceInfo(0, GPU0, "1650123456700", "NVIDIA H100 80GB HBM3", 80 * GIB, 700_000)
    g = _reconcile(_mig_gpu((_proc(9191, *INFER, gi=1),)), _alloc("mixed"), device=device)
    assert [k for k, _ in g.events] == [FOREIGN_POD_USE]


def test_unplaced_reason_reaches_the_signed_statement() -> None:
    rec = Reconciler((DEVICE,), allocations=Allocations(_alloc("mixed"), frozenset({MIG1, MIG2, MIG5})))
    agg = WindowAggregator("n1", "boot", "test", (DEVICE,), window_s=60, bucket_s=10)
    for k in range(3):
        g = _mig_gpu((_proc(9191, *INFER, gi=None), _proc(4242, *TRAINER, gi=2)))
        assert agg.add(rec.apply(NodeSample(t=T + k, gpus=(g,)))) == []
    w = agg.flush()
    assert w is not None
    gw = parse_statement(statement_bytes(w)).gpus[0]
    assert gw.unavailable[MIG_ALLOCATION] == "no_instance_id: k8s_pod team-b/infer-1"
    assert [(e.kind, e.detail) for e in gw.events] == [
        (FOREIGN_POD_USE, f"pod team-a/trainer-0 uses {_where(MIG2, 2)} allocated to team-b/infer-1")
    ], "once per window"


# ---------------------------------------------------------------------------
# End to end: fake NVML (MIG H100) -> NvmlSource -> /proc fixture attribution -> the
# kubelet's pod-resources over gRPC -> reconciliation -> window -> statement


@pytest.fixture
def mig_kubelet() -> Iterator[tuple[FakeKubelet, Path, Path]]:
    d = Path(tempfile.mkdtemp(prefix="ga-", dir="/tmp"))  # unix socket paths are limited to ~107 bytes
    fake = FakeKubelet()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(fake, server)
    sock = d / "kubelet.sock"
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    logs = _pod_logs(d / "pods", f"team-a_trainer-0_{POD}", f"team-b_infer-1_{BESTEFFORT_POD}")
    yield fake, sock, logs
    server.stop(grace=None)
    shutil.rmtree(d, ignore_errors=True)


def _register(fake: FakeKubelet, strategy: str) -> None:
    """What the device plugin registers: the MIG devices (and, mixed, a non-MIG GPU)."""
    by_resource: dict[str, list[str]] = {}
    for uuid, resource in RESOURCES[strategy].items():
        by_resource.setdefault(resource, []).append(uuid)
    if strategy == "mixed":
        by_resource.setdefault("nvidia.com/gpu", []).append("GPU-5fd2a8c0-0000-4000-8000-000000000001")
    fake.devices = [api_pb2.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in by_resource.items()]


@pytest.mark.parametrize("strategy", ["single", "mixed"])
def test_mig_end_to_end_through_the_kubelet(
    strategy: str, mig_kubelet: tuple[FakeKubelet, Path, Path], tmp_path: Path
) -> None:
    fake, sock, logs = mig_kubelet
    _register(fake, strategy)
    res = RESOURCES[strategy]
    fake.allocate("team-a", "trainer-0", "main", MIG1, resource=res[MIG1])
    fake.allocate("team-b", "infer-1", "main", f"{MIG2}::0", resource=res[MIG2])  # a time-slicing replica
    rules = TenantRules(namespaces={"team-a": "t-17", "team-b": "t-18"})
    resolver = PodResourcesResolver(sock, logs, refresh_s=0.0)
    assert resolver.status() is None
    assert resolver.allocatable() >= {MIG1, MIG2, MIG5}, f"{strategy}: the MIG resources must pass the prefix filter"
    assert {o.resource_name for o in resolver.allocation()[MIG1]} == {res[MIG1]}
    attributor = Attributor(PROC, rules, pod_resolver=resolver)
    src = _source(FakeNvml([_h100_mig()]))
    devices = src.devices()
    rec = Reconciler(devices, allocations=resolver)

    def sample() -> GpuSample:
        return _gpu(rec.apply(attribute(src.sample(), attributor, rules)), 0)

    g = sample()
    assert {p.pid: (p.attribution.workload if p.attribution else None) for p in g.procs} == {
        4242: "team-a/trainer-0",
        9191: "team-b/infer-1",
    }
    assert g.events == (), f"{strategy}: each pod runs on its own MIG device"
    assert MIG_ALLOCATION not in g.unavailable

    # The kubelet now says the devices are the other way round: both pods are on a foreign one.
    fake.pods.clear()
    fake.allocate("team-a", "trainer-0", "main", MIG2, resource=res[MIG2])
    fake.allocate("team-b", "infer-1", "main", MIG1, resource=res[MIG1])
    agg = WindowAggregator("n1", "boot", "test", devices, window_s=60, bucket_s=10)
    for k in range(3):
        s = rec.apply(attribute(src.sample(), attributor, rules))
        assert agg.add(dataclasses.replace(s, t=T + k)) == []
    w = agg.flush()
    assert w is not None
    gw = parse_statement(statement_bytes(w)).gpus[0]
    assert sorted((e.kind, e.detail) for e in gw.events) == [
        (FOREIGN_POD_USE, f"pod team-a/trainer-0 uses {_where(MIG1, 1)} allocated to team-b/infer-1"),
        (FOREIGN_POD_USE, f"pod team-b/infer-1 uses {_where(MIG2, 2)} allocated to team-a/trainer-0"),
    ]
    assert MIG_ALLOCATION not in gw.unavailable
    resolver.close()
    src.close()
