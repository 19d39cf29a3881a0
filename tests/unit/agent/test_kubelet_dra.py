"""DRA: GPUs a pod holds through a ResourceClaim, read from the kubelet's pod-resources
``dynamic_resources``, mapped to GPU UUIDs and MIG devices through the node's CDI specs and
the NVIDIA driver's /proc tables, and reconciled like device-plugin allocations.

Fixtures (tests/fixtures/dra): the CDI specs the NVIDIA DRA driver writes for a claim on a
whole GPU and on a MIG device (YAML, as the driver writes them) and its older standard spec
(as JSON, which CDI equally allows); ``/proc/driver/nvidia/gpus/*/information`` and
``/proc/driver/nvidia-caps/mig-minors`` of a two-GPU node; and a serialized
``ListPodResourcesResponse`` built from the generated classes (``_listed()`` below).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from test_kubelet_reconcile import FakeKubelet, kubelet, short_dir  # noqa: F401 - fixtures

from agent.reconcile import DRA_ALLOCATION, FOREIGN_POD_USE, MIG_ALLOCATION, UNALLOCATED_USE, Reconciler
from agent.sources.kubelet import (
    DeviceOwner,
    DraDeviceMap,
    MigPlacement,
    PodResourcesResolver,
    UnmappedDevice,
    UnmappedError,
)
from agent.sources.podresources import api_pb2
from core.samples import Attribution, DeviceInfo, GpuSample, MigInstanceSample, MigSample, NodeSample, ProcessSample
from core.window import WindowAggregator

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "dra"
GPU0 = "GPU-5fd2a8c0-0000-4000-8000-000000000000"  # minor 0, MIG off
GPU1 = "GPU-5fd2a8c0-0000-4000-8000-000000000001"  # minor 1, MIG on
MIG15 = "MIG-15151515-0000-5000-8000-000000000015"  # GPU 1, GPU instance 5, compute instance 0
MIG13 = "MIG-13131313-0000-5000-8000-000000000013"  # GPU 1, GPU instance 3, compute instance 0
CLAIM_GPU = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"  # its spec: cdi/k8s.gpu.nvidia.com-claim_<uid>.yaml
CLAIM_MIG = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
CLAIM_LATE = "c0ffee00-1111-4222-8333-444455556666"  # prepared after the listing: no spec yet
POOL = "gpu-node-1"  # the NVIDIA driver's pool is the node
T = 1_700_000_040.0
GIB = 2**30


def _claim_resource(device: str, *cdi: str, driver: str = "gpu.nvidia.com") -> api_pb2.ClaimResource:
    return api_pb2.ClaimResource(
        cdi_devices=[api_pb2.CDIDevice(name=n) for n in cdi], driver_name=driver, pool_name=POOL, device_name=device
    )


def _pod(ns: str, name: str, container: str, claim: str, *resources: api_pb2.ClaimResource) -> api_pb2.PodResources:
    dr = api_pb2.DynamicResource(claim_name=claim, claim_namespace=ns, claim_resources=list(resources))
    return api_pb2.PodResources(
        name=name, namespace=ns, containers=[api_pb2.ContainerResources(name=container, dynamic_resources=[dr])]
    )


def _listed() -> api_pb2.ListPodResourcesResponse:
    """What the kubelet lists on a node of the NVIDIA DRA driver (Kubernetes 1.34)."""
    mig6, mig5 = "gpu-1-mig-1g10gb-19-6", "gpu-1-mig-1g10gb-19-5"
    return api_pb2.ListPodResourcesResponse(
        pod_resources=[
            _pod("team-a", "trainer-0", "main", "trainer-0-gpu-x7k2p",
                 _claim_resource("gpu-0", f"k8s.gpu.nvidia.com/claim={CLAIM_GPU}-gpu-0")),
            _pod("team-b", "infer-3", "server", "infer-3-mig-q9z8w",
                 _claim_resource(mig6, f"k8s.gpu.nvidia.com/claim={CLAIM_MIG}-{mig6}")),
            _pod("team-c", "late-0", "main", "late-0-mig-m3n4b",
                 _claim_resource(mig5, f"k8s.gpu.nvidia.com/claim={CLAIM_LATE}-{mig5}")),
            # IMEX channels of NVIDIA's ComputeDomain driver: not GPUs, not read.
            _pod("team-a", "trainer-0-imex", "main", "trainer-0-cd",
                 _claim_resource("channel-0", "k8s.compute-domain.nvidia.com/claim=5d5d-channel-0",
                                 driver="compute-domain.nvidia.com")),
        ]
    )  # fmt: skip


# ---------------------------------------------------------------------------
# The vendored API: upstream field numbers, and the serialized fixture


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        # k8s.io/kubelet/pkg/apis/podresources/v1/api.proto: ContainerResources.dynamic_resources = 5
        (api_pb2.ContainerResources(dynamic_resources=[api_pb2.DynamicResource()]), b"\x2a\x00"),
        # DynamicResource: claim_name = 2, claim_namespace = 3, claim_resources = 4 (1: class_name, removed)
        (api_pb2.DynamicResource(claim_name="c", claim_namespace="n"), b"\x12\x01c\x1a\x01n"),
        (api_pb2.DynamicResource(claim_resources=[api_pb2.ClaimResource()]), b"\x22\x00"),
        # ClaimResource: cdi_devices = 1, driver_name = 2, pool_name = 3, device_name = 4, share_id = 5
        (api_pb2.ClaimResource(cdi_devices=[api_pb2.CDIDevice(name="x")]), b"\x0a\x03\x0a\x01x"),
        (api_pb2.ClaimResource(driver_name="d", pool_name="p", device_name="v"), b"\x12\x01d\x1a\x01p\x22\x01v"),
        (api_pb2.ClaimResource(share_id=""), b"\x2a\x00"),  # proto3 optional: present even when empty
    ],
)
def test_wire_format_is_the_kubelets(message: object, wire: bytes) -> None:
    assert message.SerializeToString() == wire  # type: ignore[attr-defined]


def test_serialized_fixture_is_what_the_kubelet_lists() -> None:
    data = (FIX / "list_pod_resources.binpb").read_bytes()
    assert data == _listed().SerializeToString(), "fixture stale: write _listed().SerializeToString() to it"
    back = api_pb2.ListPodResourcesResponse.FromString(data)
    cr = back.pod_resources[1].containers[0].dynamic_resources[0].claim_resources[0]
    assert (cr.driver_name, cr.pool_name, cr.device_name) == ("gpu.nvidia.com", POOL, "gpu-1-mig-1g10gb-19-6")
    assert cr.cdi_devices[0].name.startswith("k8s.gpu.nvidia.com/claim=")


# ---------------------------------------------------------------------------
# CDI device -> GPU UUID or MIG device


@pytest.fixture
def dra_map() -> DraDeviceMap:
    m = DraDeviceMap([FIX / "cdi"], FIX / "proc")
    m.load()
    return m


MAP_CASES = [
    ("whole GPU, claim spec (YAML)", [f"k8s.gpu.nvidia.com/claim={CLAIM_GPU}-gpu-0"], GPU0),
    (
        "MIG device, claim spec: /dev/nvidia1 + the GPU and compute instance capabilities",
        [f"k8s.gpu.nvidia.com/claim={CLAIM_MIG}-gpu-1-mig-1g10gb-19-6"],
        MigPlacement(GPU1, 5, 0),
    ),
    ("whole GPU, older driver's standard spec (JSON)", ["k8s.gpu.nvidia.com/device=gpu-0"], GPU0),
]


@pytest.mark.parametrize(("name", "cdi", "expected"), MAP_CASES, ids=[c[0] for c in MAP_CASES])
def test_cdi_devices_map_to_gpus(dra_map: DraDeviceMap, name: str, cdi: list[str], expected: object) -> None:
    assert dra_map.resolve(cdi) == expected, name


UNMAPPED_CASES = [
    ("spec not written yet", [f"k8s.gpu.nvidia.com/claim={CLAIM_LATE}-gpu-1"], "cdi_device_not_found", None),
    ("no CDI device listed", [], "no_cdi_devices", None),
    ("VFIO passthrough: no GPU NVML sees", ["k8s.gpu.nvidia.com/device=gpu-vfio-0"], "not_an_nvml_gpu", frozenset()),
    (
        "one of its CDI devices unknown: never half a mapping",
        ["k8s.gpu.nvidia.com/device=gpu-0", f"k8s.gpu.nvidia.com/claim={CLAIM_GPU}-gpu-7"],
        "cdi_device_not_found",
        None,
    ),
]


@pytest.mark.parametrize(("name", "cdi", "reason", "gpus"), UNMAPPED_CASES, ids=[c[0] for c in UNMAPPED_CASES])
def test_what_cannot_be_mapped_says_why(
    dra_map: DraDeviceMap, name: str, cdi: list[str], reason: str, gpus: frozenset[str] | None
) -> None:
    with pytest.raises(UnmappedError) as e:
        dra_map.resolve(cdi)
    assert e.value.reason.startswith(reason), (name, e.value.reason)
    assert e.value.gpus == gpus, name


def _spec(root: Path, name: str, nodes: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    devnodes = ", ".join(f'{{"path": "{n}"}}' for n in nodes)
    (root / f"k8s.gpu.nvidia.com-claim_{name}.json").write_text(
        f'{{"cdiVersion": "0.5.0", "kind": "k8s.gpu.nvidia.com/claim",'
        f' "devices": [{{"name": "{name}", "containerEdits": {{"deviceNodes": [{devnodes}]}}}}]}}'
    )


@pytest.mark.parametrize(
    ("nodes", "reason", "gpus"),
    [
        (["/dev/nvidia7"], "gpu_minor_unknown: /dev/nvidia7", None),  # the driver lists no such GPU
        (["/dev/nvidia0", "/dev/nvidia1"], "several_gpus", frozenset({GPU0, GPU1})),
        (["/dev/nvidia1", "/dev/nvidia-caps/nvidia-cap99999"], "mig_capability_unknown", frozenset({GPU1})),
        (
            ["/dev/nvidia1", "/dev/nvidia-caps/nvidia-cap183"],
            "mig_device_unknown: no compute instance",
            frozenset({GPU1}),
        ),
        (["/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap184"], "mig_capability_of_another_gpu", None),
        (["/dev/nvidiactl"], "no_gpu_device_node", None),
    ],
)
def test_device_nodes_that_do_not_name_one_device(
    tmp_path: Path, nodes: list[str], reason: str, gpus: frozenset[str] | None
) -> None:
    _spec(tmp_path / "cdi", "x", nodes)
    m = DraDeviceMap([tmp_path / "cdi"], FIX / "proc")
    m.load()
    with pytest.raises(UnmappedError) as e:
        m.resolve(["k8s.gpu.nvidia.com/claim=x"])
    assert e.value.reason.startswith(reason), e.value.reason
    assert e.value.gpus == gpus


def test_mig_management_capabilities_are_not_a_device(tmp_path: Path) -> None:
    # nvidia-cap1 and nvidia-cap2 ("config", "monitor") let a container see or change the MIG
    # layout; with them alone the device is still the whole GPU.
    _spec(tmp_path / "cdi", "x", ["/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap2"])
    m = DraDeviceMap([tmp_path / "cdi"], FIX / "proc")
    m.load()
    assert m.resolve(["k8s.gpu.nvidia.com/claim=x"]) == GPU0


def test_unreadable_spec_and_missing_driver_tables_are_named(tmp_path: Path) -> None:
    (tmp_path / "cdi").mkdir()
    (tmp_path / "cdi" / "broken.yaml").write_text("kind: [unclosed\n")
    m = DraDeviceMap([tmp_path / "cdi"], tmp_path / "no-proc")
    m.load()
    with pytest.raises(UnmappedError) as e:
        m.resolve(["k8s.gpu.nvidia.com/claim=x"])
    assert "1 spec(s) unreadable, broken.yaml" in e.value.reason, e.value.reason
    _spec(tmp_path / "cdi", "y", ["/dev/nvidia0"])
    m.load()
    with pytest.raises(UnmappedError) as e:
        m.resolve(["k8s.gpu.nvidia.com/claim=y"])
    assert e.value.reason.startswith("gpu_minor_unknown: /dev/nvidia0") and "no-proc" in e.value.reason


def test_a_spec_defined_twice_in_one_directory_is_not_trusted(tmp_path: Path) -> None:
    _spec(tmp_path / "cdi", "x", ["/dev/nvidia0"])
    text = (tmp_path / "cdi" / "k8s.gpu.nvidia.com-claim_x.json").read_text().replace("nvidia0", "nvidia1")
    (tmp_path / "cdi" / "k8s.gpu.nvidia.com-claim_x2.json").write_text(text)
    m = DraDeviceMap([tmp_path / "cdi"], FIX / "proc")
    m.load()
    with pytest.raises(UnmappedError, match="cdi_device_conflict"):
        m.resolve(["k8s.gpu.nvidia.com/claim=x"])


# ---------------------------------------------------------------------------
# The resolver: a real gRPC kubelet serving the fixture listing


@pytest.fixture
def dra_node(tmp_path: Path) -> Iterator[Path]:
    cdi = tmp_path / "cdi"
    shutil.copytree(FIX / "cdi", cdi)
    yield cdi


def _resolver(sock: Path, tmp_path: Path, cdi: Path) -> PodResourcesResolver:
    return PodResourcesResolver(sock, tmp_path, refresh_s=0.0, cdi_dirs=[cdi], driver_proc_root=FIX / "proc")


def test_resolver_reads_claims_and_maps_them(
    kubelet: tuple[FakeKubelet, Path],  # noqa: F811
    tmp_path: Path,
    dra_node: Path,
) -> None:
    fake, sock = kubelet
    fake.pods.extend(
        api_pb2.ListPodResourcesResponse.FromString((FIX / "list_pod_resources.binpb").read_bytes()).pod_resources
    )
    fake.allocate("team-d", "legacy-0", "main", GPU1)  # a device-plugin allocation beside them
    r = _resolver(sock, tmp_path, dra_node)
    assert r.status() is None
    owner_a = DeviceOwner("team-a", "trainer-0", "main", f"gpu.nvidia.com/{POOL}/gpu-0", "team-a/trainer-0-gpu-x7k2p")
    assert r.allocation()[GPU0] == (owner_a,)
    assert [o.pod for o in r.allocation()[GPU1]] == ["legacy-0"]
    owner_b = DeviceOwner(
        "team-b", "infer-3", "server", f"gpu.nvidia.com/{POOL}/gpu-1-mig-1g10gb-19-6", "team-b/infer-3-mig-q9z8w"
    )
    assert r.mig_allocation() == {MigPlacement(GPU1, 5, 0): (owner_b,)}
    (late,) = r.unmapped()
    assert late.owner.pod == "late-0" and late.reason.startswith("cdi_device_not_found") and late.gpus is None
    assert r.allocatable() == frozenset({GPU0, GPU1}), "the device plugins' inventory, unchanged"
    assert not any("compute-domain" in o.resource_name for os_ in r.allocation().values() for o in os_)
    # The driver prepares the late claim: it creates the MIG device (GPU instance 3 here) and
    # writes the claim's spec; the next refresh maps it.
    text = (dra_node / f"k8s.gpu.nvidia.com-claim_{CLAIM_MIG}.yaml").read_text()
    text = text.replace(CLAIM_MIG, CLAIM_LATE).replace("19-6", "19-5")
    text = text.replace("nvidia-cap183", "nvidia-cap165").replace("nvidia-cap184", "nvidia-cap166")  # gpu1/gi3
    (dra_node / f"k8s.gpu.nvidia.com-claim_{CLAIM_LATE}.yaml").write_text(text)
    assert r.unmapped() == ()
    assert [o.pod for o in r.mig_allocation()[MigPlacement(GPU1, 3, 0)]] == ["late-0"]
    # The pod ends: the driver removes the spec, the kubelet stops listing it.
    fake.pods[:] = [p for p in fake.pods if p.name != "late-0"]
    (dra_node / f"k8s.gpu.nvidia.com-claim_{CLAIM_LATE}.yaml").unlink()
    assert MigPlacement(GPU1, 3, 0) not in r.mig_allocation()
    r.close()


def test_kubelet_failure_forgets_dra_allocations_too(
    kubelet: tuple[FakeKubelet, Path],  # noqa: F811
    tmp_path: Path,
    dra_node: Path,
) -> None:
    fake, sock = kubelet
    fake.pods.extend(_listed().pod_resources)
    r = _resolver(sock, tmp_path, dra_node)
    assert r.mig_allocation() and r.unmapped()
    fake.fail = grpc.StatusCode.UNAVAILABLE
    assert r.status() == "unavailable"
    assert r.mig_allocation() == {} and r.unmapped() == ()
    r.close()


# ---------------------------------------------------------------------------
# Reconciliation


class DraAllocations:
    def __init__(
        self,
        alloc: dict[str, tuple[DeviceOwner, ...]] | None = None,
        migs: dict[MigPlacement, tuple[DeviceOwner, ...]] | None = None,
        unmapped: tuple[UnmappedDevice, ...] = (),
    ) -> None:
        self._alloc = alloc or {}
        self._migs = migs or {}
        self._unmapped = unmapped

    def status(self) -> str | None:
        return None

    def allocation(self) -> dict[str, tuple[DeviceOwner, ...]]:
        return self._alloc

    def allocatable(self) -> frozenset[str]:
        return frozenset()  # no device plugin on this node

    def mig_allocation(self) -> dict[MigPlacement, tuple[DeviceOwner, ...]]:
        return self._migs

    def unmapped(self) -> tuple[UnmappedDevice, ...]:
        return self._unmapped


DEVICES = (
    DeviceInfo(0, GPU0, "1650123456700", "NVIDIA H100 80GB HBM3", 80 * GIB, 700_000),
    DeviceInfo(1, GPU1, "1650123456701", "NVIDIA H100 80GB HBM3", 80 * GIB, 700_000, identity={"mig_mode": "enabled"}),
)
OWNER_A = DeviceOwner("team-a", "trainer-0", "main", f"gpu.nvidia.com/{POOL}/gpu-0", "team-a/trainer-0-gpu-x7k2p")
OWNER_B = DeviceOwner(
    "team-b", "infer-3", "server", f"gpu.nvidia.com/{POOL}/gpu-1-mig-1g10gb-19-6", "team-b/infer-3-mig-q9z8w"
)


def _proc(
    pid: int, workload: str, kind: str = "k8s_pod", gi: int | None = None, ci: int | None = None
) -> ProcessSample:
    return ProcessSample(
        pid=pid,
        mem_bytes=GIB,
        attribution=Attribution("t-1", kind, workload),
        gpu_instance_id=gi,
        compute_instance_id=ci,
    )


def _gpu0(*procs: ProcessSample) -> GpuSample:
    return GpuSample(0, 90.0, GIB, 1, 1, procs=procs)


def _gpu1(*procs: ProcessSample, layout: tuple[tuple[int, str], ...] = ((5, MIG15),)) -> GpuSample:
    instances = tuple(MigInstanceSample(gi, 0, uuid, 1, 10 * GIB, GIB) for gi, uuid in layout)
    return GpuSample(1, None, GIB, 1, 1, procs=procs, mig=MigSample(7, instances))


def _apply(allocs: DraAllocations, *gpus: GpuSample) -> NodeSample:
    return Reconciler(DEVICES, allocations=allocs).apply(NodeSample(t=T, gpus=gpus))


def test_claimed_gpu_is_checked_like_a_device_plugin_gpu() -> None:
    allocs = DraAllocations({GPU0: (OWNER_A,)})
    assert _apply(allocs, _gpu0(_proc(1, "team-a/trainer-0"))).gpus[0].events == (), "the claim's own pod"
    out = _apply(allocs, _gpu0(_proc(1, "team-a/trainer-0"), _proc(2, "team-x/miner-1")))
    assert out.gpus[0].events == (
        (FOREIGN_POD_USE, f"pod team-x/miner-1 uses GPU {GPU0} allocated to team-a/trainer-0"),
    )
    host = _apply(allocs, _gpu0(_proc(77, "pid:77", kind="process")))
    assert host.gpus[0].events == (
        (UNALLOCATED_USE, f"process pid:77, outside any pod, uses GPU {GPU0} allocated to team-a/trainer-0"),
    )
    assert out.unavailable == {}


def test_before_the_fix_a_claimed_gpu_looked_unallocated() -> None:
    # What the agent reported while it dropped dynamic_resources: the claim's own pod flagged.
    out = _apply(DraAllocations(), _gpu0(_proc(1, "team-a/trainer-0")))
    assert out.gpus[0].events == ((UNALLOCATED_USE, f"pod team-a/trainer-0 uses GPU {GPU0} allocated to no pod"),)


def test_claimed_mig_device_is_named_by_the_layouts_uuid() -> None:
    allocs = DraAllocations(migs={MigPlacement(GPU1, 5, 0): (OWNER_B,)})
    ok = _apply(allocs, _gpu1(_proc(1, "team-b/infer-3", gi=5, ci=0)))
    assert ok.gpus[0].events == () and MIG_ALLOCATION not in ok.gpus[0].unavailable
    bad = _apply(allocs, _gpu1(_proc(2, "team-x/miner-1", gi=5, ci=0)))
    assert bad.gpus[0].events == (
        (
            FOREIGN_POD_USE,
            f"pod team-x/miner-1 uses MIG device {MIG15} (GPU instance 5, compute instance 0 of GPU {GPU1})"
            " allocated to team-b/infer-3",
        ),
    )


def test_mig_device_created_on_demand_is_checked_once_nvml_lists_it() -> None:
    late = DeviceOwner("team-c", "late-0", "main", f"gpu.nvidia.com/{POOL}/gpu-1-mig-1g10gb-19-5", "team-c/late-0-mig")
    allocs = DraAllocations(migs={MigPlacement(GPU1, 5, 0): (OWNER_B,), MigPlacement(GPU1, 3, 0): (late,)})
    # The driver created GPU instance 3 after this sample's layout was read.
    before = _apply(allocs, _gpu1(_proc(1, "team-b/infer-3", gi=5, ci=0)))
    assert before.gpus[0].events == (), "the device whose UUID is known is still checked"
    assert before.gpus[0].unavailable[MIG_ALLOCATION] == (
        "dra_mig_device_unknown: GPU instance 3, compute instance 0 allocated to team-c/late-0 (not in the MIG layout)"
    )
    after = _apply(allocs, _gpu1(_proc(3, "team-c/late-0", gi=3, ci=0), layout=((5, MIG15), (3, MIG13))))
    assert after.gpus[0].events == () and MIG_ALLOCATION not in after.gpus[0].unavailable


def test_unmapped_device_on_an_unknown_gpu_suspends_every_check() -> None:
    u = UnmappedDevice(OWNER_A, "cdi_device_not_found: k8s.gpu.nvidia.com/claim=abc-gpu-0", None)
    out = _apply(DraAllocations(unmapped=(u,)), _gpu0(_proc(1, "team-a/trainer-0")))
    assert out.gpus[0].events == (), "an allocation that is not known must not produce mismatch events"
    assert out.unavailable[DRA_ALLOCATION] == (
        "cdi_device_not_found: k8s.gpu.nvidia.com/claim=abc-gpu-0"
        f" (gpu.nvidia.com/{POOL}/gpu-0 of pod team-a/trainer-0, claim team-a/trainer-0-gpu-x7k2p)"
    )


def test_unmapped_device_on_a_known_gpu_suspends_only_that_gpu() -> None:
    u = UnmappedDevice(OWNER_B, f"mig_capability_unknown: nvidia-cap99999 on {GPU1}", frozenset({GPU1}))
    out = _apply(
        DraAllocations(unmapped=(u,)),
        _gpu0(_proc(1, "team-x/miner-1")),
        _gpu1(_proc(2, "team-b/infer-3", gi=5, ci=0)),
    )
    assert [k for k, _ in out.gpus[0].events] == [UNALLOCATED_USE], "GPU 0's allocation is known: checked"
    assert out.gpus[1].events == (), "GPU 1 may hold the unmapped device: not checked"
    assert out.unavailable[DRA_ALLOCATION].startswith("mig_capability_unknown")


def test_vfio_device_suspends_nothing() -> None:
    u = UnmappedDevice(OWNER_A, "not_an_nvml_gpu: a VFIO passthrough device", frozenset())
    out = _apply(DraAllocations(unmapped=(u,)), _gpu0(_proc(1, "team-x/miner-1")))
    assert [k for k, _ in out.gpus[0].events] == [UNALLOCATED_USE]
    assert out.unavailable[DRA_ALLOCATION].startswith("not_an_nvml_gpu")


def test_dra_blind_spot_reaches_the_window() -> None:
    u = UnmappedDevice(OWNER_A, "cdi_device_not_found: k8s.gpu.nvidia.com/claim=abc-gpu-0", None)
    rec = Reconciler(DEVICES[:1], allocations=DraAllocations(unmapped=(u,)))
    agg = WindowAggregator("n1", "boot", "test", DEVICES[:1], window_s=60, bucket_s=10)
    for k in range(3):
        agg.add(rec.apply(NodeSample(t=T + k, gpus=(_gpu0(_proc(1, "team-a/trainer-0")),))))
    w = agg.flush()
    assert w is not None
    assert w.unavailable[DRA_ALLOCATION].startswith("cdi_device_not_found"), w.unavailable
    assert w.gpus[0].events == ()


def test_end_to_end_from_the_kubelet_listing(
    kubelet: tuple[FakeKubelet, Path],  # noqa: F811
    tmp_path: Path,
    dra_node: Path,
) -> None:
    fake, sock = kubelet
    fake.pods.extend(_listed().pod_resources)
    fake.devices = []  # no device plugin: every GPU is handed out through DRA
    r = _resolver(sock, tmp_path, dra_node)
    rec = Reconciler(DEVICES, allocations=r)
    sample = NodeSample(
        t=T,
        gpus=(_gpu0(_proc(1, "team-a/trainer-0")), _gpu1(_proc(2, "team-x/miner-1", gi=5, ci=0))),
    )
    out = rec.apply(sample)
    # late-0's spec is not written yet and it could be on any GPU: nothing is judged.
    assert out.unavailable[DRA_ALLOCATION].startswith("cdi_device_not_found: k8s.gpu.nvidia.com/claim=" + CLAIM_LATE)
    assert [g.events for g in out.gpus] == [(), ()]
    fake.pods[:] = [p for p in fake.pods if p.name != "late-0"]
    out = rec.apply(sample)
    assert DRA_ALLOCATION not in out.unavailable
    assert out.gpus[0].events == ()
    assert [k for k, _ in out.gpus[1].events] == [FOREIGN_POD_USE], out.gpus[1].events
    r.close()
