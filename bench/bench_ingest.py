"""Collector ingest end to end against the physical limit of its most expensive step.

1. The limit: raw Ed25519 verifications per second of `cryptography` on one core, over the
   PAE of a real 8-GPU statement.
2. The system: a real collector process (gRPC on loopback, verification, schema and chain
   checks, SQLite with fsync'd commits, detector, metrics) fed by real agent streams, one
   per node, with pre-signed statements. Throughput is counted per second of the collector
   process's own CPU time (user + system), i.e. per core.

The ratio of the two is the figure of merit (issue goal: >= 0.7). The sustained rates a
100,000-GPU site needs (12,500 nodes at 60 s and at 10 s windows) are printed beside the
measured capacity.

    python bench/bench_ingest.py [--nodes N] [--windows W]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import psutil

from agent.pipeline import windows_from_records
from agent.signing import ChainSigner
from agent.sim.scenarios import demo_site
from agent.spool import Spool
from agent.stream import NodeStream, enroll
from agent.trace import parse_lines
from attestation.keys import Ed25519Signer
from collector.store.sqlite import SqliteStore


def raw_verify_rate(pae: bytes, n: int = 4000) -> float:
    signer = Ed25519Signer.generate()
    sig = signer.sign(pae)
    key = signer.public_key()
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    pub = load_der_public_key(key.spki_der)
    t0 = time.process_time()
    for _ in range(n):
        pub.verify(sig, pae)  # type: ignore[call-arg, union-attr]
    return n / (time.process_time() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--windows", type=int, default=60, help="statements per node")
    ns = ap.parse_args(argv)

    hours = ns.windows / 60 + 0.05
    records = demo_site(
        seed=2, hours=hours, sample_interval_s=20, training_nodes=ns.nodes, inference_nodes=0, slurm_nodes=0
    )
    lines = [json.dumps({"format": "gpuaudit-trace", "version": 1})] + [json.dumps(r) for r in records]
    per_node: dict[str, list] = {}
    for w in windows_from_records(parse_lines(lines)):
        per_node.setdefault(w.node_id, []).append(w)

    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "collector.db"
        store = SqliteStore(db)
        tokens = [store.create_token(3600, time.time_ns() // 1_000_000) for _ in per_node]
        store.close()
        spool = Spool(":memory:")
        signers = {node: Ed25519Signer.generate() for node in per_node}
        total = 0
        sample_pae = b""
        for node, ws in per_node.items():
            chain = ChainSigner(signers[node], spool)
            for w in ws[: ns.windows]:
                _, env = chain.sign(w)
                sample_pae = env.pae()
                total += 1
        verify_rate = raw_verify_rate(sample_pae)

        ready = Path(d) / "ready"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collector.cli",
                "-q",
                "serve",
                "--db",
                str(db),
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "",
                "--insecure",
                "--ready-file",
                str(ready),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            while not ready.exists():
                if proc.poll() is not None:
                    raise SystemExit("collector did not start")
                time.sleep(0.05)
            port = json.loads(ready.read_text())["port"]
            collector = psutil.Process(proc.pid)

            async def stream_all() -> tuple[float, float, int]:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                    for node, token in zip(per_node, tokens, strict=True):
                        await enroll(ch, node, signers[node], token)
                    streams = [NodeStream(ch, node, signers[node].key_id, spool, max_in_flight=64) for node in per_node]
                    c0 = collector.cpu_times()
                    t0 = time.perf_counter()
                    for s in streams:
                        s.close_when_drained()
                    await asyncio.gather(*(s.run() for s in streams))
                    wall = time.perf_counter() - t0
                    c1 = collector.cpu_times()
                    acked = sum(s.stats.acked for s in streams)
                return wall, (c1.user + c1.system) - (c0.user + c0.system), acked

            wall, cpu, acked = asyncio.run(stream_all())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        db_bytes = sum(p.stat().st_size for p in Path(d).glob("collector.db*"))

    per_core = acked / cpu
    result = {
        "machine": f"{os.cpu_count()} cores",
        "statements": acked,
        "nodes": len(per_node),
        "statement_bytes_signed_payload": len(sample_pae),
        "raw_ed25519_verify_per_s_one_core": round(verify_rate),
        "ingest_per_collector_cpu_s": round(per_core),
        "ratio_to_raw_verify": round(per_core / verify_rate, 3),
        "goal_ratio": 0.7,
        "ingest_per_wall_s": round(acked / wall),
        "needed_per_s_12500_nodes_60s_windows": round(12500 / 60),
        "needed_per_s_12500_nodes_10s_windows": round(12500 / 10),
        "store_bytes_per_statement": round(db_bytes / max(acked, 1)),
        "store_bytes_per_node_day_60s": round(db_bytes / max(acked, 1) * 1440),
    }
    print(json.dumps(result, indent=2))
    return 0 if acked == total else 1


if __name__ == "__main__":
    sys.exit(main())
