"""agent.sources.procfs against the fixture tree tests/fixtures/proc (see its README)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.sources import procfs

PROC = Path(__file__).resolve().parents[2] / "fixtures" / "proc"
GONE = 31337  # not in the fixture tree: exited between NVML's list and the /proc read


def test_read_cgroup_v2_single_line() -> None:
    paths = procfs.read_cgroup(PROC, 4242)
    assert len(paths) == 1, f"a cgroup v2 file has one line, got {paths}"
    assert paths[0].startswith("/kubepods.slice/kubepods-burstable.slice/"), paths[0]
    assert paths[0].endswith(".scope"), paths[0]


def test_read_cgroup_v1_hybrid_dedupes_in_file_order() -> None:
    paths = procfs.read_cgroup(PROC, 5151)
    assert paths == [
        "/slurm/uid_1000/job_123/step_0/task_0",
        "/system.slice/slurmd.service",
    ], "seven v1 controllers share one path; the systemd and v2 lines share another"


def test_read_cgroup_keeps_colons_inside_the_path(tmp_path: Path) -> None:
    (tmp_path / "77").mkdir()
    path = "/system.slice/containerd.service/kubepods-besteffort-podabc.slice:cri-containerd:0123"
    (tmp_path / "77" / "cgroup").write_text(f"3:memory:{path}\nnot a cgroup line\n")
    assert procfs.read_cgroup(tmp_path, 77) == [path], "the path is everything after the second colon"


@pytest.mark.parametrize(
    ("pid", "uid"),
    [(4242, 0), (5151, 1000), (7171, 1001), (9191, 65534)],
)
def test_read_uid_is_the_real_uid(pid: int, uid: int) -> None:
    # 5151 is setuid (effective 0): attribution must use the real uid, who started it.
    assert procfs.read_uid(PROC, pid) == uid, f"pid {pid}: wrong real uid from {PROC / str(pid) / 'status'}"


@pytest.mark.parametrize(("pid", "ticks"), [(4242, 123456), (7171, 445566), (9191, 667788)])
def test_read_start_time_ticks(pid: int, ticks: int) -> None:
    # 7171's comm is "my (weird) proc) x": splitting at the first ")" would shift every field.
    assert procfs.read_start_time_ticks(PROC, pid) == ticks, f"field 22 of {PROC / str(pid) / 'stat'}"


def test_read_environ_returns_only_requested_keys() -> None:
    env = procfs.read_environ(PROC, 5151, ["SLURM_JOB_ID", "SLURM_JOB_ACCOUNT", "EQUALS", "EMPTY", "NOT_SET"])
    assert env == {"SLURM_JOB_ID": "123", "SLURM_JOB_ACCOUNT": "physics", "EQUALS": "a=b=c", "EMPTY": ""}
    assert "SECRET_TOKEN" not in procfs.read_environ(PROC, 5151, ["SLURM_JOB_ID"]), "unrequested keys must not leak"


@pytest.mark.parametrize(
    "call",
    [
        lambda pid: procfs.read_cgroup(PROC, pid),
        lambda pid: procfs.read_uid(PROC, pid),
        lambda pid: procfs.read_start_time_ticks(PROC, pid),
        lambda pid: procfs.read_environ(PROC, pid, ["SLURM_JOB_ID"]),
    ],
    ids=["cgroup", "uid", "start_time", "environ"],
)
@pytest.mark.parametrize("pid", [GONE, 0, -1])
def test_vanished_or_invalid_pid_is_empty_not_an_error(call: object, pid: int) -> None:
    assert callable(call)
    assert not call(pid), f"pid {pid} has no /proc entry: expected an empty result, not a value"


def test_unparseable_files_give_none(tmp_path: Path) -> None:
    d = tmp_path / "55"
    d.mkdir()
    (d / "stat").write_text("55 (no closing paren S 1 2 3\n")
    (d / "status").write_text("Name:\tx\nUid:\tnot-a-number\t0\t0\t0\n")
    assert procfs.read_start_time_ticks(tmp_path, 55) is None, "a stat line without ')' has no field 22"
    assert procfs.read_uid(tmp_path, 55) is None, "a non-numeric Uid must not become a uid"
    (d / "stat").write_text("55 (short) S 1\n")
    assert procfs.read_start_time_ticks(tmp_path, 55) is None, "a truncated stat line has no field 22"


def test_environ_that_cannot_be_read_is_empty(tmp_path: Path) -> None:
    (tmp_path / "66" / "environ").mkdir(parents=True)  # reading a directory fails with an OSError
    assert procfs.read_environ(tmp_path, 66, ["SLURM_JOB_ID"]) == {}


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_environ_permission_denied_is_empty(tmp_path: Path) -> None:
    d = tmp_path / "67"
    d.mkdir()
    (d / "environ").write_bytes(b"SLURM_JOB_ID=1\0")
    (d / "environ").chmod(0)
    assert procfs.read_environ(tmp_path, 67, ["SLURM_JOB_ID"]) == {}, "another user's environ is not readable"
