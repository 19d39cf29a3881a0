"""The kubelet pod-resources API (v1): which pod and container each GPU is allocated to.

The kubelet serves ``PodResourcesLister`` on the unix socket
``/var/lib/kubelet/pod-resources/kubelet.sock`` (a parameter here). ``List`` gives every pod's
containers with their allocated devices; ``GetAllocatableResources`` gives every device the
device plugins registered with the kubelet, allocated or not.

The NVIDIA device plugin registers each device under its UUID as NVML reports it, with
``<uuid>::<n>`` replicas under time-slicing or MPS sharing (``DEVICE_ID_STRATEGY=index``
changes only what the container is told, not these ids; indices are still accepted here for
other plugins). With MIG mode on, its MIG strategy decides what is handed out:

- ``none``: the MIG-enabled GPU itself, ``nvidia.com/gpu``, its GPU UUID;
- ``single``: each MIG device as ``nvidia.com/gpu``, its MIG UUID (``MIG-<uuid>``, or
  ``MIG-GPU-<uuid>/<gi>/<ci>`` on drivers before R470);
- ``mixed``: each MIG device as ``nvidia.com/mig-<profile>`` (``nvidia.com/mig-1g.10gb``,
  ``nvidia.com/mig-3g.40gb``, ...), its MIG UUID; GPUs without MIG stay ``nvidia.com/gpu``.

Both calls then list MIG UUIDs for MIG GPUs. Every resource under ``resource_prefix``
(``nvidia.com/``: ``gpu``, ``gpu.shared``, ``mig-*``) is read; the reconciler
(agent/reconcile.py) matches MIG UUIDs to the MIG devices NVML enumerates.

The v1 API names pods by namespace and name, not UID, while cgroup paths carry the UID. The
kubelet writes each pod's container logs under ``/var/log/pods/<namespace>_<name>_<uid>``
(names and namespaces are DNS labels, so ``_`` cannot occur in them): that directory name is
how :class:`PodResourcesResolver` maps a UID to (namespace, name).

DRA (dynamic resource allocation): a pod that holds GPUs through a ResourceClaim has no
``devices`` entry; ``List`` reports the claim in ``ContainerResources.dynamic_resources``
instead: claim name and namespace, and per allocated device the driver, pool and device names
(``gpu.nvidia.com``, the node's pool, ``gpu-0`` or ``gpu-0-mig-1g10gb-19-0``) and the CDI
devices the container was given (``k8s.gpu.nvidia.com/claim=<claim uid>-gpu-0``). Only
devices of the drivers in ``dra_drivers`` (NVIDIA's GPU driver, ``gpu.nvidia.com``) are read.
:class:`DraDeviceMap` maps each such device to a GPU UUID or a MIG device; how, and why that
way, is in its docstring. A device that cannot be mapped is never guessed and never dropped:
:meth:`PodResourcesResolver.unmapped` lists it with the reason, and the reconciler suspends the
checks it could change.

Failures are recorded, never raised into the sampling path: :meth:`PodResourcesResolver.status`
says why the allocation is not known (``socket_missing``, ``unavailable``, ...).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from agent.errors import AgentError
from agent.sources.podresources import api_pb2, api_pb2_grpc

_logger = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
DEFAULT_POD_LOGS = Path("/var/log/pods")
GPU_RESOURCE_PREFIX = "nvidia.com/"
# NVIDIA's DRA driver for GPUs (kubernetes-sigs/dra-driver-nvidia-gpu, formerly
# NVIDIA/k8s-dra-driver-gpu). Its ComputeDomain driver (compute-domain.nvidia.com) hands out
# IMEX channels, not GPUs, and is not read.
NVIDIA_DRA_DRIVER = "gpu.nvidia.com"
# The CDI spec directories (CDI specification: /etc/cdi, then /var/run/cdi, which wins); the
# NVIDIA DRA driver writes its per-claim specs to /var/run/cdi.
DEFAULT_CDI_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))
_MAX_POD_DIRS = 10_000
_MAX_CDI_SPECS = 4096
_MAX_CDI_SPEC_BYTES = 4 * 2**20


@dataclass(frozen=True)
class DeviceOwner:
    """A container that a device is allocated to."""

    namespace: str
    pod: str
    container: str
    # Device plugins: the extended resource (nvidia.com/gpu, nvidia.com/mig-1g.10gb,
    # nvidia.com/gpu.shared). DRA: the device, <driver>/<pool>/<device>.
    resource_name: str
    claim: str | None = None  # DRA: the ResourceClaim, <namespace>/<name>


@dataclass(frozen=True)
class MigPlacement:
    """A MIG device named by where it is: its GPU, GPU instance and compute instance.

    What a DRA allocation of a MIG device resolves to on the node: the device nodes the
    container was given name the instance, not its UUID (which only NVML reports, and which
    a MIG device created on demand gets only when it is created). The reconciler looks the
    UUID up in the sample's MIG layout.
    """

    parent_uuid: str
    gpu_instance_id: int
    compute_instance_id: int


@dataclass(frozen=True)
class UnmappedDevice:
    """A DRA device allocated to ``owner`` whose GPU could not be told, and why.

    ``gpus``: the GPUs whose allocation checks it could change (and which are therefore not
    checked while it is unmapped); None when it could be any GPU of the node, empty when it
    is none that NVML sees (a GPU handed to a VM through VFIO).
    """

    owner: DeviceOwner
    reason: str
    gpus: frozenset[str] | None


class UnmappedError(AgentError):
    """Raised by :meth:`DraDeviceMap.resolve`: the reason, and the GPUs it may concern."""

    def __init__(self, reason: str, gpus: frozenset[str] | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.gpus = gpus


_GPU_NODE = re.compile(r"nvidia(\d+)")
_CAP_NODE = re.compile(r"nvidia-cap(\d+)")
_MIG_CAP = re.compile(r"gpu(\d+)/gi(\d+)(?:/ci(\d+))?/access")


class DraDeviceMap:
    """CDI device names -> the GPU or MIG device they give a container, read on the node.

    Why the node's CDI specs, and not the driver's ResourceSlices from the API server: the
    NVIDIA driver's ResourceSlice names a device's ``uuid`` for whole GPUs and for MIG devices
    that exist when it is published, but a MIG device the driver creates on demand for a claim
    (dynamic MIG, KEP 4815 partitionable devices) is published before it exists, with
    ``parentUUID`` and ``profile`` and no ``uuid``; only the node learns which GPU and compute
    instance it became. The CDI spec the driver writes for the claim when it prepares it
    (``/var/run/cdi/k8s.gpu.nvidia.com-claim_<claim uid>.yaml``) is written after the device is
    created, for every kind of device, and lists what the container really gets: the device
    nodes. Reading it needs a read-only mount and no API token, RBAC or network path to the
    API server, which the agent does not otherwise have. The kubelet names the CDI devices of
    each allocated device (``ClaimResource.cdi_devices``), so no driver naming convention is
    relied on.

    From the device nodes (``hostPath``, else ``path``):

    - ``/dev/nvidia<minor>``: the GPU, by the NVIDIA kernel driver's own table
      ``<proc>/driver/nvidia/gpus/<pci>/information`` (``Device Minor`` -> ``GPU UUID``);
    - ``/dev/nvidia-caps/nvidia-cap<m>``: a MIG GPU or compute instance, by the driver's
      ``<proc>/driver/nvidia-caps/mig-minors`` (``gpu<minor>/gi<g>/ci<c>/access <m>``), which is
      also how the NVIDIA container toolkit names these nodes. A device with a compute
      instance capability is that MIG device (:class:`MigPlacement`); one with none is the
      whole GPU.

    Anything else is not guessed: :meth:`resolve` raises with the reason (no such CDI device,
    a spec that cannot be read, a GPU minor or capability the driver does not list, several
    GPUs or MIG devices in one device, no GPU device node). Specs are re-parsed only when
    their file changes.
    """

    def __init__(
        self,
        cdi_dirs: Sequence[str | os.PathLike[str]] = DEFAULT_CDI_DIRS,
        proc_root: str | os.PathLike[str] = "/proc",
    ) -> None:
        self._dirs = tuple(Path(d) for d in cdi_dirs)
        self._proc = Path(proc_root)
        self._specs: dict[Path, tuple[tuple[int, int], dict[str, tuple[str, ...]] | str]] = {}
        self._nodes: dict[str, tuple[str, ...]] = {}
        self._conflicts: set[str] = set()
        self._spec_errors: dict[str, str] = {}
        self._uuid_by_minor: dict[int, str] = {}
        self._gpus_reason = ""
        self._caps: dict[int, tuple[int, int, int | None]] = {}
        self._management_caps: frozenset[int] = frozenset()
        self._caps_reason = ""

    def load(self) -> None:
        """Re-reads the CDI spec directories (changed files only) and the driver's tables."""
        nodes: dict[str, tuple[str, ...]] = {}
        conflicts: set[str] = set()
        errors: dict[str, str] = {}
        seen: set[Path] = set()
        count = 0
        for d in self._dirs:
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except FileNotFoundError:
                continue
            except OSError as e:
                errors[str(d)] = e.strerror or str(e)
                continue
            here: dict[str, tuple[str, ...]] = {}
            for entry in entries:
                if not entry.name.endswith((".json", ".yaml")) or not entry.is_file():
                    continue
                count += 1
                if count > _MAX_CDI_SPECS:
                    errors[str(d)] = f"more than {_MAX_CDI_SPECS} specs; the rest not read"
                    break
                path = Path(entry.path)
                seen.add(path)
                parsed = self._spec(path, entry)
                if isinstance(parsed, str):
                    errors[entry.name] = parsed
                    continue
                for name, paths in parsed.items():
                    if name in here:
                        conflicts.add(name)  # two specs of one directory define it: CDI refuses it too
                    here[name] = paths
            nodes.update(here)  # a later directory overrides an earlier one, as in CDI
        for stale in set(self._specs) - seen:
            del self._specs[stale]
        self._nodes, self._conflicts, self._spec_errors = nodes, conflicts, errors
        self._load_gpus()
        self._load_caps()

    def resolve(self, cdi_names: Sequence[str]) -> str | MigPlacement:
        """The GPU UUID or MIG device the CDI devices ``cdi_names`` give; raises
        :class:`UnmappedError` with the reason otherwise."""
        if not cdi_names:
            raise UnmappedError("no_cdi_devices: the kubelet lists no CDI device for it", None)
        paths: list[str] = []
        for name in cdi_names:
            if name in self._conflicts:
                raise UnmappedError(f"cdi_device_conflict: {name} is defined by more than one spec", None)
            found = self._nodes.get(name)
            if found is None:
                why = f"cdi_device_not_found: {name}"
                if self._spec_errors:
                    k, v = next(iter(sorted(self._spec_errors.items())))
                    why += f" ({len(self._spec_errors)} spec(s) unreadable, {k}: {v})"
                raise UnmappedError(why, None)
            paths.extend(found)
        minors: set[int] = set()
        caps: set[int] = set()
        vfio = False
        for path in paths:
            base = path.rstrip("/").rsplit("/", 1)[-1]
            if m := _GPU_NODE.fullmatch(base):
                minors.add(int(m.group(1)))
            elif m := _CAP_NODE.fullmatch(base):
                caps.add(int(m.group(1)))
            elif path.startswith("/dev/vfio/"):
                vfio = True
        if not minors:
            if vfio:
                raise UnmappedError("not_an_nvml_gpu: a VFIO passthrough device", frozenset())
            raise UnmappedError(f"no_gpu_device_node: {', '.join(cdi_names)}", None)
        uuids = {m: self._uuid_by_minor.get(m) for m in sorted(minors)}
        unknown = [m for m, u in uuids.items() if u is None]
        if unknown:
            why = f"gpu_minor_unknown: /dev/nvidia{unknown[0]}"
            raise UnmappedError(why + (f" ({self._gpus_reason})" if self._gpus_reason else ""), None)
        known = frozenset(u for u in uuids.values() if u is not None)
        if len(minors) > 1:
            raise UnmappedError(f"several_gpus: {', '.join(sorted(known))}", known)
        minor = next(iter(minors))
        uuid = uuids[minor]
        assert uuid is not None
        instances: set[tuple[int, int]] = set()
        gis: set[int] = set()
        for cap in sorted(caps):
            where = self._caps.get(cap)
            if where is None:
                if cap in self._management_caps:
                    continue  # the right to reconfigure or observe MIG, not a MIG device
                why = f"mig_capability_unknown: nvidia-cap{cap} on {uuid}"
                raise UnmappedError(why + (f" ({self._caps_reason})" if self._caps_reason else ""), known)
            gpu, gi, ci = where
            if gpu != minor:
                raise UnmappedError(f"mig_capability_of_another_gpu: nvidia-cap{cap} is of GPU minor {gpu}", None)
            gis.add(gi)
            if ci is not None:
                instances.add((gi, ci))
        if not gis:
            return uuid
        if len(instances) != 1 or len(gis) != 1:
            what = "no compute instance" if not instances else f"{len(instances)} compute instances"
            raise UnmappedError(f"mig_device_unknown: {what} in GPU instance(s) {sorted(gis)} of {uuid}", known)
        gi, ci = next(iter(instances))
        return MigPlacement(uuid, gi, ci)

    def _spec(self, path: Path, entry: os.DirEntry[str]) -> dict[str, tuple[str, ...]] | str:
        try:
            st = entry.stat()
        except OSError as e:
            return e.strerror or str(e)
        key = (st.st_mtime_ns, st.st_size)
        cached = self._specs.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        parsed: dict[str, tuple[str, ...]] | str
        if st.st_size > _MAX_CDI_SPEC_BYTES:
            parsed = f"larger than {_MAX_CDI_SPEC_BYTES} bytes"
        else:
            try:
                parsed = _cdi_device_nodes(_load_spec(path))
            except (OSError, ValueError) as e:
                parsed = f"unreadable: {e}"
        self._specs[path] = (key, parsed)
        return parsed

    def _load_gpus(self) -> None:
        out: dict[int, str] = {}
        reason = ""
        root = self._proc / "driver" / "nvidia" / "gpus"
        try:
            buses = sorted(os.listdir(root))
        except OSError as e:
            buses, reason = [], f"{root}: {e.strerror or e}"
        for bus in buses:
            try:
                fields = _colon_fields((root / bus / "information").read_text())
                out[int(fields["Device Minor"])] = fields["GPU UUID"]
            except (OSError, KeyError, ValueError) as e:
                reason = f"{root / bus / 'information'}: {e}"
        self._uuid_by_minor, self._gpus_reason = out, reason

    def _load_caps(self) -> None:
        out: dict[int, tuple[int, int, int | None]] = {}
        management: set[int] = set()
        reason = ""
        path = self._proc / "driver" / "nvidia-caps" / "mig-minors"
        try:
            text = path.read_text()
        except OSError as e:
            text, reason = "", f"{path}: {e.strerror or e}"
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                continue
            if parts[0] in ("config", "monitor"):
                management.add(int(parts[1]))
            elif m := _MIG_CAP.fullmatch(parts[0]):
                ci = m.group(3)
                out[int(parts[1])] = (int(m.group(1)), int(m.group(2)), None if ci is None else int(ci))
        self._caps, self._management_caps, self._caps_reason = out, frozenset(management), reason


