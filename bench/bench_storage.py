#!/usr/bin/env python3
"""Storage sizing: bytes a node-day of statements takes in each store, before and after
retention, and what that means per 1,000 GPUs.

A node-day is one node's 1,440 statements (60 s windows) of 8 GPUs, built by the agent's own
windowing from the demo site's simulated telemetry (half the nodes in a training job, half
serving inference; 10 s buckets, as the agent's defaults) and signed by the agent's own chain
signer. They go through the collector's ``Ingestor`` (signature, schema and chain checks, the
store's batch write: statement rows, chain heads, log leaves) in batches of one event-time
minute, and the log signs a checkpoint every minute of event time, as a collector does with
``checkpoint_period_s = 60``. Then:

- SQLite: the file's size after a WAL checkpoint, and each table's and index's share
  (``dbstat``);
- PostgreSQL: ``pg_total_relation_size`` (heap, TOAST, indexes) of every table in the schema;

measured after ingest, after retention (``collector.retention.age_statements`` of every
statement: payloads dropped, hourly aggregates kept) with the space only freed for reuse
(SQLite free pages, PostgreSQL ``VACUUM``), and after compaction (SQLite ``VACUUM``,
PostgreSQL ``VACUUM FULL``), which is what an aged node-day costs in the steady state.

Checkpoints are a cost of the site, not of a node: 1,440 a day however many nodes sign.
They are reported apart (bytes per checkpoint) and left out of the per-node-day figures.

    .venv/bin/python bench/bench_storage.py [--nodes 4] [--hours 24] [--postgres URL]

``--postgres`` takes a database URL: the bench measures in a schema of its own, dropped at the
end (or, given ``?options=-csearch_path%3DNAME``, in that schema, which must be empty); without
it only SQLite is measured. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.signing import ChainSigner  # noqa: E402
from agent.spool import Spool  # noqa: E402
from attestation.dsse import Envelope  # noqa: E402
from attestation.keys import Ed25519Signer  # noqa: E402
from collector.ingest import Ingestor  # noqa: E402
from collector.log import Log  # noqa: E402
from collector.retention import age_statements  # noqa: E402
from collector.store.sqlite import SqliteStore  # noqa: E402
from core.pipeline import windows_from_records  # noqa: E402
from core.sim.scenarios import demo_site  # noqa: E402
from core.trace import parse_lines  # noqa: E402

GPUS_PER_NODE = 8
WINDOWS_PER_DAY = 1440
NODES_PER_1000_GPUS = 1000 // GPUS_PER_NODE
BATCH = 64  # statements per ingest batch, at most; one event-time minute otherwise


def signed_site(nodes: int, hours: float, seed: int = 3) -> tuple[dict[str, Ed25519Signer], list[list[Any]]]:
    """Every node's signed statements, grouped by event-time minute: (signers, minutes), each
    minute a list of (node id, key id, envelope)."""
    training = nodes - nodes // 2
    records = demo_site(
        seed=seed,
        hours=hours + 0.05,
        sample_interval_s=10,
        training_nodes=training,
        inference_nodes=nodes - training,
        slurm_nodes=0,
    )
    lines = [json.dumps({"format": "gpuaudit-trace", "version": 1})] + [json.dumps(r) for r in records]
    windows = int(hours * 60)
    by_node: dict[str, list[Any]] = {}
    for w in windows_from_records(parse_lines(lines)):
        by_node.setdefault(w.node_id, []).append(w)
    spool = Spool(":memory:")
    signers = {node: Ed25519Signer.generate() for node in by_node}
    minutes: list[list[Any]] = [[] for _ in range(windows)]
    for node, ws in by_node.items():
        chain = ChainSigner(signers[node], spool)
        for i, w in enumerate(ws[:windows]):
            _, env = chain.sign(w)
            minutes[i].append((node, signers[node].key_id, env))
    spool.close()
    return signers, [m for m in minutes if m]


def _ingest(store: Any, signers: dict[str, Ed25519Signer], minutes: list[list[Any]], log: Log) -> dict[str, int]:
    """Enroll every node, ingest minute by minute with a checkpoint after each; returns counts."""
    now = [time.time_ns() // 1_000_000]
    for node, signer in signers.items():
        token = store.create_token(3600, now[0])
        store.enroll(node, token, signer.public_key().spki_der, signer.assurance, now[0])
    ingestor = Ingestor(store, clock_ms=lambda: now[0])
    accepted = checkpoints = 0
    for minute in minutes:
        now[0] += 60_000
        items: list[tuple[str, Envelope]] = [(key_id, env) for _, key_id, env in minute]
        for start in range(0, len(items), BATCH):
            results = ingestor.ingest_batch(items[start : start + BATCH])
            refused = [r for r in results if not r.accepted]
            if refused:
                raise SystemExit(f"statements refused: {refused[:3]}")
            accepted += len(results)
        log.checkpoint(now[0])
        checkpoints += 1
    return {"statements": accepted, "checkpoints": checkpoints, "now_ms": now[0]}


# -- SQLite ------------------------------------------------------------------------


def _sqlite_sizes(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        by_object = {str(n): int(b) for n, b in conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")}
    finally:
        conn.close()
    wal = path.with_name(path.name + "-wal")
    return {
        "file_bytes": path.stat().st_size + (wal.stat().st_size if wal.exists() else 0),
        "live_bytes": (pages - free) * page_size,
        "by_object": by_object,
    }


def _sqlite_vacuum(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("VACUUM")
    finally:
        conn.close()


def measure_sqlite(workdir: Path, signers: dict[str, Ed25519Signer], minutes: list[list[Any]]) -> dict[str, Any]:
    path = workdir / "collector.db"
    with SqliteStore(path) as store:
        empty = _sqlite_sizes(path)
        log = Log(store, Ed25519Signer.generate(), "bench/storage")
        counts = _ingest(store, signers, minutes, log)
        ingested = _sqlite_sizes(path)
        t0 = time.perf_counter()
        aged = age_statements(store, counts["now_ms"], counts["now_ms"])
        retention_s = time.perf_counter() - t0
        assert aged.statements == counts["statements"], aged
    after = _sqlite_sizes(path)
    _sqlite_vacuum(path)
    compacted = _sqlite_sizes(path)
    checkpoint_bytes = ingested["by_object"].get("checkpoints", 0)
    return _figures(
        counts,
        empty=empty["file_bytes"],
        ingested=ingested["file_bytes"],
        checkpoint_bytes=checkpoint_bytes,
        after_retention=after["file_bytes"],
        after_retention_live=after["live_bytes"],
        compacted=compacted["file_bytes"],
        retention_s=retention_s,
        extra={
            "growth_by_object": _growth(empty["by_object"], ingested["by_object"]),
            "compacted_growth_by_object": _growth(empty["by_object"], compacted["by_object"]),
        },
        compacted_checkpoint_bytes=compacted["by_object"].get("checkpoints", 0),
    )


# -- PostgreSQL --------------------------------------------------------------------


def _pg_sizes(conn: Any) -> dict[str, int]:
    rows = conn.execute(
        "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
    ).fetchall()
    return {str(name): int(size) for name, size in rows}


def _pg_vacuum(conn: Any, command: str) -> None:
    """``command`` on every table of the store's schema (not the whole database)."""
    for table in _pg_sizes(conn):
        conn.execute(f'{command} "{table}"')


