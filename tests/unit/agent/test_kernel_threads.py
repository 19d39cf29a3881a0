"""Kernel threads (PF_KTHREAD in /proc/<pid>/stat) are never attributed to a tenant.

No GPU process is a kernel thread, so a kernel thread's PID on a GPU means the driver gave a
PID from another namespace (HAMi-core #112). PID 88 of tests/fixtures/proc is
``kworker/3:1-events``, owned by uid 0, in the root cgroup.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.attribution import Attributor
from agent.sources import procfs
from attestation.statement import UNATTRIBUTED
from core.samples import Attribution
from core.tenantrules import Lease, TenantRules

PROC = Path(__file__).resolve().parents[2] / "fixtures" / "proc"
KWORKER = 88
T = 1_700_000_000.0


def test_read_stat_gives_start_time_and_the_kernel_thread_flag() -> None:
    k = procfs.read_stat(PROC, KWORKER)
    assert k is not None and k.kernel_thread and k.flags & procfs.PF_KTHREAD
    assert k.start_time_ticks == 1789
    p = procfs.read_stat(PROC, 7171)  # comm "my (weird) proc) x": fields counted after the last ")"
    assert p is not None and not p.kernel_thread and p.start_time_ticks == 445566
    assert procfs.read_stat(PROC, 31337) is None, "a process that exited is None, not a guess"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("77 (x) S 1 1 1 0 -1 notanumber 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0", "flags not a number"),
        ("77 (x) S 1 1 1 0 -1", "truncated before flags"),
        ("77 x S 1 1 1 0 -1 4194560", "no closing parenthesis"),
    ],
)
def test_read_stat_refuses_what_does_not_parse(tmp_path: Path, text: str, why: str) -> None:
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "stat").write_text(text)
    assert procfs.read_stat(tmp_path, 77) is None, why


def test_a_kernel_thread_is_unattributed_whatever_the_uid_rule_says() -> None:
    rules = TenantRules(uids={0: "root-tenant"})
    got = Attributor(PROC, rules).resolve(KWORKER, T)
    assert got == Attribution(UNATTRIBUTED, "process", f"pid:{KWORKER}"), (
        "uid 0 maps to root-tenant, but a kernel thread is no tenant's process"
    )
    assert Attributor(PROC, rules).resolve(8181, T) == Attribution(UNATTRIBUTED, "process", "pid:8181"), (
        "uid 33 has no rule"
    )


def test_a_kernel_thread_is_unattributed_even_under_a_lease() -> None:
    rules = TenantRules(leases=(Lease("t-kestrel"),))
    a = Attributor(PROC, rules)
    assert a.resolve(KWORKER, T).tenant == UNATTRIBUTED
    assert a.resolve(4242, T) == Attribution("t-kestrel", "lease", "lease:t-kestrel"), "other processes: the lease"
    assert a.resolve(31337, T).tenant == "t-kestrel", "a lease still covers processes the agent cannot see"