def _colon_fields(text: str) -> dict[str, str]:
    """``Key:\t value`` lines (the NVIDIA driver's /proc files) as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def _load_spec(path: Path) -> Any:
    """A CDI spec, JSON or YAML (the NVIDIA DRA driver writes YAML)."""
    text = path.read_text()
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(str(e)) from e
    try:
        import yaml
    except ImportError as e:
        raise ValueError("YAML spec and PyYAML is not installed") from e
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        raise ValueError(str(e).replace("\n", " ")) from e


def _cdi_device_nodes(spec: Any) -> dict[str, tuple[str, ...]]:
    """``<kind>=<device name>`` -> the device node paths of each device of a CDI spec
    (``hostPath`` where given, the host's name for the node, else ``path``)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str) or "=" in spec["kind"]:
        raise ValueError("not a CDI spec (no kind)")
    devices = spec.get("devices") or []
    if not isinstance(devices, list):
        raise ValueError("devices is not a list")
    out: dict[str, tuple[str, ...]] = {}
    for d in devices:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ValueError("a device without a name")
        edits = d.get("containerEdits") or {}
        nodes = (edits.get("deviceNodes") or []) if isinstance(edits, dict) else []
        paths: list[str] = []
        for n in nodes if isinstance(nodes, list) else []:
            if isinstance(n, dict):
                p = n.get("hostPath") or n.get("path")
                if isinstance(p, str) and p:
                    paths.append(p)
        out[f"{spec['kind']}={d['name']}"] = tuple(paths)
    return out


def device_key(device_id: str) -> str:
    """The GPU a device-plugin id names: ``GPU-x::3`` (a time-slicing replica) -> ``GPU-x``."""
    return device_id.split("::", 1)[0]


class PodResourcesClient:
    """A thin synchronous client; each call has a deadline of ``timeout_s`` seconds."""

    def __init__(self, socket_path: str | os.PathLike[str] = DEFAULT_SOCKET, timeout_s: float = 2.0) -> None:
        self.socket_path = Path(socket_path)
        self._timeout_s = timeout_s
        self._channel = grpc.insecure_channel(f"unix://{self.socket_path}")
        self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)  # type: ignore[no-untyped-call]

    def list(self) -> api_pb2.ListPodResourcesResponse:
        return self._stub.List(api_pb2.ListPodResourcesRequest(), timeout=self._timeout_s)  # type: ignore[no-any-return]

    def allocatable(self) -> api_pb2.AllocatableResourcesResponse:
        return self._stub.GetAllocatableResources(  # type: ignore[no-any-return]
            api_pb2.AllocatableResourcesRequest(), timeout=self._timeout_s
        )

    def close(self) -> None:
        self._channel.close()