def measure_postgres(url: str, signers: dict[str, Ed25519Signer], minutes: list[list[Any]]) -> dict[str, Any]:
    import psycopg

    from collector.store.postgres import PostgresStore

    conn = psycopg.connect(url, autocommit=True)
    try:
        with PostgresStore(url) as store:
            empty = _pg_sizes(conn)
            log = Log(store, Ed25519Signer.generate(), "bench/storage")
            counts = _ingest(store, signers, minutes, log)
            _pg_vacuum(conn, "VACUUM ANALYZE")  # settles the visibility and free-space maps of fresh tables
            ingested = _pg_sizes(conn)
            t0 = time.perf_counter()
            aged = age_statements(store, counts["now_ms"], counts["now_ms"])
            retention_s = time.perf_counter() - t0
            assert aged.statements == counts["statements"], aged
        _pg_vacuum(conn, "VACUUM")  # dead rows' space reusable; the files do not shrink
        after = _pg_sizes(conn)
        _pg_vacuum(conn, "VACUUM FULL")
        compacted = _pg_sizes(conn)
    finally:
        conn.close()
    return _figures(
        counts,
        empty=sum(empty.values()),
        ingested=sum(ingested.values()),
        checkpoint_bytes=ingested.get("checkpoints", 0),
        after_retention=sum(after.values()),
        after_retention_live=None,
        compacted=sum(compacted.values()),
        retention_s=retention_s,
        extra={
            "growth_by_table": _growth(empty, ingested),
            "compacted_growth_by_table": _growth(empty, compacted),
        },
        compacted_checkpoint_bytes=compacted.get("checkpoints", 0),
    )


