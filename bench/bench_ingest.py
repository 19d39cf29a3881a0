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

    python bench/bench_ingest.py [--nodes N] [--windows W] [--store postgresql://...]
    python bench/bench_ingest.py --rate 208 --duration 60     # sustained: statements/s offered
    python bench/bench_ingest.py --rate 1250 --collectors 2 --store postgresql://...   # scaled out

Sustained mode offers statements at a fixed rate (12,500 nodes x 8 GPUs = 100,000 GPUs make
208/s with 60 s windows and 1,250/s with 10 s windows), spread round-robin over --nodes
streams by a light client (LeanStream: pre-serialised requests, so that the client does
not take the CPU the collector needs on a small machine), and samples the backlog
(offered - acknowledged) every second: a backlog that
keeps growing means the collector cannot keep up. The per-statement work is the same
whichever node sends it; what this does not reproduce is 12,500 concurrent TCP streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import msgspec
import psutil

from agent.signing import ChainSigner
from agent.spool import Spool
from agent.stream import NodeStream, enroll
from attestation.keys import Ed25519Signer
from attestation.v1 import collector_pb2 as pb
from collector.store.sqlite import SqliteStore
from core.pipeline import windows_from_records
from core.sim.scenarios import demo_site
from core.trace import parse_lines


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


def floor_per_statement_s(payload: bytes, pae: bytes, n: int = 2000) -> dict[str, float]:
    """CPU seconds per statement of the steps no collector can skip, one core: the
    signature check, decoding the JSON it must then read (msgspec, untyped), and the two
    SHA-256 digests (chain digest and log leaf). Their sum bounds the ratio from above."""
    import hashlib

    signer = Ed25519Signer.generate()
    sig = signer.sign(pae)
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    pub = load_der_public_key(signer.public_key().spki_der)

    def per(fn: Any) -> float:
        t0 = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - t0) / n

    verify = per(lambda: pub.verify(sig, pae))  # type: ignore[call-arg, union-attr]
    decode = per(lambda: msgspec.json.decode(payload))  # the fastest JSON decoder at hand
    digests = per(lambda: (hashlib.sha256(pae).digest(), hashlib.sha256(b"\x00" + pae).digest()))
    return {"verify": verify, "json_decode": decode, "digests": digests}


class _Collector:
    """One collector process under test (bench/collector_gc_watch.py runs collector.cli)."""

    def __init__(self, workdir: Path, index: int, db: str) -> None:
        self._ready = workdir / f"ready-{index}"
        self._gc_out = workdir / f"gc-{index}.json"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("collector_gc_watch.py")),
                "-q",
                "serve",
                "--db",
                db,
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "",
                "--insecure",
                "--ready-file",
                str(self._ready),
            ],
            stdout=subprocess.DEVNULL,
            # One log key for all collectors (they sign one log), kept in the bench's own
            # directory: with a PostgreSQL URL it would default to the working directory.
            env={
                **os.environ,
                "GPUAUDIT_BENCH_GC_OUT": str(self._gc_out),
                "GPUAUDIT_LOG_KEY": str(workdir / "log.pem"),
            },
        )
        self.port = 0

    def wait_ready(self) -> None:
        while not self._ready.exists():
            if self.proc.poll() is not None:
                raise SystemExit("collector did not start")
            time.sleep(0.05)
        self.port = json.loads(self._ready.read_text())["port"]
        self._ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        t = self._ps.cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        return int(self._ps.memory_info().rss)

    def gc_totals(self) -> dict[str, Any]:
        """The collector's garbage-collection totals so far (collector_gc_watch.py)."""
        before = self._gc_out.stat().st_mtime_ns if self._gc_out.exists() else 0
        self.proc.send_signal(signal.SIGUSR1)
        for _ in range(200):
            if self._gc_out.exists() and self._gc_out.stat().st_mtime_ns != before:
                break
            time.sleep(0.01)
        return json.loads(self._gc_out.read_text())  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class LeanStream:
    """Sustained mode's client for one node: Hello, then pre-serialised envelopes as they are
    offered; counts acknowledgements. The burst mode runs the agent's own NodeStream; here the
    client must stay light, or on a small machine it would limit the rate the collector is
    offered (the agent's spool bookkeeping costs more per statement than sending it)."""

    def __init__(self, ch: grpc.aio.Channel, node_id: str, key_id: str, blobs: list[tuple[int, bytes]]) -> None:
        self._call_factory = ch.stream_stream(
            "/gpuaudit.v1.Collector/Stream",
            request_serializer=None,  # requests go as pre-serialised bytes
            response_deserializer=pb.StreamResponse.FromString,
        )
        self._hello = pb.StreamRequest(hello=pb.Hello(node_id=node_id, key_id=key_id)).SerializeToString()
        self._requests = [
            pb.StreamRequest(envelope=pb.Envelope.FromString(blob)).SerializeToString() for _, blob in blobs
        ]
        self._next = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.acked = 0

    def offer(self) -> bool:
        """Queue this node's next statement; False when it has none left."""
        if self._next >= len(self._requests):
            return False
        self._queue.put_nowait(self._requests[self._next])
        self._next += 1
        return True

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def run(self) -> None:
        call = self._call_factory()
        await call.write(self._hello)
        first = await call.read()
        if first is grpc.aio.EOF or not first.HasField("resume") or first.resume.next_seq != 0:
            raise SystemExit(f"unexpected first answer {first!r}")

        async def receive() -> None:
            while (resp := await call.read()) is not grpc.aio.EOF:
                if not resp.HasField("ack"):
                    raise SystemExit(f"statement refused: {resp}")
                self.acked += 1

        reader = asyncio.create_task(receive())
        while (req := await self._queue.get()) is not None:
            await call.write(req)
        await call.done_writing()
        await reader


