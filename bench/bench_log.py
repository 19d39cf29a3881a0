#!/usr/bin/env python3
"""The transparency log at scale: memory, sync and proof costs of the collector's ``Log``.

A 100,000-GPU site adds one leaf per node per window: 18 million leaves a day at 60 s
windows, 108 million at 10 s. The log must not hold them in memory. This fills a SQLite
store with ``--leaves`` log leaves (rows written directly, with placeholder statements:
the log reads only ``log_leaves``), then measures on one core:

- sync: leaves per second read into the tree (what a checkpoint period costs), and a
  restart's sync, which takes whole tiles by their stored roots;
- audit (``gpuaudit-collector log audit``): leaves per second recomputed and checked;
- memory: what the tree holds, by ``tracemalloc`` (Python allocations): a bounded part (the
  last, incomplete tile and a few cached tiles) and a part that grows with the log (tile
  roots and the subtrees above them), against a full in-memory ``MerkleTree`` plus a
  (key, seq) -> index dict of the same leaves, which is what the log held before;
- proofs: inclusion proofs for random leaves (each reads its tile back from the store and
  checks it) and consistency proofs from random older sizes, milliseconds each;
- leaf_index: one indexed store lookup;
- an export's inclusion proofs: every statement of ``--export-keys`` keys, taken in (key,
  seq) order, as a bundle lists them (each proof reads its tile back: a key's statements
  lie one per window among every other node's), and as ``collector.export`` takes them,
  in leaf order through a temporary file (each tile read once).

    .venv/bin/python bench/bench_log.py [--leaves 1000000] [--proofs 200]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attestation.keys import Ed25519Signer  # noqa: E402
from attestation.merkle import MerkleTree, verify_consistency, verify_inclusion  # noqa: E402
from collector.export import _Proofs  # noqa: E402
from collector.log import Log  # noqa: E402
from collector.store.sqlite import SqliteStore  # noqa: E402

NODES = 12_500
LEAVES_PER_DAY_60S = NODES * 1440


def _fill(path: Path, leaves: int) -> list[str]:
    """``leaves`` leaves of 12,500 node keys, round-robin, as ingest would have stored them."""
    with SqliteStore(path):
        pass  # creates and migrates the schema
    keys = ["sha256:" + hashlib.sha256(f"node-{n}".encode()).hexdigest() for n in range(NODES)]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA foreign_keys = OFF")  # node_keys rows are not needed to read leaves
    conn.execute("BEGIN")
    batch = 50_000
    for start in range(0, leaves, batch):
        rows = [(i, keys[i % NODES], i // NODES) for i in range(start, min(start + batch, leaves))]
        conn.executemany(
            "INSERT INTO statements (key_id, seq, node_id, start_ms, end_ms, digest, payload, payload_type, "
            "signatures, received_ms) VALUES (?, ?, 'n', 0, 0, '', x'', 't', '[]', 0)",
            [(k, s) for _, k, s in rows],
        )
        conn.executemany(
            "INSERT INTO log_leaves (leaf_index, key_id, seq, leaf_hash) VALUES (?, ?, ?, ?)",
            [(i, k, s, hashlib.sha256(i.to_bytes(8, "big")).digest()) for i, k, s in rows],
        )
    conn.execute("COMMIT")
    conn.close()
    return keys


def _full_tree_bytes_per_leaf(store: SqliteStore, n: int) -> float:
    """What the log held before it was tiled: every leaf and node hash, and a leaf index dict."""
    gc.collect()
    tracemalloc.start()
    tree = MerkleTree()
    index: dict[tuple[str, int], int] = {}
    for start in range(0, n, 10_000):
        for leaf in store.log_leaves(start, min(start + 10_000, n)):
            tree.append(leaf.leaf_hash)
            index[(leaf.key_id, leaf.seq)] = leaf.index
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del tree, index
    return held / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leaves", type=int, default=1_000_000)
    ap.add_argument("--proofs", type=int, default=200)
    ap.add_argument("--export-keys", type=int, default=50, help="keys whose statements the export measure proves")
    ap.add_argument("--compare-leaves", type=int, default=200_000, help="leaves of the untiled comparison")
    ns = ap.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.db"
        t0 = time.perf_counter()
        keys = _fill(path, ns.leaves)
        fill_s = time.perf_counter() - t0
        with SqliteStore(path) as store:
            log = Log(store, Ed25519Signer.generate(), "gpuaudit/bench")
            t0 = time.process_time()
            size = log.sync()  # reads every leaf (no tile roots stored yet) and stores the tile roots
            sync_cpu_s = time.process_time() - t0
            assert size == ns.leaves
            # The same sync again, from the leaves (stored tile roots hidden), under tracemalloc
            # (which slows it): memory, with the cache of tiles full.
            store.log_tile_roots = lambda *a: []  # type: ignore[method-assign]
            probe = Log(store, log.signer, "gpuaudit/bench")
            gc.collect()
            tracemalloc.start()
            probe.sync()
            held, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            del store.log_tile_roots
            # A restart: whole tiles are taken by the roots the first sync stored.
            t0 = time.process_time()
            restarted = Log(store, log.signer, "gpuaudit/bench")
            assert restarted.sync() == size
            restart_cpu_s = time.process_time() - t0
            signed = log.checkpoint(0)
            t0 = time.process_time()
            audit = log.audit()
            audit_cpu_s = time.process_time() - t0
            assert audit.ok and audit.tiles_checked == size >> 10
            root = signed.checkpoint.root

            def ms_each(fn: object, n: int) -> float:
                t = time.process_time()
                for _ in range(n):
                    fn()  # type: ignore[operator]
                return 1000 * (time.process_time() - t) / n

            def inclusion() -> None:
                i = rng.randrange(size)
                verify_inclusion(log.leaf_hash(i), i, size, log.inclusion_proof(i, size), root)

            def consistency() -> None:
                m = rng.randrange(1, size)
                verify_consistency(m, size, log.consistency_proof(m, size), log.root(m), root)

            def lookup() -> None:
                i = rng.randrange(size)
                assert log.leaf_index(keys[i % NODES], i // NODES) == i

            # An export of every statement of the first --export-keys keys, in (key, seq) order.
            wanted = [i for k in range(min(ns.export_keys, NODES)) for i in range(k, size, NODES)]
            cold = Log(store, log.signer, "gpuaudit/bench")
            cold.sync()
            t0 = time.process_time()
            by_key = [cold.inclusion_proof(i, size) for i in wanted]
            export_key_order_s = time.process_time() - t0
            cold = Log(store, log.signer, "gpuaudit/bench")
            cold.sync()
            t0 = time.process_time()
            proofs = _Proofs(cold, size, array("q", wanted), Path(tmp))
            by_leaf = [proofs.get(i) for i in wanted]
            proofs.close()
            export_leaf_order_s = time.process_time() - t0
            assert by_leaf == by_key
            del by_key, by_leaf
            inclusion_ms = ms_each(inclusion, ns.proofs)
            consistency_ms = ms_each(consistency, ns.proofs)
            lookup_ms = ms_each(lookup, ns.proofs)
            full = _full_tree_bytes_per_leaf(store, min(ns.compare_leaves, size))
        db_bytes = os.path.getsize(path)
    growing = probe._tree.memory_bytes()  # tile roots and the subtrees above them: grows with the log
    fixed = held - growing  # the tail tile and the cache of tiles read back: bounded
    per_leaf = growing / size
    out = {
        "machine": f"{os.cpu_count()} cores",
        "leaves": size,
        "fill_s": round(fill_s, 1),
        "tile_leaves": 1 << log._tree.tile_height,
        "sync_leaves_per_cpu_s": round(size / sync_cpu_s),
        "sync_cpu_s_per_60s_period_at_10s_windows": round(NODES * 6 * sync_cpu_s / size, 3),
        "restart_sync_cpu_s": round(restart_cpu_s, 3),
        "audit_leaves_per_cpu_s": round(size / audit_cpu_s),
        "tree_bytes_held": held,
        "tree_bytes_bounded_part": fixed,
        "tree_bytes_per_leaf_growing_part": round(per_leaf, 4),
        "sync_peak_bytes": peak,
        "untiled_bytes_per_leaf": round(full, 1),
        "tree_mb_after_a_year_100k_gpus_60s": round((fixed + per_leaf * 365 * LEAVES_PER_DAY_60S) / 1e6),
        "untiled_mb_per_day_100k_gpus_60s": round(full * LEAVES_PER_DAY_60S / 1e6),
        "inclusion_proof_ms": round(inclusion_ms, 2),
        "consistency_proof_ms": round(consistency_ms, 2),
        "leaf_index_lookup_ms": round(lookup_ms, 3),
        "export_proofs": len(wanted),
        "export_proofs_key_order_cpu_s": round(export_key_order_s, 2),
        "export_proofs_leaf_order_cpu_s": round(export_leaf_order_s, 2),
        "store_bytes": db_bytes,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
