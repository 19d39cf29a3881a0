"""agent.attribution: cgroup path parsing (table-driven), tenant rules, and the Attributor
against the fixture tree tests/fixtures/proc (see its README for what each PID is)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from agent.attribution import Attributor, ScontrolSlurmResolver, StaticPodResolver, WorkloadRef, parse_cgroup_path
from attestation.statement import UNATTRIBUTED, WORKLOAD_KINDS
from core.samples import Attribution
from core.tenantrules import Lease, TenantRules

PROC = Path(__file__).resolve().parents[2] / "fixtures" / "proc"

CID = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899"
DOCKER = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
BE_CID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
POD = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d"
POD_ = POD.replace("-", "_")
BE_POD = "7d8e9f00-1122-4334-8556-778899aabbcc"
STATIC_POD = "6fa7b7e3a1d3c1c7e0d7a2b1c3d4e5f6"
T = 1_700_000_000.0

# ---------------------------------------------------------------------------
# parse_cgroup_path

PARSE_CASES: list[tuple[str, str, WorkloadRef | None]] = [
    (
        "k8s v2 systemd burstable containerd",
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/cri-containerd-{CID}.scope",
        WorkloadRef("k8s_pod", pod_uid=POD, qos="burstable", container_id=CID, runtime="containerd"),
    ),
    (
        "k8s v2 systemd guaranteed crio",
        f"/kubepods.slice/kubepods-pod{POD_}.slice/crio-{CID}.scope",
        WorkloadRef("k8s_pod", pod_uid=POD, qos="guaranteed", container_id=CID, runtime="crio"),
    ),
    (
        "k8s v2 systemd besteffort docker (cri-dockerd)",
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/docker-{CID}.scope",
        WorkloadRef("k8s_pod", pod_uid=POD, qos="besteffort", container_id=CID, runtime="docker"),
    ),
    (
        "k8s cgroupfs besteffort bare id",
        f"/kubepods/besteffort/pod{BE_POD}/{BE_CID}",
        WorkloadRef("k8s_pod", pod_uid=BE_POD, qos="besteffort", container_id=BE_CID),
    ),
    (
        "k8s cgroupfs burstable crio",
        f"/kubepods/burstable/pod{POD}/crio-{CID}",
        WorkloadRef("k8s_pod", pod_uid=POD, qos="burstable", container_id=CID, runtime="crio"),
    ),
    (
        "k8s cgroupfs guaranteed",
        f"/kubepods/pod{POD}/{CID}",
        WorkloadRef("k8s_pod", pod_uid=POD, qos="guaranteed", container_id=CID),
    ),
    (
        "k8s static pod (config-hash uid), pod level only",
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_POD}.slice",
        WorkloadRef("k8s_pod", pod_uid=STATIC_POD, qos="burstable"),
    ),
    (
        "k8s containerd systemd driver on cgroup v1 (colon form)",
        f"/system.slice/containerd.service/kubepods-burstable-pod{POD_}.slice:cri-containerd:{CID}",
        WorkloadRef("k8s_pod", pod_uid=POD, qos="burstable", container_id=CID, runtime="containerd"),
    ),
    (
        "k8s inside a kind node (docker container): innermost pod wins",
        f"/docker/{DOCKER}/kubepods/besteffort/pod{BE_POD}/{BE_CID}",
        WorkloadRef("k8s_pod", pod_uid=BE_POD, qos="besteffort", container_id=BE_CID),
    ),
    (
        "docker systemd driver",
        f"/system.slice/docker-{DOCKER}.scope",
        WorkloadRef("container", container_id=DOCKER, runtime="docker"),
    ),
    ("docker cgroupfs driver", f"/docker/{DOCKER}", WorkloadRef("container", container_id=DOCKER, runtime="docker")),
    (
        "podman rootful v2",
        f"/machine.slice/libpod-{DOCKER}.scope/container",
        WorkloadRef("container", container_id=DOCKER, runtime="podman"),
    ),
    (
        "podman rootless inside a user manager: container is more specific than the user",
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{DOCKER}.scope",
        WorkloadRef("container", container_id=DOCKER, runtime="podman"),
    ),
    (
        "slurm v1",
        "/slurm/uid_1000/job_123/step_0/task_0",
        WorkloadRef("slurm_job", slurm_job_id="123", uid=1000),
    ),
    (
        "slurm v1, multiple slurmd (slurm_<node>)",
        "/slurm_node17/uid_42/job_9/step_batch/task_0",
        WorkloadRef("slurm_job", slurm_job_id="9", uid=42),
    ),
    (
        "slurm v2",
        "/system.slice/slurmstepd.scope/job_123/step_0/user/task_0",
        WorkloadRef("slurm_job", slurm_job_id="123"),
    ),
    (
        "slurm v2, multiple slurmd (<node>_slurmstepd.scope)",
        "/system.slice/node17_slurmstepd.scope/job_77/step_extern/user/task_special",
        WorkloadRef("slurm_job", slurm_job_id="77"),
    ),
    ("user session", "/user.slice/user-1000.slice/session-3.scope", WorkloadRef("user", uid=1000)),
    (
        "user manager service",
        "/user.slice/user-1000.slice/user@1000.service/app.slice/jupyter.service",
        WorkloadRef("user", uid=1000),
    ),
    # Not a workload
    ("root", "/", None),
    ("system service", "/system.slice/cron.service", None),
    ("slurmstepd itself, no job", "/system.slice/slurmstepd.scope/system", None),
    ("job segment outside slurm", "/system.slice/job_123", None),
    ("pod dir outside kubepods", f"/pod{POD}/{CID}", None),
    ("short container id", "/system.slice/docker-abc123.scope", None),
    ("crio conmon", f"/machine.slice/libpod-conmon-{DOCKER}.scope", None),
    ("init scope", "/init.scope", None),
    # Hostile or malformed
    ("empty", "", None),
    ("relative", "kubepods/pod/x", None),
    ("dotdot", f"/kubepods/../kubepods/besteffort/pod{BE_POD}/{BE_CID}", None),
    ("dot", f"/kubepods/./besteffort/pod{BE_POD}/{BE_CID}", None),
    ("double slash", f"/kubepods//besteffort/pod{BE_POD}/{BE_CID}", None),
    ("NUL", f"/system.slice/docker-{DOCKER}.scope\0/user.slice/user-0.slice", None),
    ("newline", f"/system.slice/docker-{DOCKER}.scope\n0::/user.slice/user-0.slice", None),
    ("space", "/user.slice/user-1000.slice/session 3.scope", None),
    ("non-ascii", "/user.slice/user-1000.slice/sessión-3.scope", None),
    ("very long", "/user.slice/user-1000.slice/" + "a" * 100_000, None),
    ("uid overflow", "/user.slice/user-99999999999.slice/session-1.scope", None),
    ("uppercase pod uid", f"/kubepods/pod{POD.upper()}/{CID}", None),
]


@pytest.mark.parametrize(("name", "path", "want"), PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_parse_cgroup_path(name: str, path: str, want: WorkloadRef | None) -> None:
    got = parse_cgroup_path(path)
    assert got == want, f"{name}: {path[:160]!r}\n  parsed as {got}\n  expected  {want}"


@pytest.mark.parametrize("value", [None, 42, b"/docker/x", ["/"], {"path": "/"}])
def test_parse_cgroup_path_rejects_non_strings(value: object) -> None:
    assert parse_cgroup_path(value) is None  # type: ignore[arg-type]


def test_parse_cgroup_path_survives_garbage() -> None:
    # Deterministic pseudo-random paths from the characters cgroup paths may contain.
    import random

    rng = random.Random(1234)
    alphabet = "/abcdefkubepods-_.:@0123456789slicescopejob_uid_"
    for _ in range(5000):
        path = "/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        got = parse_cgroup_path(path)
        assert got is None or got.kind in ("k8s_pod", "container", "slurm_job", "user"), (path, got)


# ---------------------------------------------------------------------------
# TenantRules and Lease


def test_lease_interval_is_half_open() -> None:
    lease = Lease("acme", start=100.0, end=200.0)
    assert not lease.active(99.999) and lease.active(100.0) and lease.active(199.999) and not lease.active(200.0)
    assert Lease("acme").active(-1e18), "a lease with no bounds covers all time"
    assert Lease("acme", start=5.0).active(1e18) and not Lease("acme", end=5.0).active(5.0)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"tenant": "acme", "start": 200.0, "end": 100.0}, "not before"),
        ({"tenant": "acme", "start": 100.0, "end": 100.0}, "not before"),
        ({"tenant": ""}, "tenant name"),
        ({"tenant": UNATTRIBUTED}, "tenant name"),
    ],
)
def test_lease_rejects_nonsense(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Lease(**kwargs)  # type: ignore[arg-type]


def test_overlapping_leases_are_a_config_error() -> None:
    with pytest.raises(ValueError, match="leases overlap: 'a'.*'b'"):
        TenantRules(leases=(Lease("a", 0.0, 100.0), Lease("b", 50.0, None)))
    # Touching intervals do not overlap.
    rules = TenantRules(leases=(Lease("a", 0.0, 100.0), Lease("b", 100.0, 200.0)))
    got = [lease.tenant if (lease := rules.lease_at(x)) else None for x in (-1.0, 0.0, 99.0, 100.0, 250.0)]
    assert got == [None, "a", "a", "b", None]


def test_rules_reject_unattributed_as_a_tenant() -> None:
    with pytest.raises(ValueError, match=r"namespaces\['ml'\]"):
        TenantRules(namespaces={"ml": UNATTRIBUTED})
    with pytest.raises(ValueError, match="empty prefix"):
        TenantRules(containers={"": "acme"})


def test_container_rule_longest_prefix_wins() -> None:
    rules = TenantRules(containers={"a1b2": "short", "a1b2c3d4e5f6": "long", "ffff": "other"})
    assert rules.container_tenant(DOCKER) == "long"
    assert rules.container_tenant("b" * 64) is None


# ---------------------------------------------------------------------------
# Attributor over the fixture tree

RULES = TenantRules(
    namespaces={"ml-team": "acme"},
    slurm_accounts={"physics": "uni-physics"},
    uids={1001: "alice-co", 33: "www-tenant", 1000: "uid-1000-tenant"},
    containers={DOCKER[:12]: "docker-tenant"},
)
PODS = StaticPodResolver({POD: ("ml-team", "trainer-0"), BE_POD: ("other-ns", "infer-7")})


@pytest.mark.parametrize(
    ("pid", "want"),
    [
        (4242, Attribution("acme", "k8s_pod", "ml-team/trainer-0")),
        (9191, Attribution(UNATTRIBUTED, "k8s_pod", "other-ns/infer-7")),  # namespace not in the rules
        (5151, Attribution("uni-physics", "slurm_job", "slurm:123")),  # account from environ
        (6161, Attribution("docker-tenant", "container", f"container:{DOCKER[:12]}")),
        (7171, Attribution("alice-co", "user", "uid:1001")),
        (8181, Attribution("www-tenant", "user", "uid:33")),  # no workload in cgroup; uid rule
        (31337, Attribution(UNATTRIBUTED, "process", "pid:31337")),  # vanished
    ],
)
def test_resolve_fixture_processes(pid: int, want: Attribution) -> None:
    got = Attributor(PROC, RULES, pod_resolver=PODS).resolve(pid, T)
    assert got == want, f"pid {pid} ({(PROC / str(pid) / 'cgroup')}): got {got}, expected {want}"
    assert got.kind in WORKLOAD_KINDS, f"{got.kind!r} is not one of attestation.statement.WORKLOAD_KINDS"


def test_no_rules_means_unattributed_with_the_best_workload_id() -> None:
    a = Attributor(PROC, TenantRules())
    got = {pid: a.resolve(pid, T) for pid in (4242, 5151, 6161, 7171, 8181)}
    assert {x.tenant for x in got.values()} == {UNATTRIBUTED}, "no rules: nothing may be given to a tenant"
    assert (
        [x.workload for x in got.values()]
        == [
            f"pod:{POD}",  # no pod resolver: the pod uid is the best id
            "slurm:123",
            f"container:{DOCKER[:12]}",
            "uid:1001",
            "pid:8181",
        ]
    )


def test_an_active_lease_wins_for_the_whole_node() -> None:
    rules = TenantRules(namespaces={"ml-team": "acme"}, leases=(Lease("lessee", T - 10, T + 10),))
    a = Attributor(PROC, rules, pod_resolver=PODS)
    for pid in (4242, 5151, 8181, 31337):
        assert a.resolve(pid, T) == Attribution("lessee", "lease", "lease:lessee"), f"pid {pid} during the lease"
    assert a.resolve(4242, T + 10).tenant == "acme", "after the lease ends the namespace rule applies again"


def test_uid_rules_do_not_apply_to_pods() -> None:
    # 4242 runs as uid 0 inside its container; a uid-0 rule must not capture the pod.
    a = Attributor(PROC, TenantRules(uids={0: "root-tenant"}), pod_resolver=PODS)
    assert a.resolve(4242, T).tenant == UNATTRIBUTED


def test_slurm_account_unknown_falls_back_to_the_job_owners_uid() -> None:
    rules = TenantRules(uids={1000: "uid-1000-tenant"})  # "physics" is not mapped
    assert Attributor(PROC, rules).resolve(5151, T) == Attribution("uid-1000-tenant", "slurm_job", "slurm:123")


class FakeSlurm:
    def __init__(self, answers: dict[str, str | None]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def account(self, job_id: str) -> str | None:
        self.calls.append(job_id)
        return self.answers.get(job_id)


def test_slurm_resolver_beats_the_environment() -> None:
    # The environment says "physics", but it is the job owner's to set; slurmctld says "chem".
    rules = TenantRules(slurm_accounts={"physics": "uni-physics", "chem": "uni-chem"})
    slurm = FakeSlurm({"123": "chem"})
    assert Attributor(PROC, rules, slurm_resolver=slurm).resolve(5151, T).tenant == "uni-chem"
    assert slurm.calls == ["123"]


def test_unanswered_resolvers_are_retried_later_not_cached_forever() -> None:
    slurm = FakeSlurm({})
    rules = TenantRules(slurm_accounts={"physics": "uni-physics"})
    a = Attributor(PROC, rules, slurm_resolver=slurm, retry_s=30.0)
    assert a.resolve(5151, T).tenant == UNATTRIBUTED
    assert a.resolve(5151, T + 1).tenant == UNATTRIBUTED
    assert slurm.calls == ["123"], "within retry_s the cached answer is used (no scontrol storm)"
    slurm.answers["123"] = "physics"
    assert a.resolve(5151, T + 31).tenant == "uni-physics", "after retry_s the resolver is asked again"
    assert slurm.calls == ["123", "123"]
    a.resolve(5151, T + 1000)
    assert slurm.calls == ["123", "123"], "a complete answer is cached for the life of the process"


class LatePods:
    """A pod resolver that does not know the pod yet (the API server lags the kubelet)."""

    def __init__(self) -> None:
        self.pods: dict[str, tuple[str, str]] = {}

    def pod(self, pod_uid: str) -> tuple[str, str] | None:
        return self.pods.get(pod_uid)


def test_unknown_pod_is_retried_when_a_resolver_exists() -> None:
    pods = LatePods()
    a = Attributor(PROC, RULES, pod_resolver=pods, retry_s=5.0)
    assert a.resolve(4242, T) == Attribution(UNATTRIBUTED, "k8s_pod", f"pod:{POD}")
    pods.pods[POD] = ("ml-team", "trainer-0")  # the pod shows up in the API
    assert a.resolve(4242, T + 1).tenant == UNATTRIBUTED, "cached until the retry delay"
    assert a.resolve(4242, T + 6).tenant == "acme"


def _copy_proc(tmp_path: Path, pids: list[int]) -> Path:
    root = tmp_path / "proc"
    for pid in pids:
        shutil.copytree(PROC / str(pid), root / str(pid))
    return root


def _set_start_time(root: Path, pid: int, ticks: int) -> None:
    p = root / str(pid) / "stat"
    head, _, tail = p.read_text().rpartition(")")
    fields = tail.split()
    fields[19] = str(ticks)
    p.write_text(f"{head}) {' '.join(fields)}\n")


def test_pid_reuse_never_moves_usage_between_tenants(tmp_path: Path) -> None:
    root = _copy_proc(tmp_path, [4242, 7171])
    a = Attributor(root, RULES, pod_resolver=PODS)
    assert a.resolve(4242, T).tenant == "acme"
    # PID 4242 exits; a new process of user 1001 gets the same PID.
    shutil.rmtree(root / "4242")
    shutil.copytree(root / "7171", root / "4242")
    _set_start_time(root, 4242, 999_999)
    got = a.resolve(4242, T + 60)
    assert got == Attribution("alice-co", "user", "uid:1001"), f"the new PID-4242 process inherited {got}"


def test_stale_start_time_from_the_sample_is_not_attributed(tmp_path: Path) -> None:
    a = Attributor(PROC, RULES, pod_resolver=PODS)
    # The NVML sample saw PID 4242 with another start time: the process it saw is gone.
    assert a.resolve(4242, T, start_time_ticks=1) == Attribution(UNATTRIBUTED, "process", "pid:4242")
    assert a.resolve(4242, T, start_time_ticks=123456).tenant == "acme"


def test_cache_is_bounded() -> None:
    a = Attributor(PROC, RULES, pod_resolver=PODS, cache_size=2)
    for pid in (4242, 5151, 6161, 7171, 8181, 9191):
        a.resolve(pid, T)
    assert a.cache_len() == 2, f"cache_size=2 but {a.cache_len()} processes are cached"
    with pytest.raises(ValueError, match="cache_size"):
        Attributor(PROC, RULES, cache_size=0)


def test_cache_avoids_rereading_cgroup(tmp_path: Path) -> None:
    root = _copy_proc(tmp_path, [6161])
    a = Attributor(root, RULES)
    first = a.resolve(6161, T)
    (root / "6161" / "cgroup").write_text("0::/system.slice/cron.service\n")
    assert a.resolve(6161, T + 1) == first, "same (pid, start time): the cached answer must be used"


# ---------------------------------------------------------------------------
# ScontrolSlurmResolver, with a stand-in scontrol executable


def _fake_scontrol(tmp_path: Path, body: str) -> str:
    path = tmp_path / "scontrol"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


needs_sh = pytest.mark.skipif(not os.path.exists("/bin/sh"), reason="needs /bin/sh for a stand-in scontrol")


@needs_sh
def test_scontrol_resolver_parses_account(tmp_path: Path) -> None:
    exe = _fake_scontrol(
        tmp_path,
        'test "$1 $2 $3 $4" = "show job -o 123" || exit 3\n'
        'echo "JobId=123 JobName=train UserId=alice(1000) GroupId=alice(1000) Priority=1 '
        'Account=physics QOS=normal JobState=RUNNING"\n',
    )
    assert ScontrolSlurmResolver(exe).account("123") == "physics"


@needs_sh
@pytest.mark.parametrize(
    ("body", "job"),
    [
        ('echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1\n', "123"),
        ('echo "JobId=123 Account=(null)"\n', "123"),
        ('echo "JobId=123 JobName=x"\n', "123"),
        ('echo "Account=physics"\n', "123; rm -rf /"),  # not a job id: never passed to scontrol
        ("sleep 5\n", "123"),  # slurmctld hangs: the timeout must fire
    ],
    ids=["invalid-job", "null-account", "no-account", "hostile-job-id", "timeout"],
)
def test_scontrol_resolver_failures_are_none(tmp_path: Path, body: str, job: str) -> None:
    resolver = ScontrolSlurmResolver(_fake_scontrol(tmp_path, body), timeout_s=0.3)
    assert resolver.account(job) is None


def test_scontrol_missing_is_none(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    resolver = ScontrolSlurmResolver(str(tmp_path / "no-such-scontrol"))
    assert resolver.account("1") is None and resolver.account("2") is None
    warnings = [r for r in caplog.records if "cannot ask Slurm" in r.getMessage()]
    assert len(warnings) == 1, f"a missing scontrol must be logged once, got {len(warnings)} warnings"
