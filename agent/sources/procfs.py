"""Readers for ``/proc/<pid>/...``, with the proc root as a parameter.

NVML reports host PIDs, so these read the host's proc filesystem (mounted into the agent's
container at a path of the operator's choosing, hence ``proc_root``). Tests point
``proc_root`` at the fixture tree in ``tests/fixtures/proc``.

A process can exit between NVML listing it and these reads. Every reader treats that as an
ordinary outcome: it returns ``None``, ``[]`` or ``{}`` and never raises. The same holds for
a file the agent may not read (``environ`` of another user's process without
CAP_SYS_PTRACE) and for contents that do not parse: the caller records "not known", it does
not guess.

:func:`read_stat` also gives the task's flags: a kernel thread (PF_KTHREAD) never runs GPU
work, so a kernel thread's PID in NVML's process list is a PID from another namespace and
is never attributed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

_logger = logging.getLogger(__name__)

DEFAULT_PROC_ROOT = "/proc"

# Upper bounds on what one read takes in. /proc/<pid>/cgroup and status are a few KiB;
# environ is bounded by ARG_MAX-ish limits but a hostile process can make it large.
_MAX_SMALL_FILE_BYTES = 64 * 1024
_MAX_ENVIRON_BYTES = 4 * 1024 * 1024

# /proc/<pid>/stat: the fields after "(comm)" start at field 3 (state); flags is field 9,
# starttime field 22 (proc(5)).
_STAT_FIRST_FIELD_AFTER_COMM = 3
_STAT_FLAGS_FIELD = 9
_STAT_STARTTIME_FIELD = 22
# PF_KTHREAD in include/linux/sched.h: the task is a kernel thread. No GPU process is one; a
# kernel thread's PID in an NVML process list means the PID is from another namespace.
PF_KTHREAD = 0x00200000
_STARTTIME_AT = _STAT_STARTTIME_FIELD - _STAT_FIRST_FIELD_AFTER_COMM  # index after the split
_FLAGS_AT = _STAT_FLAGS_FIELD - _STAT_FIRST_FIELD_AFTER_COMM


def _pid_dir(proc_root: str | os.PathLike[str], pid: int) -> Path | None:
    # bool is an int; a PID of True is a bug in the caller, not PID 1.
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    return Path(proc_root) / str(pid)


def _read(path: Path, limit: int) -> bytes | None:
    """Read at most ``limit`` bytes of ``path``; None when the process or file is gone."""
    try:
        with path.open("rb") as f:
            return f.read(limit)
    except (FileNotFoundError, ProcessLookupError):
        # The process exited (ENOENT), or is a zombie being reaped (ESRCH).
        return None
    except PermissionError:
        _logger.debug("no permission to read %s", path)
        return None
    except OSError as e:
        _logger.debug("cannot read %s: %s", path, e)
        return None


def read_cgroup(proc_root: str | os.PathLike[str], pid: int) -> list[str]:
    """The cgroup paths of ``pid``, from ``/proc/<pid>/cgroup``, in file order, without repeats.

    Each line is ``hierarchy-ID:controllers:path``: cgroup v1 has one line per hierarchy
    (``4:memory:/kubepods/...``), cgroup v2 a single ``0::/...`` line, hybrid systems both.
    Only the paths are returned; the path itself may contain ``:`` and is kept whole.
    ``[]`` when the process is gone or the file is unreadable.
    """
    d = _pid_dir(proc_root, pid)
    if d is None:
        return []
    raw = _read(d / "cgroup", _MAX_SMALL_FILE_BYTES)
    if raw is None:
        return []
    paths: list[str] = []
    seen: set[str] = set()
    for line in raw.decode("utf-8", errors="replace").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2]
        if path and path not in seen:
            seen.add(path)
            paths.append(path)
    return paths


def read_uid(proc_root: str | os.PathLike[str], pid: int) -> int | None:
    """The real UID of ``pid`` (first number of the ``Uid:`` line of ``status``), or None."""
    d = _pid_dir(proc_root, pid)
    if d is None:
        return None
    raw = _read(d / "status", _MAX_SMALL_FILE_BYTES)
    if raw is None:
        return None
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if line.startswith("Uid:"):
            fields = line[len("Uid:") :].split()
            if fields and fields[0].isdigit():
                return int(fields[0])
            return None
    return None


class ProcStat(NamedTuple):
    """What attribution needs from ``/proc/<pid>/stat``."""

    start_time_ticks: int  # field 22: start time in clock ticks since boot
    flags: int  # field 9: the kernel's PF_* flags

    @property
    def kernel_thread(self) -> bool:
        """Whether the task is a kernel thread (PF_KTHREAD): never a tenant's process."""
        return bool(self.flags & PF_KTHREAD)