def grpc_floor_per_statement_s(requests: list[bytes], streams: int = 50) -> float:
    """CPU seconds per statement of a grpc.aio server that only reads each envelope and writes
    its Ack (bench/grpc_floor_server.py): the transport's share of any Python collector."""
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("grpc_floor_server.py"))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        proc = psutil.Process(server.pid)

        async def feed() -> tuple[float, int]:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                method = ch.stream_stream(
                    "/gpuaudit.v1.Collector/Stream",
                    request_serializer=None,
                    response_deserializer=pb.StreamResponse.FromString,
                )

                async def one(share: list[bytes]) -> int:
                    call = method()
                    acks = 0

                    async def receive() -> None:
                        nonlocal acks
                        while await call.read() is not grpc.aio.EOF:
                            acks += 1

                    reader = asyncio.create_task(receive())
                    for req in share:
                        await call.write(req)
                    await call.done_writing()
                    await reader
                    return acks

                c0 = proc.cpu_times()
                acked = sum(await asyncio.gather(*(one(requests[i::streams]) for i in range(streams))))
                c1 = proc.cpu_times()
                return (c1.user + c1.system) - (c0.user + c0.system), acked

        cpu, acked = asyncio.run(feed())
        assert acked == len(requests), (acked, len(requests))
        return cpu / acked
    finally:
        server.kill()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--windows", type=int, default=60, help="statements per node")
    ap.add_argument(
        "--store",
        help="postgresql:// URL of an EMPTY database or schema (?options=-csearch_path%%3DNAME) "
        "instead of a temporary SQLite file",
    )
    ap.add_argument("--rate", type=float, help="sustained mode: statements offered per second")
    ap.add_argument("--duration", type=float, default=60.0, help="sustained mode: seconds (default 60)")
    ap.add_argument(
        "--collectors",
        type=int,
        default=1,
        help="collector processes sharing the store (PostgreSQL only); nodes are spread over them",
    )
    ns = ap.parse_args(argv)
    if ns.collectors > 1 and not ns.store:
        ap.error("--collectors > 1 needs a shared --store postgresql://...")
    if ns.rate:
        ns.windows = max(ns.windows, int(ns.rate * ns.duration / ns.nodes) + 2)

    hours = ns.windows / 60 + 0.05
    records = demo_site(
        seed=2, hours=hours, sample_interval_s=20, training_nodes=ns.nodes, inference_nodes=0, slurm_nodes=0
    )
    lines = [json.dumps({"format": "gpuaudit-trace", "version": 1})] + [json.dumps(r) for r in records]
    per_node: dict[str, list[Any]] = {}
    for w in windows_from_records(parse_lines(lines)):
        per_node.setdefault(w.node_id, []).append(w)

    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "collector.db"
        store: Any = SqliteStore(db)
        if ns.store:
            from collector.store.postgres import PostgresStore

            store.close()
            store = PostgresStore(ns.store)
        tokens = [store.create_token(3600, time.time_ns() // 1_000_000) for _ in per_node]
        store.close()
        spool = Spool(":memory:")
        staging = Spool(":memory:") if ns.rate else spool
        signers = {node: Ed25519Signer.generate() for node in per_node}
        total = 0
        sample_pae = b""
        sample_payload = b""
        for node, ws in per_node.items():
            chain = ChainSigner(signers[node], staging)
            for w in ws[: ns.windows]:
                _, env = chain.sign(w)
                sample_pae = env.pae()
                sample_payload = env.payload
                total += 1
        verify_rate = raw_verify_rate(sample_pae)
        floor = floor_per_statement_s(sample_payload, sample_pae)
        sample_request = pb.StreamRequest(
            envelope=pb.Envelope.FromString(staging.pending(signers[node].key_id, 0, 1)[0][1])
        )
        floor["grpc_read_and_ack"] = grpc_floor_per_statement_s([sample_request.SerializeToString()] * 3000)

        collectors = [_Collector(Path(d), i, ns.store or str(db)) for i in range(ns.collectors)]
        try:
            for c in collectors:
                c.wait_ready()

            backlog: list[int] = []
            gc_stats: dict[str, Any] = {}
            client_cpu = [0.0]
            rss = [0, 0]
            rss_every_10s: list[float] = []
            offered = [0]

            async def offer(streams: list[LeanStream], t0: float) -> None:
                """Hand pre-signed statements to the streams at ns.rate per second, round-robin."""
                i = 0
                next_sample = t0 + 1.0
                while time.perf_counter() - t0 < ns.duration:
                    due = int((time.perf_counter() - t0) * ns.rate)
                    while offered[0] < due:
                        if streams[i % len(streams)].offer():
                            offered[0] += 1
                        i += 1
                    if time.perf_counter() >= next_sample:
                        backlog.append(offered[0] - sum(x.acked for x in streams))
                        if len(backlog) % 10 == 0:
                            rss_every_10s.append(round(sum(c.rss() for c in collectors) / 2**20, 1))
                        next_sample += 1.0
                    await asyncio.sleep(0.01)
                for x in streams:
                    x.close()

            async def stream_all() -> tuple[float, float, int]:
                async with contextlib.AsyncExitStack() as stack:
                    channels = [
                        await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{c.port}"))
                        for c in collectors
                    ]
                    # Node i speaks to collector i mod N (they share the store).
                    chan = {node: channels[i % len(channels)] for i, node in enumerate(per_node)}
                    for node, token in zip(per_node, tokens, strict=True):
                        await enroll(chan[node], node, signers[node], token)
                    streams = [
                        NodeStream(chan[node], node, signers[node].key_id, spool, max_in_flight=64) for node in per_node
                    ]
                    lean = [
                        LeanStream(
                            chan[node], node, signers[node].key_id, staging.pending(signers[node].key_id, 0, 10**6)
                        )
                        for node in per_node
                    ]
                    g0 = [c.gc_totals() for c in collectors]
                    rss[0] = sum(c.rss() for c in collectors)
                    c0 = sum(c.cpu_s() for c in collectors)
                    own0 = psutil.Process().cpu_times()
                    t0 = time.perf_counter()
                    if ns.rate:
                        tasks = [asyncio.create_task(x.run()) for x in lean]
                        await offer(lean, t0)
                        await asyncio.gather(*tasks)
                        acked = sum(x.acked for x in lean)
                    else:
                        for s in streams:
                            s.close_when_drained()
                        await asyncio.gather(*(s.run() for s in streams))
                        acked = sum(x.stats.acked for x in streams)
                    wall = time.perf_counter() - t0
                    c1 = sum(c.cpu_s() for c in collectors)
                    rss[1] = sum(c.rss() for c in collectors)
                    own1 = psutil.Process().cpu_times()
                    client_cpu[0] = (own1.user + own1.system) - (own0.user + own0.system)
                    g1 = [c.gc_totals() for c in collectors]
                    gc_stats["cpu_s"] = sum(b["gc_cpu_s"] - a["gc_cpu_s"] for a, b in zip(g0, g1, strict=True))
                    gc_stats["collections"] = [
                        sum(b["collections"][g] - a["collections"][g] for a, b in zip(g0, g1, strict=True))
                        for g in range(3)
                    ]
                return wall, c1 - c0, acked

            wall, cpu, acked = asyncio.run(stream_all())
        finally:
            for c in collectors:
                c.stop()
        db_bytes = sum(p.stat().st_size for p in Path(d).glob("collector.db*"))
        if ns.store:
            import psycopg

            with psycopg.connect(ns.store) as conn:
                row = conn.execute(
                    "SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = current_schema()"
                ).fetchone()
                db_bytes = int(row[0]) if row and row[0] else 0

    # A run too short for the process clock (10 ms ticks) measures no CPU: the rate is then
    # unknown, not infinite.
    per_core = acked / cpu if cpu > 0 else None
    result = {
        "machine": f"{os.cpu_count()} cores",
        "store": "postgresql" if ns.store else "sqlite",
        "collectors": ns.collectors,
        "statements": acked,
        "nodes": len(per_node),
        "statement_bytes_signed_payload": len(sample_pae),
        "raw_ed25519_verify_per_s_one_core": round(verify_rate),
        "ingest_per_collector_cpu_s": None if per_core is None else round(per_core),
        "ratio_to_raw_verify": None if per_core is None else round(per_core / verify_rate, 3),
        "goal_ratio": 0.7,
        # Verify + JSON decode + digests only: the most any collector that reads what it
        # verifies could reach, measured here, whatever else it does.
        "floor_us_per_statement": {k: round(v * 1e6, 1) for k, v in floor.items()},
        "ceiling_ratio_verify_decode_digest": round(
            floor["verify"] / (floor["verify"] + floor["json_decode"] + floor["digests"]), 3
        ),
        # ... and with the transport too: the most a Python gRPC collector could reach.
        "ceiling_ratio_with_grpc": round(floor["verify"] / sum(floor.values()), 3),
        "collector_cpu_us_per_statement": round(cpu / max(acked, 1) * 1e6),
        # Of which the cyclic garbage collector (bench/collector_gc_watch.py), and its runs per generation.
        "collector_gc_us_per_statement": round(gc_stats["cpu_s"] / max(acked, 1) * 1e6, 1),
        "collector_gc_collections": gc_stats["collections"],
        "ingest_per_wall_s": round(acked / wall),
        # Resident memory of the collector process(es) before and after the streams: what
        # grows with the statements taken (caches that fill once grow too in a short run).
        "collector_rss_mb_before_after": [round(rss[0] / 2**20, 1), round(rss[1] / 2**20, 1)],
        # The load generator's own share of a core (it runs on the same machine).
        "client_cpu_share_of_a_core": round(client_cpu[0] / wall, 2),
        "needed_per_s_12500_nodes_60s_windows": round(12500 / 60),
        "needed_per_s_12500_nodes_10s_windows": round(12500 / 10),
        "store_bytes_per_statement": round(db_bytes / max(acked, 1)),
        "store_bytes_per_node_day_60s": round(db_bytes / max(acked, 1) * 1440),
    }
    if ns.rate:
        half = backlog[len(backlog) // 2 :]
        growth = (half[-1] - half[0]) / max(len(half) - 1, 1) if len(half) > 1 else 0.0
        result.update(
            {
                "sustained_offered_per_s": ns.rate,
                "sustained_duration_s": ns.duration,
                "offered": offered[0],
                "backlog_per_s": backlog,
                "backlog_growth_per_s_second_half": round(growth, 1),
                "collector_rss_mb_every_10s": rss_every_10s,
                "keeps_up": growth <= 0.05 * ns.rate and (not backlog or backlog[-1] <= 2 * ns.rate),
            }
        )
        print(json.dumps(result, indent=2))
        return 0 if acked == offered[0] else 1
    print(json.dumps(result, indent=2))
    return 0 if acked == total else 1


if __name__ == "__main__":
    sys.exit(main())