# -- figures -----------------------------------------------------------------------


def _growth(empty: dict[str, int], now: dict[str, int]) -> dict[str, int]:
    """Bytes each table or index grew by, largest first (those that did not grow left out)."""
    grown = {k: v - empty.get(k, 0) for k, v in now.items() if v > empty.get(k, 0)}
    return dict(sorted(grown.items(), key=lambda kv: -kv[1]))


def _figures(
    counts: dict[str, int],
    *,
    empty: int,
    ingested: int,
    checkpoint_bytes: int,
    after_retention: int,
    after_retention_live: int | None,
    compacted: int,
    compacted_checkpoint_bytes: int,
    retention_s: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    node_days = counts["statements"] / WINDOWS_PER_DAY
    per_node_day: Callable[[int, int], int] = lambda total, cps: round((total - empty - cps) / node_days)  # noqa: E731
    full = per_node_day(ingested, checkpoint_bytes)
    aged = per_node_day(compacted, compacted_checkpoint_bytes)
    out: dict[str, Any] = {
        "statements": counts["statements"],
        "node_days": round(node_days, 3),
        "empty_store_bytes": empty,
        "ingested_bytes": ingested,
        "after_retention_bytes": after_retention,
        "compacted_bytes": compacted,
        "retention_s": round(retention_s, 2),
        "checkpoints": counts["checkpoints"],
        "bytes_per_checkpoint": round(checkpoint_bytes / max(counts["checkpoints"], 1)),
        "bytes_per_statement": round((ingested - empty - checkpoint_bytes) / counts["statements"]),
        "bytes_per_node_day": full,
        "bytes_per_node_day_aged": aged,
        "per_1000_gpus": {
            "full_gb_per_day": round(full * NODES_PER_1000_GPUS / 1e9, 3),
            "full_gb_per_month": round(full * NODES_PER_1000_GPUS * 30 / 1e9, 1),
            "full_gb_per_year": round(full * NODES_PER_1000_GPUS * 365 / 1e9, 1),
            "aged_gb_per_day": round(aged * NODES_PER_1000_GPUS / 1e9, 4),
            "aged_gb_per_month": round(aged * NODES_PER_1000_GPUS * 30 / 1e9, 2),
            "aged_gb_per_year": round(aged * NODES_PER_1000_GPUS * 365 / 1e9, 1),
        },
        "site_checkpoints_mb_per_day": round(checkpoint_bytes / max(counts["checkpoints"], 1) * 1440 / 1e6, 2),
        **extra,
    }
    if after_retention_live is not None:
        out["after_retention_live_bytes"] = after_retention_live
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=4, help="nodes of 8 GPUs (default 4)")
    ap.add_argument("--hours", type=float, default=24.0, help="hours of 60 s windows per node (default 24)")
    ap.add_argument("--postgres", metavar="URL", help="also measure PostgreSQL (an empty database or schema)")
    ns = ap.parse_args(argv)
    if ns.nodes < 1 or ns.hours * 60 < 1:
        ap.error("--nodes and --hours must give at least one window")
    t0 = time.perf_counter()
    signers, minutes = signed_site(ns.nodes, ns.hours)
    sign_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}",
        "nodes": ns.nodes,
        "gpus_per_node": GPUS_PER_NODE,
        "hours": ns.hours,
        "sign_s": round(sign_s, 1),
    }
    with tempfile.TemporaryDirectory() as d:
        out["sqlite"] = measure_sqlite(Path(d), signers, minutes)
    if ns.postgres:
        import psycopg

        url, schema = ns.postgres, None
        with psycopg.connect(url, autocommit=True) as conn:
            out["postgres_version"] = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            if "options=" not in url:  # a database: measure in a schema of our own, dropped after
                schema = f"gpuaudit_bench_{secrets.token_hex(4)}"
                conn.execute(f"CREATE SCHEMA {schema}")
                url += ("&" if "?" in url else "?") + f"options=-csearch_path%3D{schema}"
        try:
            out["postgresql"] = measure_postgres(url, signers, minutes)
        finally:
            if schema is not None:
                with psycopg.connect(ns.postgres, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