def _stat_fields(proc_root: str | os.PathLike[str], pid: int) -> list[str] | None:
    """The fields of ``stat`` after ``(comm)`` (field 3 first), or None.

    ``comm`` (field 2) may contain spaces and parentheses, so the line is split at the
    *last* ``)``.
    """
    d = _pid_dir(proc_root, pid)
    if d is None:
        return None
    raw = _read(d / "stat", _MAX_SMALL_FILE_BYTES)
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace")
    close = text.rfind(")")
    if close < 0:
        return None
    return text[close + 1 :].split()


def read_start_time_ticks(proc_root: str | os.PathLike[str], pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (field 22 of ``stat``), or None.

    Together with the PID this identifies a process across PID reuse.
    """
    rest = _stat_fields(proc_root, pid)
    if rest is None or len(rest) <= _STARTTIME_AT or not rest[_STARTTIME_AT].isdigit():
        return None
    return int(rest[_STARTTIME_AT])


def read_stat(proc_root: str | os.PathLike[str], pid: int) -> ProcStat | None:
    """Start time and flags of ``pid`` from one read of ``stat``; None when the process is
    gone or either field does not parse. Called for every GPU process every sample."""
    rest = _stat_fields(proc_root, pid)
    if rest is None or len(rest) <= _STARTTIME_AT:
        return None
    start, flags = rest[_STARTTIME_AT], rest[_FLAGS_AT]
    if not (start.isdigit() and flags.isdigit()):
        return None
    return ProcStat(int(start), int(flags))


def read_environ(proc_root: str | os.PathLike[str], pid: int, keys: Iterable[str]) -> dict[str, str]:
    """The requested variables of ``pid``'s initial environment (NUL-separated ``environ``).

    Only ``keys`` are returned (e.g. ``SLURM_JOB_ID``, ``SLURM_JOB_ACCOUNT``); everything
    else in the environment (tokens, passwords) is never kept. ``{}`` when the process is
    gone or the agent may not read the file. The environment is the one the process started
    with and is chosen by its owner: treat it as a claim, not as proof.
    """
    wanted = set(keys)
    d = _pid_dir(proc_root, pid)
    if d is None or not wanted:
        return {}
    raw = _read(d / "environ", _MAX_ENVIRON_BYTES)
    if raw is None:
        return {}
    out: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if not sep:
            continue
        key = name.decode("utf-8", errors="replace")
        if key in wanted:
            out[key] = value.decode("utf-8", errors="replace")
    return out


# The inode number of the initial (host) PID namespace: PROC_PID_INIT_INO in the kernel's
# include/linux/proc_ns.h, fixed since Linux 3.8. A /proc whose PID 1 is in this namespace
# shows host PIDs, which are what NVML reports.
INIT_PID_NS_INODE = 0xEFFFFFFC


def host_pid_namespace_reason(proc_root: str | os.PathLike[str]) -> str | None:
    """None when ``proc_root`` shows the host's PIDs; otherwise why not (or why unknown).

    Reads the link ``<proc_root>/1/ns/pid`` (``pid:[<inode>]``) and compares the inode with
    the initial PID namespace's. Comparing the agent's own namespace with PID 1's is not
    enough: in a container without hostPID both are the container's and would agree.
    Reading the link needs ptrace access to PID 1 (root, or CAP_SYS_PTRACE).
    """
    link = Path(proc_root) / "1" / "ns" / "pid"
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return f"unknown: {link} does not exist"
    except PermissionError:
        return f"unknown: no permission to read {link} (needs root or CAP_SYS_PTRACE)"
    except OSError as e:
        return f"unknown: cannot read {link}: {e.strerror or e}"
    if not (target.startswith("pid:[") and target.endswith("]") and target[5:-1].isdigit()):
        return f"unknown: unexpected link target {target[:64]!r}"
    inode = int(target[5:-1])
    if inode != INIT_PID_NS_INODE:
        return f"not_host: {proc_root} is PID namespace {inode}, not the host's; NVML PIDs cannot be looked up there"
    return None
