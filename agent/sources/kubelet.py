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

Failures are recorded, never raised into the sampling path: :meth:`PodResourcesResolver.status`
says why the allocation is not known (``socket_missing``, ``unavailable``, ...).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.sources.podresources import api_pb2, api_pb2_grpc

_logger = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
DEFAULT_POD_LOGS = Path("/var/log/pods")
GPU_RESOURCE_PREFIX = "nvidia.com/"
_MAX_POD_DIRS = 10_000


@dataclass(frozen=True)
class DeviceOwner:
    """A container that a device is allocated to."""

    namespace: str
    pod: str
    container: str
    resource_name: str  # e.g. nvidia.com/gpu, nvidia.com/mig-1g.10gb, nvidia.com/gpu.shared


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
    ) -> None:
        self._socket = Path(socket_path)
        self._logs = Path(pod_logs_root)
        self._refresh_s = refresh_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._prefix = resource_prefix
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
        for pod in listed.pod_resources:
            for c in pod.containers:
                for d in c.devices:
                    if not d.resource_name.startswith(self._prefix):
                        continue
                    owner = DeviceOwner(pod.namespace, pod.name, c.name, d.resource_name)
                    for dev in d.device_ids:
                        owners = alloc.setdefault(device_key(dev), [])
                        if owner not in owners:
                            owners.append(owner)
        self._alloc = {k: tuple(v) for k, v in alloc.items()}
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
