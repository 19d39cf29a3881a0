"""Who a GPU process belongs to: cgroup path -> workload -> tenant.

NVML reports host PIDs (NVIDIA/nvidia-docker#1483), so attribution reads the host's
``/proc/<pid>/cgroup`` (through :mod:`agent.sources.procfs`) and recognises the shapes that
Kubernetes, container runtimes, Slurm and systemd give it. A workload is mapped to a tenant
by the operator's :class:`~core.tenantrules.TenantRules`. Nothing is ever dropped: a process no rule matches is
attributed to ``UNATTRIBUTED`` with the best workload id known for it.

Order of precedence in :meth:`Attributor.resolve`:

1. an active :class:`~core.tenantrules.Lease` at time ``t`` gives the whole node to one tenant;
2. a Kubernetes pod (tenant by namespace, through a :class:`PodResolver`);
3. a Slurm job (tenant by account, then by the job owner's uid);
4. a container outside Kubernetes (tenant by container-id prefix);
5. a systemd user slice, or the process's real uid (tenant by uid);
6. otherwise ``UNATTRIBUTED``, workload ``pid:<pid>``.

Before any of these, a PID that ``/proc`` shows as a kernel thread (PF_KTHREAD) is
``UNATTRIBUTED``: no GPU process is one, so the PID number came from another PID namespace.

A uid rule is not applied to pods and containers: their uids belong to the container's
user namespace or image, not to a person on the host.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from agent.sources import procfs
from attestation.statement import UNATTRIBUTED
from core.samples import Attribution
from core.tenantrules import TenantRules

_logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Cgroup paths -> workloads

_MAX_CGROUP_PATH_CHARS = 4096
_MAX_UID = 2**32 - 2  # (uid_t)-1 is "no uid"
# Everything real cgroup paths contain; systemd escapes others as \xNN.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_.:@=+,/\\-]*")

_UID_IN_POD = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
# systemd driver: kubepods-pod<uid>.slice (guaranteed), kubepods-<qos>-pod<uid>.slice.
# Static pods have a 32-hex config hash as uid.
_K8S_POD_SLICE = re.compile(rf"kubepods(?:-(burstable|besteffort))?-pod({_UID_IN_POD})\.slice")
# cgroupfs driver: /kubepods[/<qos>]/pod<uid>/...
_K8S_POD_DIR = re.compile(rf"pod({_UID_IN_POD})")
_K8S_QOS_DIRS = ("burstable", "besteffort")
_RUNTIME_PREFIXES = {"cri-containerd": "containerd", "crio": "crio", "docker": "docker", "libpod": "podman"}
_CONTAINER_SCOPE = re.compile(r"(cri-containerd|crio|docker|libpod)-([0-9a-f]{64})(?:\.scope)?")
_CONTAINER_BARE_ID = re.compile(r"[0-9a-f]{64}")
_SLURM_V1_ROOT = re.compile(r"slurm(?:_[A-Za-z0-9.-]{1,255})?")
_SLURM_V2_ROOT = re.compile(r"(?:[A-Za-z0-9.-]{1,255}_)?slurmstepd\.scope")
_SLURM_JOB = re.compile(r"job_([0-9]{1,20})")
_SLURM_UID = re.compile(r"uid_([0-9]{1,10})")
_USER_SLICE = re.compile(r"user-([0-9]{1,10})\.slice")
_USER_SERVICE = re.compile(r"user@([0-9]{1,10})\.service")

WORKLOAD_REF_KINDS = ("k8s_pod", "container", "slurm_job", "user")


@dataclass(frozen=True)
class WorkloadRef:
    """What a cgroup path says about a process. Fields not implied by ``kind`` are None.

    ``pod_uid`` is the Kubernetes pod UID with dashes (systemd's underscores undone);
    ``container_id`` is the full 64-hex runtime id; ``slurm_job_id`` is decimal digits.
    """

    kind: str  # one of WORKLOAD_REF_KINDS
    pod_uid: str | None = None
    qos: str | None = None  # "guaranteed", "burstable" or "besteffort" (Kubernetes only)
    container_id: str | None = None
    runtime: str | None = None  # "containerd", "crio", "docker", "podman"
    slurm_job_id: str | None = None
    uid: int | None = None


def _segments(path: object) -> list[str] | None:
    """The path's segments, or None when it is not a plausible cgroup path."""
    if not isinstance(path, str) or len(path) > _MAX_CGROUP_PATH_CHARS:
        return None
    if not _SAFE_PATH.fullmatch(path):  # also rejects NUL, newlines, spaces, non-ASCII
        return None
    segs = path.strip("/").split("/")
    if segs == [""] or any(s in ("", ".", "..") for s in segs):
        return None
    return segs


def _uid(text: str) -> int | None:
    n = int(text)
    return n if n <= _MAX_UID else None


def _container(seg: str) -> tuple[str, str] | None:
    """(runtime, id) for a container scope segment such as ``cri-containerd-<64hex>.scope``."""
    m = _CONTAINER_SCOPE.fullmatch(seg)
    if m:
        return _RUNTIME_PREFIXES[m.group(1)], m.group(2)
    return None


def _k8s(segs: list[str]) -> WorkloadRef | None:
    # The innermost pod wins (a kind/k3d node is itself a container with pods inside).
    for i in range(len(segs) - 1, -1, -1):
        seg = segs[i]
        runtime: str | None = None
        cid: str | None = None
        # containerd with the systemd driver on cgroup v1 can name the container
        # "kubepods-<qos>-pod<uid>.slice:cri-containerd:<id>".
        parts = seg.split(":")
        if len(parts) == 3 and parts[1] in _RUNTIME_PREFIXES and _CONTAINER_BARE_ID.fullmatch(parts[2]):
            seg, runtime, cid = parts[0], _RUNTIME_PREFIXES[parts[1]], parts[2]
        m = _K8S_POD_SLICE.fullmatch(seg)
        if m:
            qos = m.group(1) or "guaranteed"
            uid = m.group(2)
        else:
            m = _K8S_POD_DIR.fullmatch(seg)
            if not m or not any(s.startswith("kubepods") for s in segs[:i]):
                continue
            qos = segs[i - 1] if segs[i - 1] in _K8S_QOS_DIRS else "guaranteed"
            uid = m.group(1)
        if cid is None and i + 1 < len(segs):
            nxt = segs[i + 1]
            found = _container(nxt)
            if found:
                runtime, cid = found
            elif _CONTAINER_BARE_ID.fullmatch(nxt):
                cid = nxt
        return WorkloadRef(kind="k8s_pod", pod_uid=uid.replace("_", "-"), qos=qos, container_id=cid, runtime=runtime)
    return None


def _slurm(segs: list[str]) -> WorkloadRef | None:
    for i, seg in enumerate(segs):
        if not (_SLURM_V1_ROOT.fullmatch(seg) or _SLURM_V2_ROOT.fullmatch(seg)):
            continue
        uid: int | None = None
        for s in segs[i + 1 :]:
            mu = _SLURM_UID.fullmatch(s)
            if mu:
                uid = _uid(mu.group(1))
                continue
            mj = _SLURM_JOB.fullmatch(s)
            if mj:
                return WorkloadRef(kind="slurm_job", slurm_job_id=mj.group(1), uid=uid)
    return None


def _plain_container(segs: list[str]) -> WorkloadRef | None:
    for i in range(len(segs) - 1, -1, -1):
        found = _container(segs[i])
        if found:
            return WorkloadRef(kind="container", runtime=found[0], container_id=found[1])
        # cgroupfs driver: /docker/<64hex>
        if i > 0 and segs[i - 1] == "docker" and _CONTAINER_BARE_ID.fullmatch(segs[i]):
            return WorkloadRef(kind="container", runtime="docker", container_id=segs[i])
    return None


def _user(segs: list[str]) -> WorkloadRef | None:
    for seg in reversed(segs):
        m = _USER_SERVICE.fullmatch(seg) or _USER_SLICE.fullmatch(seg)
        if m:
            uid = _uid(m.group(1))
            return WorkloadRef(kind="user", uid=uid) if uid is not None else None
    return None


def parse_cgroup_path(path: str) -> WorkloadRef | None:
    """The workload a cgroup path names, or None. Pure; never raises.

    Recognised (cgroup v1 and v2; systemd and cgroupfs drivers):
    Kubernetes pods of every QoS class with containerd, CRI-O or Docker containers;
    Docker and Podman containers outside Kubernetes; Slurm jobs (``/slurm/uid_N/job_N/...``
    and ``.../slurmstepd.scope/job_N/...``); systemd user slices and user managers.
    Anything malformed (too long, ``..``, NUL, characters no cgroup path has) is None.
    """
    try:
        segs = _segments(path)
        if segs is None:
            return None
        return _k8s(segs) or _slurm(segs) or _plain_container(segs) or _user(segs)
    except Exception:  # a parser bug must not take the agent down; say so once per path
        _logger.exception("cannot parse cgroup path %r", path[:200] if isinstance(path, str) else path)
        return None


# ---------------------------------------------------------------------------
# Resolvers: what the cgroup path does not say


class PodResolver(Protocol):
    """Kubernetes pod UID -> (namespace, pod name); None when the pod is not (yet) known."""

    def pod(self, pod_uid: str) -> tuple[str, str] | None: ...


class SlurmResolver(Protocol):
    """Slurm job id -> account; None when it cannot be found out now."""

    def account(self, job_id: str) -> str | None: ...


class StaticPodResolver:
    """A fixed pod UID -> (namespace, name) table (tests, or a site that exports one)."""

    def __init__(self, pods: Mapping[str, tuple[str, str]]) -> None:
        self._pods = dict(pods)

    def pod(self, pod_uid: str) -> tuple[str, str] | None:
        return self._pods.get(pod_uid)


_SCONTROL_ACCOUNT = re.compile(r"(?:^|\s)Account=(\S+)")
_JOB_ID = re.compile(r"[0-9]{1,20}")


class ScontrolSlurmResolver:
    """Asks slurmctld through ``scontrol show job -o <id>`` and reads ``Account=``.

    A failure (scontrol missing, slurmctld unreachable, timeout after ``timeout_s`` seconds,
    job already purged) returns None; the Attributor retries later.
    """

    def __init__(self, scontrol: str = "scontrol", timeout_s: float = 5.0) -> None:
        self._scontrol = scontrol
        self._timeout_s = timeout_s
        self._warned: set[str] = set()

    def _warn_once(self, what: str, detail: object) -> None:
        if what not in self._warned:
            self._warned.add(what)
            _logger.warning("cannot ask Slurm for job accounts (%s): %s", what, detail)

    def account(self, job_id: str) -> str | None:
        if not _JOB_ID.fullmatch(job_id):
            return None
        try:
            proc = subprocess.run(
                [self._scontrol, "show", "job", "-o", job_id],
                capture_output=True,
                text=True,
                timeout=self._timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self._warn_once("timeout", f"{self._scontrol} took more than {self._timeout_s} s")
            return None
        except OSError as e:
            self._warn_once("exec", f"{self._scontrol}: {e}; is Slurm installed on this node?")
            return None
        if proc.returncode != 0:
            _logger.debug("scontrol show job %s exited %d: %s", job_id, proc.returncode, proc.stderr.strip())
            return None
        m = _SCONTROL_ACCOUNT.search(proc.stdout)
        if not m or m.group(1) == "(null)":
            return None
        return m.group(1)


# ---------------------------------------------------------------------------
# The attributor

_SLURM_ENV_KEYS = ("SLURM_JOB_ID", "SLURM_JOB_ACCOUNT")


@dataclass(frozen=True)
class _Resolved:
    attribution: Attribution
    complete: bool  # False: a resolver did not answer; try again after the retry delay


class Attributor:
    """Resolves host PIDs to :class:`Attribution` using ``/proc`` under ``proc_root``.

    Results are cached by (pid, start time in clock ticks), so a reused PID is resolved
    afresh and never inherits its predecessor's tenant. The cache holds at most
    ``cache_size`` processes (least recently used go first). A result that a resolver could
    not complete (pod not yet known, slurmctld down) is retried after ``retry_s`` seconds.

    The Slurm account comes from ``slurm_resolver`` when one is given; only without a
    resolver is the process's ``SLURM_JOB_ACCOUNT`` used, and only when its ``SLURM_JOB_ID``
    matches the job in the cgroup path: the environment is set by the job's owner.
    """

    def __init__(
        self,
        proc_root: str | os.PathLike[str],
        rules: TenantRules,
        pod_resolver: PodResolver | None = None,
        slurm_resolver: SlurmResolver | None = None,
        *,
        cache_size: int = 4096,
        retry_s: float = 30.0,
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self._proc_root = proc_root
        self._rules = rules
        self._pods = pod_resolver
        self._slurm = slurm_resolver
        self._cache_size = cache_size
        self._retry_s = retry_s
        # (pid, start_time_ticks) -> (result, retry at Unix seconds or None)
        self._cache: OrderedDict[tuple[int, int], tuple[Attribution, float | None]] = OrderedDict()
        self._kthread_logged = False

    def cache_len(self) -> int:
        """How many processes are cached now (for tests and self-metrics)."""
        return len(self._cache)

    def resolve(self, pid: int, t: float, start_time_ticks: int | None = None) -> Attribution:
        """Who ``pid`` (a host PID) belongs to at Unix time ``t`` (seconds).

        ``start_time_ticks`` is the process start time the caller saw (``ProcessSample``);
        when it no longer matches ``/proc``, the PID now belongs to another process and the
        result is ``pid:<pid>``, unattributed. A kernel thread (PF_KTHREAD in ``stat``) is
        always ``pid:<pid>``, unattributed, even under a lease. Never raises for a vanished
        process.
        """
        stat = procfs.read_stat(self._proc_root, pid)
        if stat is not None and stat.kernel_thread:
            # No GPU process is a kernel thread: the PID came from another PID namespace (or
            # is plain wrong). Not even a lease claims it.
            if not self._kthread_logged:
                self._kthread_logged = True
                _logger.warning(
                    "PID %d on a GPU is a kernel thread in %s: left unattributed (is %s the host's /proc?)",
                    pid,
                    self._proc_root,
                    self._proc_root,
                )
            return self._unattributed(pid)

        lease = self._rules.lease_at(t)
        if lease is not None:
            return Attribution(tenant=lease.tenant, kind="lease", workload=f"lease:{lease.tenant}")

        now_ticks = stat.start_time_ticks if stat is not None else None
        if now_ticks is None or (start_time_ticks is not None and start_time_ticks != now_ticks):
            # Gone, or the PID was reused since the caller sampled it: nothing in /proc is
            # about the process that used the GPU.
            return self._unattributed(pid)

        key = (pid, now_ticks)
        hit = self._cache.get(key)
        if hit is not None and (hit[1] is None or t < hit[1]):
            self._cache.move_to_end(key)
            return hit[0]

        resolved = self._resolve_uncached(pid)
        self._cache[key] = (resolved.attribution, None if resolved.complete else t + self._retry_s)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return resolved.attribution

    @staticmethod
    def _unattributed(pid: int) -> Attribution:
        return Attribution(tenant=UNATTRIBUTED, kind="process", workload=f"pid:{pid}")

    def _resolve_uncached(self, pid: int) -> _Resolved:
        refs = [r for r in map(parse_cgroup_path, procfs.read_cgroup(self._proc_root, pid)) if r is not None]
        for kind in WORKLOAD_REF_KINDS:
            ref = next((r for r in refs if r.kind == kind), None)
            if ref is not None:
                return self._from_ref(pid, ref)
        uid = procfs.read_uid(self._proc_root, pid)
        if uid is not None and uid in self._rules.uids:
            return _Resolved(Attribution(self._rules.uids[uid], "user", f"uid:{uid}"), True)
        return _Resolved(self._unattributed(pid), True)

    def _from_ref(self, pid: int, ref: WorkloadRef) -> _Resolved:
        rules = self._rules
        if ref.kind == "k8s_pod" and ref.pod_uid is not None:
            found = self._pods.pod(ref.pod_uid) if self._pods is not None else None
            if found is None:
                # Without a resolver this is final; with one, the pod may just be new.
                return _Resolved(
                    Attribution(UNATTRIBUTED, "k8s_pod", f"pod:{ref.pod_uid}"), complete=self._pods is None
                )
            namespace, name = found
            return _Resolved(
                Attribution(rules.namespaces.get(namespace, UNATTRIBUTED), "k8s_pod", f"{namespace}/{name}"), True
            )

        if ref.kind == "slurm_job" and ref.slurm_job_id is not None:
            job = ref.slurm_job_id
            account, complete = self._slurm_account(pid, job)
            tenant = rules.slurm_accounts.get(account) if account is not None else None
            if tenant is None:
                uid = ref.uid if ref.uid is not None else procfs.read_uid(self._proc_root, pid)
                tenant = rules.uids.get(uid) if uid is not None else None
            return _Resolved(Attribution(tenant or UNATTRIBUTED, "slurm_job", f"slurm:{job}"), complete)

        if ref.kind == "container" and ref.container_id is not None:
            tenant = rules.container_tenant(ref.container_id)
            return _Resolved(
                Attribution(tenant or UNATTRIBUTED, "container", f"container:{ref.container_id[:12]}"), True
            )

        if ref.kind == "user" and ref.uid is not None:
            return _Resolved(Attribution(rules.uids.get(ref.uid, UNATTRIBUTED), "user", f"uid:{ref.uid}"), True)

        return _Resolved(self._unattributed(pid), True)

    def _slurm_account(self, pid: int, job_id: str) -> tuple[str | None, bool]:
        """(account, complete). complete is False when the resolver should be asked again."""
        if self._slurm is not None:
            account = self._slurm.account(job_id)
            return account, account is not None
        env = procfs.read_environ(self._proc_root, pid, _SLURM_ENV_KEYS)
        if env.get("SLURM_JOB_ID") == job_id and env.get("SLURM_JOB_ACCOUNT"):
            return env["SLURM_JOB_ACCOUNT"], True
        return None, True