class PodResourcesResolver:
    """Pod UID -> (namespace, name) and GPU -> owners, refreshed at most every ``refresh_s``.

    Implements :class:`agent.attribution.PodResolver`. ``allocation()`` maps each GPU id (GPU
    UUID, MIG UUID or index, as the device plugin reports it; replicas folded) to the
    containers it is allocated to; ``allocatable()`` is the set of GPU ids the kubelet may
    allocate. Both cover every resource whose name starts with ``resource_prefix``, the MIG
    resources ``nvidia.com/mig-<profile>`` included.

    DRA devices of the ``dra_drivers`` are mapped by :class:`DraDeviceMap` (CDI specs under
    ``cdi_dirs``, the NVIDIA driver's tables under ``driver_proc_root``): a whole GPU joins
    ``allocation()`` under its UUID, like a device-plugin GPU; a MIG device is in
    ``mig_allocation()`` by placement, for the reconciler to name by the UUID NVML reports;
    the rest is in ``unmapped()``. ``allocatable()`` stays the device plugins' inventory (the
    kubelet does not report DRA devices there).
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] = DEFAULT_SOCKET,
        pod_logs_root: str | os.PathLike[str] = DEFAULT_POD_LOGS,
        *,
        refresh_s: float = 10.0,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        resource_prefix: str = GPU_RESOURCE_PREFIX,
        dra_drivers: Iterable[str] = (NVIDIA_DRA_DRIVER,),
        cdi_dirs: Sequence[str | os.PathLike[str]] = DEFAULT_CDI_DIRS,
        driver_proc_root: str | os.PathLike[str] = "/proc",
    ) -> None:
        self._socket = Path(socket_path)
        self._logs = Path(pod_logs_root)
        self._refresh_s = refresh_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._prefix = resource_prefix
        self._dra_drivers = frozenset(dra_drivers)
        self._dra_map = DraDeviceMap(cdi_dirs, driver_proc_root)
        self._mig_alloc: dict[MigPlacement, tuple[DeviceOwner, ...]] = {}
        self._unmapped: tuple[UnmappedDevice, ...] = ()
        self._client: PodResourcesClient | None = None
        self._next = float("-inf")
        self._status: str | None = "not_read_yet"
        self._alloc: dict[str, tuple[DeviceOwner, ...]] = {}
        self._allocatable: frozenset[str] = frozenset()
        self._pods_by_uid: dict[str, tuple[str, str]] = {}
        self._logged: set[str] = set()

    # -- PodResolver ------------------------------------------------------------------

    def pod(self, pod_uid: str) -> tuple[str, str] | None:
        self.refresh()
        found = self._pods_by_uid.get(pod_uid)
        if found is None:
            self._pods_by_uid.update(self._scan_pod_logs())  # a pod started since the last refresh
            found = self._pods_by_uid.get(pod_uid)
        return found

    # -- allocation ---------------------------------------------------------------------

    def allocation(self) -> dict[str, tuple[DeviceOwner, ...]]:
        self.refresh()
        return self._alloc

    def allocatable(self) -> frozenset[str]:
        self.refresh()
        return self._allocatable

    def mig_allocation(self) -> dict[MigPlacement, tuple[DeviceOwner, ...]]:
        """DRA-allocated MIG devices, by GPU and instance ids."""
        self.refresh()
        return self._mig_alloc

    def unmapped(self) -> tuple[UnmappedDevice, ...]:
        """DRA-allocated devices whose GPU could not be told, with the reason."""
        self.refresh()
        return self._unmapped

    def status(self) -> str | None:
        """None when the last refresh succeeded; otherwise why the allocation is not known."""
        self.refresh()
        return self._status

    def refresh(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now < self._next:
            return
        self._next = now + self._refresh_s
        self._pods_by_uid = self._scan_pod_logs()
        if not self._socket.exists():
            self._fail("socket_missing", f"{self._socket} does not exist (not a Kubernetes node, or not mounted)")
            return
        if self._client is None:
            self._client = PodResourcesClient(self._socket, self._timeout_s)
        try:
            listed = self._client.list()
            allocatable = self._client.allocatable()
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            name = code.name.lower() if code is not None else "rpc_error"
            self._fail(name, f"kubelet pod-resources call failed: {e}")
            return
        alloc: dict[str, list[DeviceOwner]] = {}
        dra: list[tuple[DeviceOwner, tuple[str, ...]]] = []
        for pod in listed.pod_resources:
            for c in pod.containers:
                for d in c.devices:
                    if not d.resource_name.startswith(self._prefix):
                        continue
                    owner = DeviceOwner(pod.namespace, pod.name, c.name, d.resource_name)
                    for dev in d.device_ids:
                        _add(alloc, device_key(dev), owner)
                for r in c.dynamic_resources:
                    claim = f"{r.claim_namespace}/{r.claim_name}"
                    for cr in r.claim_resources:
                        if cr.driver_name not in self._dra_drivers:
                            continue
                        device = f"{cr.driver_name}/{cr.pool_name}/{cr.device_name}"
                        owner = DeviceOwner(pod.namespace, pod.name, c.name, device, claim)
                        dra.append((owner, tuple(x.name for x in cr.cdi_devices)))
        mig: dict[MigPlacement, list[DeviceOwner]] = {}
        unmapped: list[UnmappedDevice] = []
        if dra:
            self._dra_map.load()
        for owner, names in dra:
            try:
                where = self._dra_map.resolve(names)
            except UnmappedError as u:
                unmapped.append(UnmappedDevice(owner, u.reason, u.gpus))
                kind = "dra:" + u.reason.split(":", 1)[0]  # once per kind: the text names claims
                if kind not in self._logged:
                    self._logged.add(kind)
                    _logger.warning(
                        "DRA device %s of pod %s/%s cannot be mapped to a GPU (%s); the checks it could change are"
                        " suspended",
                        owner.resource_name,
                        owner.namespace,
                        owner.pod,
                        u.reason,
                    )
                continue
            if isinstance(where, MigPlacement):
                _add(mig, where, owner)
            else:
                _add(alloc, where, owner)
        self._alloc = {k: tuple(v) for k, v in alloc.items()}
        self._mig_alloc = {k: tuple(v) for k, v in mig.items()}
        self._unmapped = tuple(unmapped)
        self._allocatable = frozenset(
            device_key(dev)
            for d in allocatable.devices
            if d.resource_name.startswith(self._prefix)
            for dev in d.device_ids
        )
        if self._status is not None and self._status != "not_read_yet":
            _logger.info("kubelet pod-resources readable again")
        self._status = None

    def _fail(self, reason: str, message: str) -> None:
        self._status = reason
        self._alloc = {}
        self._mig_alloc = {}
        self._unmapped = ()
        if reason not in self._logged:
            self._logged.add(reason)
            _logger.warning("%s; GPU allocations cannot be checked against use", message)

    def _scan_pod_logs(self) -> dict[str, tuple[str, str]]:
        """``<namespace>_<name>_<uid>`` directories under the pod-logs root."""
        out: dict[str, tuple[str, str]] = {}
        try:
            with os.scandir(self._logs) as it:
                for n, entry in enumerate(it):
                    if n >= _MAX_POD_DIRS:
                        break
                    parts = entry.name.split("_")
                    if len(parts) == 3 and all(parts):
                        out[parts[2]] = (parts[0], parts[1])
        except OSError as e:
            if "pod_logs" not in self._logged:
                self._logged.add("pod_logs")
                _logger.warning("cannot list %s (%s): pod UIDs cannot be named", self._logs, e.strerror or e)
        return out

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _add(into: dict[Any, list[DeviceOwner]], key: Any, owner: DeviceOwner) -> None:
    owners = into.setdefault(key, [])
    if owner not in owners:
        owners.append(owner)
