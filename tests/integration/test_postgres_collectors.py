"""Two real collector processes on one PostgreSQL database.

Agents stream half the nodes to each collector, one node switches collectors mid-run (and
resends its last statements to the new one), and one node streams its whole chain to both
at once. Then: every statement acknowledged is stored exactly once, the log's leaves are
0..n-1 with each statement once, every signed checkpoint is a prefix of that one log, and
exactly one collector ran detection, finding the opaque training run once.

Skips when no PostgreSQL server is reachable (GPUAUDIT_TEST_POSTGRES_URL overrides
postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest

from agent.stream import enroll
from attestation import dsse
from attestation.keys import Ed25519Signer
from attestation.merkle import MerkleTree
from attestation.statement import Chain, UsageWindow, statement_bytes
from attestation.v1 import collector_pb2 as pb
from attestation.v1 import collector_pb2_grpc as pb_grpc
from attestation.wire import envelope_to_proto
from core.pipeline import windows_from_records
from core.sim.scenarios import DEMO_OPAQUE_TENANT, demo_site, demo_tenants_toml
from core.trace import parse_lines

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'gpuaudit[postgres]')")

Runner = Callable[[Any], Any]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pg_url() -> Iterator[str]:
    server = os.environ.get("GPUAUDIT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        psycopg.connect(server, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL server reachable at {server} (set GPUAUDIT_TEST_POSTGRES_URL): {exc}")
    schema = f"gpuaudit_it_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield server + ("&" if "?" in server else "?") + f"options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _start(url: str, workdir: Path, tenants: Path, name: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    workdir.mkdir()
    ready, log = workdir / "ready", workdir / "stderr.log"
    # Collectors sharing a store sign one log: the same origin (collector_id) and log key
    # (docs/operator-guide.md, db_url); collector/log.py Log.check_identity refuses otherwise.
    env = {
        **os.environ,
        "GPUAUDIT_COLLECTOR_ID": "site-1",
        "GPUAUDIT_LOG_KEY": str(workdir.parent / "log-key.pem"),
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "serve", "--db", url, "--listen", "127.0.0.1:0"]
        + ["--metrics-listen", "", "--insecure", "--tenants", str(tenants), "--ready-file", str(ready)],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"collector {name} did not start:\n{log.read_text()}")
        time.sleep(0.05)
    time.sleep(0.05)
    return proc, int(json.loads(ready.read_text())["port"]), log


def _site() -> dict[str, list[UsageWindow]]:
    records = demo_site(seed=3, hours=0.6, sample_interval_s=20, training_nodes=12, inference_nodes=4, slurm_nodes=4)
    lines = [json.dumps({"format": "gpuaudit-trace", "version": 1})] + [json.dumps(r) for r in records]
    per_node: dict[str, list[UsageWindow]] = {}
    for w in windows_from_records(parse_lines(lines)):
        per_node.setdefault(w.node_id, []).append(w)
    return per_node


def _chain(signer: Ed25519Signer, windows: list[UsageWindow]) -> list[dsse.Envelope]:
    out: list[dsse.Envelope] = []
    prev = None
    for seq, w in enumerate(sorted(windows, key=lambda w: w.start_ms)):
        w = msgspec.structs.replace(w, chain=Chain(signer.key_id, seq, prev))
        env = dsse.sign(statement_bytes(w), signer)
        out.append(env)
        prev = env.digest()
    return out


class _Stream:
    """One agent stream: Hello, Resume, then one envelope at a time, each answered."""

    def __init__(self, ch: grpc.aio.Channel, node: str, key_id: str) -> None:
        self._call = pb_grpc.CollectorStub(ch).Stream()
        self._hello = pb.StreamRequest(hello=pb.Hello(node_id=node, key_id=key_id))
        self.replies: list[tuple[str, Any]] = []

    async def open(self) -> _Stream:
        await self._call.write(self._hello)
        await self._call.read()  # Resume
        return self

    async def send(self, env: dsse.Envelope) -> None:
        await self._call.write(pb.StreamRequest(envelope=envelope_to_proto(env)))
        r = await self._call.read()
        self.replies.append(("ack", r.ack.seq) if r.HasField("ack") else ("reject", r.reject.reason))

    async def close(self) -> None:
        await self._call.done_writing()


def test_two_collectors_on_one_database_lose_nothing_and_detect_once(
    tmp_path: Path, pg_url: str, run_async: Runner
) -> None:
    from collector.store.postgres import PostgresStore

    tenants = tmp_path / "tenants.toml"
    tenants.write_text(demo_tenants_toml())
    store = PostgresStore(pg_url)
    site = _site()
    nodes = sorted(site)
    tokens = [store.create_token(600, time.time_ns() // 1_000_000) for _ in nodes]
    procs = []
    try:
        a, port_a, log_a = _start(pg_url, tmp_path / "a", tenants, "collector-a")
        procs.append(a)
        b, port_b, log_b = _start(pg_url, tmp_path / "b", tenants, "collector-b")
        procs.append(b)
        addr_a, addr_b = f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"
        signers = {n: Ed25519Signer.generate() for n in nodes}
        chains = {n: _chain(signers[n], site[n]) for n in nodes}
        switcher, racer = nodes[0], nodes[1]

        rounds = max(len(c) for c in chains.values())
        barrier = asyncio.Barrier(len(nodes))

        async def node_run(i: int, node: str, ch_a: grpc.aio.Channel, ch_b: grpc.aio.Channel) -> list[tuple[str, Any]]:
            # Windows go out round by round (window k of every node before window k + 1), as
            # in real time, so the detector following the merged log sees them in time order.
            home = ch_a if i % 2 == 0 else ch_b
            await enroll(home, node, signers[node], tokens[i])
            key_id, envs = signers[node].key_id, chains[node]
            a = await _Stream(ch_a, node, key_id).open()
            b = await _Stream(ch_b, node, key_id).open()
            half = len(envs) // 2
            for k in range(rounds):
                if k < len(envs):
                    if node == switcher:  # first half to A; then the rest to B, resending 3 first
                        if k == half:
                            for env in envs[half - 3 : half]:
                                await b.send(env)
                        await (a if k < half else b).send(envs[k])
                    elif node == racer:  # its whole chain to both collectors at once
                        await asyncio.gather(a.send(envs[k]), b.send(envs[k]))
                    else:
                        await (a if home is ch_a else b).send(envs[k])
                await barrier.wait()
            await a.close()
            await b.close()
            return a.replies + b.replies

        async def scenario() -> list[list[tuple[str, Any]]]:
            async with grpc.aio.insecure_channel(addr_a) as ch_a, grpc.aio.insecure_channel(addr_b) as ch_b:
                return list(await asyncio.gather(*(node_run(i, n, ch_a, ch_b) for i, n in enumerate(nodes))))

        replies = run_async(scenario())
        rejects = [(n, r) for n, rs in zip(nodes, replies, strict=True) for r in rs if r[0] != "ack"]
        assert rejects == [], f"no statement may be refused: {rejects[:5]}"

        # Zero loss, no duplicates: every signed statement stored exactly once.
        total = sum(len(c) for c in chains.values())
        assert store.statement_count() == total
        for n in nodes:
            assert store.next_seq(signers[n].key_id) == len(chains[n]), n
            stored = [s.digest for s in store.iter_statements(signers[n].key_id)]
            assert stored == [e.digest() for e in chains[n]], f"node {n}: stored chain differs from the signed one"

        # The log: leaves 0..n-1, each statement once, hashes of what was signed.
        leaves = store.log_leaves()
        assert [lf.index for lf in leaves] == list(range(total)), "leaf indices must have no gap and no repeat"
        assert len({(lf.key_id, lf.seq) for lf in leaves}) == total

        # Detection: exactly one collector ran it, and it found the opaque run once.
        # The detecting collector follows the log asynchronously: wait until it caught up.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(json.loads(f.json_text)["nodes"] == 12 for f in store.findings()):
                break
            time.sleep(0.5)
        findings = [json.loads(f.json_text) for f in store.findings()]
        assert [f["tenant"] for f in findings] == [DEMO_OPAQUE_TENANT], (
            f"{findings}\n{log_a.read_text()[-3000:]}\n{log_b.read_text()[-3000:]}"
        )
        assert findings[0]["gpus"] == 96 and findings[0]["nodes"] == 12, "the leader saw nodes from both collectors"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    logs = [log_a.read_text(), log_b.read_text()]
    leaders = [i for i, text in enumerate(logs) if "this collector runs detection" in text]
    assert len(leaders) == 1, f"exactly one collector must detect; logs:\n{logs[0][-2000:]}\n{logs[1][-2000:]}"

    # Checkpoints: each collector signed some; every one is a prefix of the one log.
    tree = MerkleTree()
    for lf in store.log_leaves():
        tree.append(lf.leaf_hash)
    with psycopg.connect(pg_url) as conn:
        checkpoints = conn.execute("SELECT tree_size, root_hash FROM checkpoints ORDER BY id").fetchall()
    assert checkpoints, "the collectors sign checkpoints"
    for size, root in checkpoints:
        assert tree.root(size) == bytes(root), f"checkpoint at size {size} is not a prefix of the log"
    store.close()
