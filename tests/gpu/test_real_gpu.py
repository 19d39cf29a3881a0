"""Validation on a real NVIDIA GPU: the agent against the real NVML and a real PyTorch job.

Runs only where NVML starts and PyTorch sees CUDA (``pytest -m gpu tests/gpu``); elsewhere
every test skips with the reason. It starts a PyTorch training loop in a child process,
samples the GPUs through ``NvmlSource`` while it trains and after it stops, windows and signs
the samples with the agent's own code, and checks what an auditor relies on:

- identity fields are read (or explicitly unavailable with a reason);
- the training process is attributed to the configured tenant through its real cgroup;
- the energy counter rises and matches the integral of power over time within 10%;
- utilization is high while training and drops after the job stops.

The figures are written to ``$GPUAUDIT_VALIDATION_OUT`` (JSON) when set, for
docs/validation.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from agent.attribution import Attributor, StaticPodResolver, parse_cgroup_path
from agent.node import attribute
from agent.signing import ChainSigner
from agent.sources import procfs
from agent.sources.base import SourceError
from agent.spool import Spool
from attestation import dsse
from attestation.keys import Ed25519Signer
from attestation.statement import UsageWindow, parse_statement
from core.tenantrules import Lease, TenantRules
from core.window import WindowAggregator

pytestmark = pytest.mark.gpu

TENANT = "t-gpu-validation"
WINDOW_S = 5
SAMPLE_S = 0.2
TRAIN_S = 30.0
IDLE_S = 12.0

TRAINER = textwrap.dedent(
    """
    import sys, time, torch
    torch.manual_seed(0)
    dev = torch.device("cuda:0")
    model = torch.nn.Sequential(*[torch.nn.Linear(8192, 8192) for _ in range(4)]).to(dev, torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(4096, 8192, device=dev, dtype=torch.bfloat16)
    print("ready", flush=True)
    end = time.time() + float(sys.argv[1])
    steps = 0
    while time.time() < end:
        loss = model(x).float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        if steps % 20 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    print("steps", steps, flush=True)
    """
)


def _nvml_source() -> Any:
    try:
        from agent.sources.nvml import NvmlSource

        return NvmlSource(proc_root="/proc")
    except SourceError as exc:
        pytest.skip(f"NVML cannot start here: {exc}")


def _rules_for(pid: int) -> tuple[TenantRules, Any, str]:
    """Tenant rules that name the child's real workload, whatever this machine's cgroup layout."""
    for path in procfs.read_cgroup("/proc", pid):
        ref = parse_cgroup_path(path)
        if ref is None:
            continue
        if ref.kind == "container" and ref.container_id:
            return TenantRules(containers={ref.container_id[:12]: TENANT}), None, "container"
        if ref.kind == "k8s_pod" and ref.pod_uid:
            return (
                TenantRules(namespaces={"validation": TENANT}),
                StaticPodResolver({ref.pod_uid: ("validation", "trainer")}),
                "k8s_pod",
            )
        if ref.kind in ("user", "slurm_job") and ref.uid is not None:
            return TenantRules(uids={ref.uid: TENANT}), None, ref.kind
    uid = procfs.read_uid("/proc", pid)
    if uid is not None:
        return TenantRules(uids={uid: TENANT}), None, "uid"
    return TenantRules(leases=(Lease(TENANT),)), None, "lease"


def test_agent_on_a_real_gpu_with_a_real_training_job(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="PyTorch is needed to run a real training job")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    source = _nvml_source()
    try:
        devices = source.devices()
        assert devices, "NVML started but reported no GPU"
        child = subprocess.Popen([sys.executable, "-c", TRAINER, str(TRAIN_S)], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", "the training child did not start"
        rules, pods, how = _rules_for(child.pid)
        attributor = Attributor("/proc", rules, pod_resolver=pods)
        agg = WindowAggregator(
            "gpu-validation", "boot", "test", devices, window_s=WINDOW_S, bucket_s=1, sample_interval_s=SAMPLE_S
        )
        signer = Ed25519Signer.generate()
        chain = ChainSigner(signer, Spool(":memory:"))
        windows: list[UsageWindow] = []
        power_integral_mj: dict[int, float] = {}
        t_end = time.time() + TRAIN_S + IDLE_S
        trained_until: float | None = None
        last: dict[int, tuple[float, int]] = {}
        while time.time() < t_end:
            s = source.sample()
            if trained_until is None and child.poll() is not None:
                trained_until = s.t
            for g in s.gpus:
                if g.power_mw is not None:
                    prev = last.get(g.index)
                    if prev is not None:
                        dt = s.t - prev[0]
                        power_integral_mj[g.index] = (
                            power_integral_mj.get(g.index, 0.0) + (prev[1] + g.power_mw) / 2 * dt
                        )
                    last[g.index] = (s.t, g.power_mw)
            for w in agg.add(attribute(s, attributor, rules)):
                _, env = chain.sign(w)
                windows.append(parse_statement(dsse.verify(env, signer.public_key())))
            time.sleep(SAMPLE_S)
        child.wait(timeout=60)
        steps_line = child.stdout.read().strip()
    finally:
        source.close()

    assert len(windows) >= (TRAIN_S + IDLE_S) / WINDOW_S - 2, f"only {len(windows)} windows signed"
    gpu0 = devices[0]
    # 1. identity
    assert gpu0.uuid.startswith("GPU-")
    for name in ("serial", "mem_total_bytes", "power_limit_mw"):
        assert getattr(gpu0, name) is not None or name in gpu0.unavailable, f"{name} neither read nor explained"
    # 2. attribution of the training process through its real cgroup
    training = [w for w in windows if trained_until is None or w.end_ms / 1000 <= trained_until]
    seen = {(wl.tenant, wl.kind) for w in training for g in w.gpus if g.index == 0 for wl in g.workloads}
    assert any(t == TENANT for t, _ in seen), f"training process not attributed to {TENANT} (rules by {how}): {seen}"
    # 3. energy counter rises and matches the integral of power within 10%
    g0 = [g for w in windows for g in w.gpus if g.index == 0]
    first, last_g = g0[0], g0[-1]
    assert first.energy_start_mj is not None and last_g.energy_end_mj is not None, first.unavailable
    counted_mj = last_g.energy_end_mj - first.energy_start_mj
    assert counted_mj > 0, "the energy counter did not rise during training"
    integral = power_integral_mj[0]
    ratio = counted_mj / integral
    assert 0.9 <= ratio <= 1.1, f"energy counter {counted_mj} mJ vs ∫power dt {integral:.0f} mJ (ratio {ratio:.3f})"
    # 4. utilization high while training, low after
    busy = [
        g.util_mean_permille
        for w in windows[1:-1]
        for g in w.gpus
        if g.index == 0 and w.end_ms / 1000 < (trained_until or 0) - 1
    ]
    idle = [
        g.util_mean_permille
        for w in windows
        for g in w.gpus
        if g.index == 0 and trained_until and w.start_ms / 1000 > trained_until + 1
    ]
    assert busy and min(u for u in busy if u is not None) >= 500, f"utilization while training: {busy}"
    assert idle and max(u for u in idle if u is not None) <= 100, f"utilization after the job stopped: {idle}"

    out = os.environ.get("GPUAUDIT_VALIDATION_OUT")
    if out:
        Path(out).write_text(
            json.dumps(
                {
                    "gpu": gpu0.model,
                    "uuid": gpu0.uuid,
                    "serial": gpu0.serial,
                    "unavailable_identity": gpu0.unavailable,
                    "attributed_by": how,
                    "workloads_seen": sorted(f"{t}/{k}" for t, k in seen),
                    "windows": len(windows),
                    "energy_counter_mj": counted_mj,
                    "power_integral_mj": round(integral),
                    "energy_ratio": round(ratio, 4),
                    "util_busy_permille": busy,
                    "util_idle_permille": idle,
                    "power_mean_mw_busy": [g.power_mean_mw for w in training for g in w.gpus if g.index == 0],
                    "unavailable_fields": sorted({k for g in g0 for k in g.unavailable}),
                    "trainer": steps_line,
                },
                indent=2,
            )
        )
