"""Agent overhead: CPU and memory of sampling 8 GPUs at 1 Hz (issue goal: < 1% of a core, < 80 MB RSS).

Runs the agent's real per-sample path — source, attribution, windowing, signing, spool —
on a simulated 8-GPU node (the fake source), as fast as it goes, and reports the CPU time
one sample costs. At 1 Hz the agent's share of a core is that cost divided by one second.
Network time is not included (the stream sends one ~7 KB message a minute).

    python bench/bench_agent.py [--seconds N] [--source sim|fake-nvml]

``--source fake-nvml`` runs the real NvmlSource (identity, health, Xid drain, processes,
accounting, GPM) over the fake 8-GPU H100 NVML of tests/unit/agent/test_nvml_source.py, with
/proc from tests/fixtures: the agent's own cost per NVML sample, without a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.attribution import Attributor
from agent.node import attribute
from agent.reconcile import Reconciler
from agent.signing import ChainSigner
from agent.sources.sim import SimulatedSource
from agent.spool import Spool
from attestation.keys import Ed25519Signer
from core.sim.scenarios import demo_site
from core.tenantrules import TenantRules
from core.trace import write_trace
from core.window import WindowAggregator

ROOT = Path(__file__).resolve().parents[1]


def fake_nvml_source(clock: Any) -> Any:
    """NvmlSource over the test suite's fake NVML: 8 H100s, two processes on each."""
    from agent.sources.nvml import NvmlSource

    spec = importlib.util.spec_from_file_location("fake_nvml", ROOT / "tests/unit/agent/test_nvml_source.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    gpus = []
    for i in range(8):
        g = mod._h100(i, procs=[mod.FakeProcessInfo(4242, 40 * 2**30), mod.FakeProcessInfo(9191, 2 * 2**30)])
        g.accounted = [mod.FakeAccounted(4242, 40 * 2**30, running=True)]
        gpus.append(g)
    fake = mod.FakeNvml(gpus)
    fake.calls = _Discard()  # the fake's call log would grow without bound
    return NvmlSource(fake, proc_root=ROOT / "tests/fixtures/proc", clock=clock)


class _Discard(list[Any]):
    def append(self, item: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=3600, help="simulated seconds of 1 Hz sampling (default 3600)")
    ap.add_argument("--source", choices=("sim", "fake-nvml"), default="sim", help="what to sample (default sim)")
    ns = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "node.jsonl"
        write_trace(
            trace, demo_site(seed=1, hours=0.5, sample_interval_s=1, training_nodes=1, inference_nodes=0, slurm_nodes=0)
        )
        clock_t = [1_800_000_000.0]
        source: Any
        if ns.source == "fake-nvml":
            source = fake_nvml_source(lambda: clock_t[0])
            proc_root: Path | str = ROOT / "tests/fixtures/proc"
        else:
            source = SimulatedSource(trace, clock=lambda: clock_t[0])
            proc_root = "/proc"
        rules = TenantRules()
        attributor = Attributor(proc_root, rules)
        reconciler = Reconciler(source.devices(), proc_root=proc_root)
        agg = WindowAggregator(
            "bench-node", "boot", "bench", source.devices(), window_s=60, bucket_s=10, sample_interval_s=1.0
        )
        spool = Spool(Path(d) / "spool.db")
        chain = ChainSigner(Ed25519Signer.generate(), spool)
        signed = 0
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        for _ in range(ns.seconds):
            clock_t[0] += 1.0
            s = reconciler.apply(attribute(source.sample(), attributor, rules))
            for w in agg.add(s):
                chain.sign(w)
                spool.ack(chain.signer.key_id, chain.next_seq - 1)  # as if acknowledged at once
                signed += 1
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_sample_ms = cpu / ns.seconds * 1000
    result = {
        "source": ns.source,
        "samples": ns.seconds,
        "gpus": 8,
        "statements_signed": signed,
        "cpu_ms_per_sample": round(per_sample_ms, 3),
        "core_fraction_at_1hz": round(per_sample_ms / 1000, 5),
        "goal_core_fraction": 0.01,
        "max_rss_mb": round(rss_mb, 1),
        "goal_rss_mb": 80,
        "wall_s": round(wall, 2),
    }
    print(json.dumps(result, indent=2))
    ok = result["core_fraction_at_1hz"] < 0.01 and rss_mb < 80
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
