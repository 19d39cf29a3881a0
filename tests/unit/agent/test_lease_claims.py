"""Under a bare-metal lease, busy GPU time with no visible process is the lessee's
(agent.node.attribute): whole GPUs by utilisation, MIG instances by GPM SM activity."""

from __future__ import annotations

from pathlib import Path

from test_window_mig import T0, inst, mig_gpu, proc, shares, window_of  # type: ignore[import-not-found]

from agent.attribution import Attributor
from agent.node import attribute
from core.samples import GpuSample, NodeSample, ProcessSample
from core.tenantrules import Lease, TenantRules

PROC = Path(__file__).resolve().parents[2] / "fixtures" / "proc"
LEASED = TenantRules(leases=(Lease("t-lessee", start=T0 - 3600, end=T0 + 3600),))


def _attribute(g: GpuSample, rules: TenantRules = LEASED, t: float = T0) -> GpuSample:
    (out,) = attribute(NodeSample(t=t, gpus=(g,)), Attributor(PROC, rules), rules).gpus
    return out


def _whole(util: float | None, procs: tuple[ProcessSample, ...] = ()) -> GpuSample:
    return GpuSample(index=0, util_pct=util, mem_used_bytes=1, power_mw=1, energy_mj=1, procs=procs)


def test_a_busy_whole_gpu_with_no_visible_process_is_the_lessees() -> None:
    (p,) = _attribute(_whole(80.0)).procs
    assert (p.pid, p.attribution and p.attribution.tenant) == (0, "t-lessee")
    assert _attribute(_whole(0.0)).procs == (), "an idle GPU is claimed by nobody"
    assert _attribute(_whole(None)).procs == (), "utilisation not read: not claimed as busy"
    assert _attribute(_whole(80.0), t=T0 + 7200).procs == (), "the lease has ended"
    assert _attribute(_whole(80.0), TenantRules()).procs == (), "no lease"


def test_a_visible_process_is_not_doubled_by_a_lease_claim() -> None:
    g = _attribute(_whole(80.0, (proc(101, "t-pod", None),)))
    assert [p.pid for p in g.procs] == [101]


def test_busy_mig_instances_without_a_visible_process_are_the_lessees() -> None:
    instances = (
        inst(1, 3, sm=60.0),  # busy, nothing visible: claimed
        inst(2, 2, sm=70.0, pids=(101,)),  # busy with its own process: not claimed
        inst(3, 1, sm=0.0),  # idle
        inst(4, 1),  # no GPM reading: use unknown, not claimed
    )
    g = _attribute(mig_gpu((proc(101, "t-pod", 2),), instances))
    claims = [(p.pid, p.gpu_instance_id, p.compute_instance_id) for p in g.procs if p.pid == 0]
    assert claims == [(0, 1, 0)]
    assert all(p.attribution and p.attribution.tenant == "t-lessee" for p in g.procs if p.pid == 0)


def test_the_lessees_claim_gets_its_instances_slices_in_the_window() -> None:
    instances = (inst(1, 3, sm=60.0), inst(2, 2, sm=70.0, pids=(101,)))
    g = window_of(*(_attribute(mig_gpu((proc(101, "t-pod", 2),), instances)) for _ in range(3)))
    assert g.split_method == "mig_slices"
    # 3 of 7 slices for the lessee's instance (428.6 permille), 2 of 7 for the pod's (285.7),
    # in whole permille as the window apportions them, never more than 1000 together.
    got = {t: permille for t, (permille, _) in shares(g).items()}
    assert got == {"t-lessee": 428, "t-pod": 286}, shares(g)
