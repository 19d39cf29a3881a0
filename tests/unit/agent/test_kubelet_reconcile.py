"""Kubelet pod-resources (a real gRPC server on a unix socket serving a fake kubelet), the
reconciliation of allocation with observed GPU use, and the agent's blind spots."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from agent.attribution import Attributor
from agent.node import attribute
from agent.reconcile import FOREIGN_POD_USE, UNALLOCATED_USE, Reconciler
from agent.sources import procfs
from agent.sources.kubelet import DeviceOwner, MigPlacement, PodResourcesResolver, UnmappedDevice, device_key
from agent.sources.podresources import api_pb2, api_pb2_grpc
from attestation.statement import parse_statement, statement_bytes
from core.samples import Attribution, DeviceInfo, GpuSample, NodeSample, ProcessSample
from core.tenantrules import TenantRules
from core.window import WindowAggregator

PROC = Path(__file__).resolve().parents[2] / "fixtures" / "proc"
GPU0 = "GPU-5fd2a8c0-0000-4000-8000-000000000000"
GPU1 = "GPU-5fd2a8c0-0000-4000-8000-000000000001"
POD = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d"  # tests/fixtures/proc/4242 runs in this pod
T = 1_700_000_040.0


class FakeKubelet(api_pb2_grpc.PodResourcesListerServicer):
    """Answers like a kubelet with the NVIDIA device plugin (time-slicing replicas on GPU 1)."""

    def __init__(self) -> None:
        self.pods: list[api_pb2.PodResources] = []
        self.devices = [api_pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=[GPU0, GPU1])]
        self.fail: grpc.StatusCode | None = None
        self.calls = 0

    def allocate(
        self, namespace: str, pod: str, container: str, *device_ids: str, resource: str = "nvidia.com/gpu"
    ) -> None:
        devs = [api_pb2.ContainerDevices(resource_name=resource, device_ids=list(device_ids))]
        cpu = api_pb2.ContainerDevices(resource_name="example.com/nic", device_ids=["nic0"])
        self.pods.append(
            api_pb2.PodResources(
                name=pod,
                namespace=namespace,
                containers=[api_pb2.ContainerResources(name=container, devices=[*devs, cpu], cpu_ids=[2, 3])],
            )
        )

    def List(  # noqa: N802 - the kubelet's method name
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        self.calls += 1
        if self.fail is not None:
            context.abort(self.fail, "kubelet says no")
        return api_pb2.ListPodResourcesResponse(pod_resources=self.pods)

    def GetAllocatableResources(  # noqa: N802
        self, request: api_pb2.AllocatableResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocatableResourcesResponse:
        return api_pb2.AllocatableResourcesResponse(devices=self.devices, cpu_ids=[0, 1, 2, 3])


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ga-", dir="/tmp"))  # unix socket paths are limited to ~107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def kubelet(short_dir: Path) -> Iterator[tuple[FakeKubelet, Path]]:
    fake = FakeKubelet()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(fake, server)
    sock = short_dir / "kubelet.sock"
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    yield fake, sock
    server.stop(grace=None)


def _pod_logs(root: Path, *names: str) -> Path:
    for n in names:
        (root / n / "main").mkdir(parents=True)
    return root


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------
# The client and resolver


def test_resolver_maps_uid_and_devices(kubelet: tuple[FakeKubelet, Path], tmp_path: Path) -> None:
    fake, sock = kubelet
    fake.allocate("team-a", "trainer-0", "main", GPU0)
    fake.allocate("team-b", "infer-7", "server", f"{GPU1}::0")
    fake.allocate("team-c", "infer-8", "server", f"{GPU1}::1")
    logs = _pod_logs(tmp_path / "pods", f"team-a_trainer-0_{POD}", "kube-system_coredns-5d78c9869d-abcde_0a1b")
    r = PodResourcesResolver(sock, logs)
    assert r.status() is None
    assert r.pod(POD) == ("team-a", "trainer-0")
    assert r.pod("no-such-uid") is None
    alloc = r.allocation()
    assert alloc[GPU0] == (DeviceOwner("team-a", "trainer-0", "main", "nvidia.com/gpu"),)
    assert [o.pod for o in alloc[GPU1]] == ["infer-7", "infer-8"], "time-slicing replicas fold into their GPU"
    assert "nic0" not in alloc, "only nvidia.com/ resources are GPUs"
    assert r.allocatable() == frozenset({GPU0, GPU1})
    r.close()


def test_resolver_refreshes_at_most_every_refresh_s(kubelet: tuple[FakeKubelet, Path], tmp_path: Path) -> None:
    fake, sock = kubelet
    clock = Clock()
    r = PodResourcesResolver(sock, tmp_path, refresh_s=10.0, clock=clock)
    for _ in range(5):
        r.allocation()
    assert fake.calls == 1
    clock.now += 10.0
    r.allocation()
    assert fake.calls == 2


def test_socket_missing_is_a_status_not_an_exception(tmp_path: Path) -> None:
    r = PodResourcesResolver(tmp_path / "kubelet.sock", tmp_path)
    assert r.status() == "socket_missing"
    assert r.allocation() == {}


def test_kubelet_error_is_recorded(kubelet: tuple[FakeKubelet, Path], tmp_path: Path) -> None:
    fake, sock = kubelet
    fake.fail = grpc.StatusCode.PERMISSION_DENIED
    r = PodResourcesResolver(sock, tmp_path)
    assert r.status() == "permission_denied"


@pytest.mark.parametrize(
    ("device_id", "key"),
    [
        (GPU0, GPU0),
        (f"{GPU0}::3", GPU0),
        ("MIG-1f2e3d4c-0000-5000-8000-000000000000", "MIG-1f2e3d4c-0000-5000-8000-000000000000"),
        ("MIG-1f2e3d4c-0000-5000-8000-000000000000::2", "MIG-1f2e3d4c-0000-5000-8000-000000000000"),
        (f"MIG-{GPU0}/1/0", f"MIG-{GPU0}/1/0"),  # the MIG UUID format of drivers before R470
        ("0", "0"),
    ],
)
def test_device_key(device_id: str, key: str) -> None:
    assert device_key(device_id) == key


# ---------------------------------------------------------------------------
# Reconciliation


class StaticAllocations:
    def __init__(self, alloc: dict[str, tuple[DeviceOwner, ...]], status: str | None = None) -> None:
        self._alloc = alloc
        self._status = status

    def status(self) -> str | None:
        return self._status

    def allocation(self) -> dict[str, tuple[DeviceOwner, ...]]:
        return self._alloc

    def allocatable(self) -> frozenset[str]:
        return frozenset({GPU0, GPU1})

    def mig_allocation(self) -> dict[MigPlacement, tuple[DeviceOwner, ...]]:
        return {}

    def unmapped(self) -> tuple[UnmappedDevice, ...]:
        return ()


DEVICES = (
    DeviceInfo(0, GPU0, "1650123456700", "NVIDIA H100 80GB HBM3", 80 * 2**30, 700_000),
    DeviceInfo(1, GPU1, "1650123456701", "NVIDIA H100 80GB HBM3", 80 * 2**30, 700_000),
)
OWNER_A = DeviceOwner("team-a", "trainer-0", "main", "nvidia.com/gpu")


def _proc(pid: int, kind: str, workload: str, tenant: str = "t-1") -> ProcessSample:
    return ProcessSample(pid=pid, mem_bytes=2**30, attribution=Attribution(tenant, kind, workload))


RECONCILE_CASES = [
    ("the allocated pod uses its GPU", {GPU0: (OWNER_A,)}, [_proc(1, "k8s_pod", "team-a/trainer-0")], ()),
    (
        "another pod uses an allocated GPU",
        {GPU0: (OWNER_A,)},
        [_proc(1, "k8s_pod", "team-b/miner-1")],
        ((FOREIGN_POD_USE, f"pod team-b/miner-1 uses GPU {GPU0} allocated to team-a/trainer-0"),),
    ),
    (
        "a pod uses a GPU allocated to no pod",
        {},
        [_proc(1, "k8s_pod", "team-b/miner-1")],
        ((UNALLOCATED_USE, f"pod team-b/miner-1 uses GPU {GPU0} allocated to no pod"),),
    ),
    (
        "a host process uses an allocated GPU",
        {GPU0: (OWNER_A,)},
        [_proc(1, "k8s_pod", "team-a/trainer-0"), _proc(77, "process", "pid:77", "unattributed")],
        ((UNALLOCATED_USE, f"process pid:77, outside any pod, uses GPU {GPU0} allocated to team-a/trainer-0"),),
    ),
    ("a lease holder is not reconciled", {}, [_proc(1, "lease", "lease:t-9")], ()),
    (
        "a suspect PID is not reconciled",
        {},
        [
            ProcessSample(
                pid=324,
                mem_bytes=1,
                suspect="pid_not_in_host_proc",
                attribution=Attribution("unattributed", "process", "pid:324"),
            )
        ],
        (),
    ),
]


@pytest.mark.parametrize(("name", "alloc", "procs", "events"), RECONCILE_CASES, ids=[c[0] for c in RECONCILE_CASES])
def test_reconcile(
    name: str,
    alloc: dict[str, tuple[DeviceOwner, ...]],
    procs: list[ProcessSample],
    events: tuple[tuple[str, str], ...],
) -> None:
    rec = Reconciler(DEVICES, allocations=StaticAllocations(alloc))
    g = GpuSample(index=0, util_pct=90.0, mem_used_bytes=1, power_mw=1, energy_mj=1, procs=tuple(procs))
    out = rec.apply(NodeSample(t=T, gpus=(g,)))
    assert out.gpus[0].events == events, name
    assert out.unavailable == {}


def test_pod_resources_blind_spot_and_no_reconciliation_without_allocation() -> None:
    rec = Reconciler(DEVICES, allocations=StaticAllocations({}, status="socket_missing"))
    g = GpuSample(0, 90.0, 1, 1, 1, procs=(_proc(1, "k8s_pod", "team-b/miner-1"),))
    out = rec.apply(NodeSample(t=T, gpus=(g,)))
    assert out.unavailable == {"pod_resources": "socket_missing"}
    assert out.gpus[0].events == (), "an unknown allocation must not produce mismatch events"


# ---------------------------------------------------------------------------
# Host PID namespace


def _ns_root(tmp_path: Path, target: str | None) -> Path:
    root = tmp_path / "proc"
    (root / "1" / "ns").mkdir(parents=True)
    if target is not None:
        os.symlink(target, root / "1" / "ns" / "pid")
    return root


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("pid:[4026531836]", None),  # the host: PROC_PID_INIT_INO
        ("pid:[4026532412]", "not_host"),  # a container without hostPID
        ("garbage", "unknown"),
        (None, "unknown"),
    ],
)
def test_host_pid_namespace(tmp_path: Path, target: str | None, expected: str | None) -> None:
    reason = procfs.host_pid_namespace_reason(_ns_root(tmp_path, target))
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(expected), reason


def test_host_pid_namespace_blind_spot_is_checked_once_a_minute(tmp_path: Path) -> None:
    clock = Clock()
    root = _ns_root(tmp_path, "pid:[4026532412]")
    rec = Reconciler(DEVICES, proc_root=root, clock=clock)
    out = rec.apply(NodeSample(t=T, gpus=()))
    assert out.unavailable["host_pid_namespace"].startswith("not_host")
    os.unlink(root / "1" / "ns" / "pid")
    os.symlink("pid:[4026531836]", root / "1" / "ns" / "pid")
    assert "host_pid_namespace" in rec.apply(NodeSample(t=T, gpus=())).unavailable, "cached until the recheck"
    clock.now += 60
    assert rec.apply(NodeSample(t=T, gpus=())).unavailable == {}


# ---------------------------------------------------------------------------
# End to end: fixture /proc, attribution, reconciliation, window, statement


def test_statement_carries_blind_spots_events_identity_and_health(
    kubelet: tuple[FakeKubelet, Path], tmp_path: Path
) -> None:
    fake, sock = kubelet
    fake.allocate("team-b", "other-0", "main", GPU0)
    logs = _pod_logs(tmp_path / "pods", f"team-a_trainer-0_{POD}")
    resolver = PodResourcesResolver(sock, logs)
    rules = TenantRules(namespaces={"team-a": "t-17"})
    attributor = Attributor(PROC, rules, pod_resolver=resolver)
    devices = (
        DeviceInfo(
            0,
            GPU0,
            "1650123456700",
            "NVIDIA H100 80GB HBM3",
            80 * 2**30,
            700_000,
            identity={"pci_bus_id": "00000000:18:00.0", "driver_version": "550.54.15"},
            mem_reserved_bytes=527 * 2**20,
        ),
    )
    rec = Reconciler(devices, proc_root=_ns_root(tmp_path, "pid:[4026532412]"), allocations=resolver)
    agg = WindowAggregator("n1", "boot", "test", devices, window_s=60, bucket_s=10)
    for k in range(3):
        g = GpuSample(
            0,
            90.0,
            2**30,
            600_000,
            1000 + k,
            procs=(ProcessSample(4242, 2**30, start_time_ticks=123456),),
            health={"temp_gpu_c": 50 + k, "throttle_reasons_mask": 1 << k},
            events=(("xid", "Xid 13"),) if k else (),
            unavailable={"health.retired_pages_sbe": "NVML_ERROR_NOT_SUPPORTED"},
        )
        s = NodeSample(t=1_700_000_040.0 + k, gpus=(g,), unavailable={"accounting_mode": "disabled on GPU 0"})
        assert agg.add(rec.apply(attribute(s, attributor, rules))) == []
    w = agg.flush()
    assert w is not None
    assert w.unavailable["accounting_mode"] == "disabled on GPU 0"
    assert w.unavailable["host_pid_namespace"].startswith("not_host")
    gw = w.gpus[0]
    assert [wl.workload for wl in gw.workloads] == ["team-a/trainer-0"]
    assert [(e.kind, e.detail) for e in gw.events] == [
        (FOREIGN_POD_USE, f"pod team-a/trainer-0 uses GPU {GPU0} allocated to team-b/other-0"),
        ("xid", "Xid 13"),
    ], "each event once per window"
    assert gw.health == {"temp_gpu_c": 52, "throttle_reasons_mask": 0b111}, "max, and OR for masks"
    assert gw.unavailable["health.retired_pages_sbe"] == "NVML_ERROR_NOT_SUPPORTED"
    assert gw.identity["driver_version"] == "550.54.15" and gw.mem_reserved_bytes == 527 * 2**20
    back = parse_statement(statement_bytes(w))
    assert back.gpus[0].health == gw.health and back.gpus[0].identity == gw.identity
    assert back.gpus[0].mem_reserved_bytes == gw.mem_reserved_bytes and back.gpus[0].events == gw.events
    resolver.close()


# ---------------------------------------------------------------------------
# The live agent's wiring (agent/node.py): one kubelet client for attribution and checks


def test_live_agent_attribution_uses_the_kubelet_for_pod_namespaces(
    kubelet: tuple[FakeKubelet, Path], tmp_path: Path
) -> None:
    from agent.node import make_attributor, make_pod_resolver, make_reconciler
    from core.agentconfig import AgentConfig

    fake, sock = kubelet
    fake.allocate("team-a", "trainer-0", "main", GPU0)
    logs = _pod_logs(tmp_path / "pods", f"team-a_trainer-0_{POD}")
    cfg = AgentConfig(
        node_id="n1",
        source="nvml",
        proc_root=PROC,
        kubelet_socket=sock,
        pod_logs_root=logs,
        tenant_rules=TenantRules(namespaces={"team-a": "t-17"}),
    )
    pods = make_pod_resolver(cfg)
    assert pods is not None
    a = make_attributor(cfg, pods).resolve(4242, T, 123456)
    # Without the kubelet the namespace is unknown and the namespace rule cannot apply.
    assert (a.tenant, a.workload) == ("t-17", "team-a/trainer-0"), a
    unresolved = make_attributor(cfg, None).resolve(4242, T, 123456)
    assert unresolved.tenant != "t-17"
    devices = (DeviceInfo(0, GPU0, "1650123456700", "NVIDIA H100 80GB HBM3", 80 * 2**30, 700_000),)
    rec = make_reconciler(cfg, devices, pods)
    g = GpuSample(0, 90.0, 2**30, 600_000, 1000, procs=(ProcessSample(4242, 2**30, start_time_ticks=123456),))
    sample = attribute(NodeSample(t=T, gpus=(g,)), make_attributor(cfg, pods), cfg.tenant_rules)
    assert rec.apply(sample).gpus[0].events == (), "the pod's own allocation matches its process"
    # The same process seen on a GPU allocated to another pod is flagged.
    fake.pods.clear()
    fake.allocate("team-b", "other-0", "main", GPU0)
    later = PodResourcesResolver(sock, logs, refresh_s=0.0)
    flagged = make_reconciler(cfg, devices, later).apply(sample).gpus[0].events
    assert [kind for kind, _ in flagged] == [FOREIGN_POD_USE], flagged
    later.close()
    pods.close()
    assert make_pod_resolver(dataclasses.replace(cfg, source="sim")) is None
