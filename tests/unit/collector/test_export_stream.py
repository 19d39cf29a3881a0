"""``gpuaudit-collector export`` streams the bundle to its file: the bytes are those of the
bundle format as it always was (a checked-in bundle from before streaming), and peak
memory does not grow with the number of envelopes exported."""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

import collector.store.sql
from attestation import dsse
from attestation.keys import Ed25519Signer
from attestation.statement import (
    Chain,
    GpuWindow,
    LogCheckpointRef,
    Series,
    UsageWindow,
    Workload,
    statement_bytes,
)
from attestation.verify import verify_bundle
from collector.cli import main as collector_main
from collector.export import ExportError, Selection, build_bundle, export_bundle, write_bundle
from collector.ingest import Accepted, Ingestor
from collector.log import Log
from collector.store.sqlite import SqliteStore

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "bundle" / "small.json"
NOW_MS = 1_700_000_000_000
WINDOW_MS = 60_000
ORIGIN = "gpuaudit/test-export"
PSEUDONYM = "tp-0123456789abcdef"


def _signer(n: int) -> Ed25519Signer:
    """A fixed key, so that the bundle's bytes are the same on every run (Ed25519 is deterministic)."""
    return Ed25519Signer(ed25519.Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


class Node:
    """A node signing one chain with a fixed key; ``buckets`` sizes each statement."""

    def __init__(self, node_id: str, signer: Ed25519Signer, gpus: int = 2, buckets: int = 6) -> None:
        self.node_id, self.signer, self.gpus, self.buckets = node_id, signer, gpus, buckets
        self.seq, self.start_ms = 0, NOW_MS - 100 * WINDOW_MS
        self.prev: str | None = None
        self.energy_mj = [1_000_000 * (i + 1) for i in range(gpus)]

    def next(self, tenant: str = "tenant-a", log_checkpoint: LogCheckpointRef | None = None) -> dsse.Envelope:
        gpus = tuple(
            GpuWindow(
                index=i, uuid=f"GPU-{self.node_id}-{i}", serial=f"{self.node_id}-sn{i}", model="NVIDIA H100 80GB HBM3",
                mem_total_bytes=80 * 1024**3, power_limit_mw=700_000, samples=self.buckets,
                energy_start_mj=self.energy_mj[i], energy_end_mj=self.energy_mj[i] + 18_000_000,
                power_mean_mw=300_000, power_max_mw=310_000, util_mean_permille=900, mem_used_max_bytes=1 << 30,
                series=Series(
                    bucket_ms=WINDOW_MS // self.buckets,
                    util_permille=tuple(900 + b % 7 for b in range(self.buckets)),
                    power_mw=tuple(300_000 + b % 5 for b in range(self.buckets)),
                ),
                workloads=(Workload(tenant, "k8s_pod", "train/llm-0", 1, 1 << 30, 1000, WINDOW_MS),),
            )
            for i in range(self.gpus)
        )  # fmt: skip
        w = UsageWindow(
            node_id=self.node_id,
            boot_id="boot-1",
            agent_version="0.1.0",
            start_ms=self.start_ms,
            end_ms=self.start_ms + WINDOW_MS,
            sample_interval_ms=1000,
            chain=Chain(key_id=self.signer.key_id, seq=self.seq, prev=self.prev),
            gpus=gpus,
            log_checkpoint=log_checkpoint,
        )
        env = dsse.sign(statement_bytes(w), self.signer)
        self.seq, self.prev, self.start_ms = self.seq + 1, env.digest(), w.end_ms
        self.energy_mj = [e + 18_000_000 for e in self.energy_mj]
        return env


def _enroll(store: SqliteStore, node: Node) -> Node:
    token = store.create_token(3600, NOW_MS)
    store.enroll(node.node_id, token, node.signer.public_key().spki_der, "software", NOW_MS)
    return node


def _send(store: SqliteStore, node: Node, n: int, **kw: object) -> None:
    results = Ingestor(store, clock_ms=lambda: NOW_MS).ingest_batch(
        [(node.signer.key_id, node.next(**kw)) for _ in range(n)]  # type: ignore[arg-type]
    )
    assert all(isinstance(r, Accepted) for r in results), results


def small_site(store: SqliteStore) -> tuple[Log, str]:
    """Two nodes, seven statements, a checkpoint one node signed into its statements, a
    tenant pseudonym (so the bundle has seen_checkpoints and tenant_summaries), and the
    note of an earlier checkpoint (for a consistency proof). Returns the log and that note."""
    log = Log(store, _signer(100), ORIGIN)
    a, b = _enroll(store, Node("node-a", _signer(1))), _enroll(store, Node("node-b", _signer(2)))
    _send(store, a, 2)
    _send(store, b, 2)
    earlier = log.checkpoint(NOW_MS)
    seen = LogCheckpointRef(ORIGIN, earlier.checkpoint.size, earlier.checkpoint.root.hex())
    _send(store, a, 2, tenant=PSEUDONYM, log_checkpoint=seen)
    _send(store, b, 1)
    return log, earlier.note


def test_the_streamed_bundle_is_byte_identical_to_the_format_before_streaming(tmp_path: Path) -> None:
    store = SqliteStore(":memory:", now_ms=NOW_MS)
    log, earlier = small_site(store)
    out = tmp_path / "bundle.json"
    summary = export_bundle(out, store, log, Selection(all=True), NOW_MS, earlier)
    if not GOLDEN.exists():  # pragma: no cover - written once, from the in-memory exporter
        pytest.fail(f"{GOLDEN} is missing")
    assert out.read_bytes() == GOLDEN.read_bytes(), (
        "the exported bundle's bytes changed; vendors' verifiers read this format (docs/formats.md)"
    )
    assert (summary.entries, summary.keys, summary.tree_size) == (7, 2, 7)
    # The in-memory document (build_bundle, write_bundle) is the same bundle.
    write_bundle(tmp_path / "doc.json", build_bundle(store, log, Selection(all=True), NOW_MS, earlier))
    assert (tmp_path / "doc.json").read_bytes() == GOLDEN.read_bytes()
    report = verify_bundle(out.read_bytes(), earlier)
    assert report.ok, [str(f) for f in report.failures]
    assert report.previous is not None and report.previous.size == 4
    doc = json.loads(out.read_bytes())
    assert [s["size"] for s in doc["seen_checkpoints"]] == [4] and doc["tenant_summaries"] is not None
    store.close()


@pytest.mark.parametrize(
    ("sel", "entries"),
    [
        (Selection(serials=("node-a-sn0",)), 4),
        (Selection(tenant=PSEUDONYM), 4),  # node-a's whole chain over the (unbounded) period
        (Selection(all=True, since_ms=NOW_MS - 98 * WINDOW_MS), 3),
    ],
)
def test_selections_stream_the_same_bundle_as_the_document(tmp_path: Path, sel: Selection, entries: int) -> None:
    store = SqliteStore(":memory:", now_ms=NOW_MS)
    log, _ = small_site(store)
    out = tmp_path / "bundle.json"
    summary = export_bundle(out, store, log, sel, NOW_MS)
    doc = json.loads(out.read_bytes())
    assert len(doc["entries"]) == summary.entries == entries
    assert doc == build_bundle(store, log, sel, NOW_MS)
    assert verify_bundle(out.read_bytes()).ok
    store.close()


def test_a_failed_export_leaves_no_file(tmp_path: Path) -> None:
    store = SqliteStore(":memory:", now_ms=NOW_MS)
    log, _ = small_site(store)
    out = tmp_path / "bundle.json"
    with pytest.raises(ExportError, match="no statements match"):
        export_bundle(out, store, log, Selection(serials=("nobody",)), NOW_MS)
    with pytest.raises(ExportError, match="not signed by this log"):
        export_bundle(out, store, log, Selection(all=True), NOW_MS, previous_checkpoint="not a checkpoint\n")
    assert list(tmp_path.iterdir()) == [], "a failed export must leave neither the bundle nor a temporary file"
    store.close()


def test_the_cli_streams_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "collector.db"
    with SqliteStore(db, now_ms=NOW_MS) as store:
        small_site(store)
    assert collector_main(["export", "--db", str(db), "--all", "--out", str(tmp_path / "b.json")]) == 0
    assert "wrote 7 envelopes from 2 keys" in capsys.readouterr().out
    assert verify_bundle((tmp_path / "b.json").read_bytes()).ok


def _peak_export_bytes(tmp_path: Path, statements_per_node: int) -> tuple[int, int]:
    """Peak traced memory of exporting a store of 4 nodes x ``statements_per_node``, and the
    bundle's size. The log's own tree (32 bytes and an index entry per leaf, whatever is
    exported) is read before measuring. The store reads 50 statements a page (500 in
    production), so that both stores here are many pages long."""
    store = SqliteStore(tmp_path / f"c{statements_per_node}.db", now_ms=NOW_MS)
    log = Log(store, _signer(100), ORIGIN)
    for i in range(4):
        node = _enroll(store, Node(f"node-{i}", _signer(i + 1), gpus=8, buckets=60))
        for _ in range(statements_per_node // 50):
            _send(store, node, 50)
    log.sync()
    out = tmp_path / f"b{statements_per_node}.json"
    gc.collect()
    tracemalloc.start()
    try:
        summary = export_bundle(out, store, log, Selection(all=True), NOW_MS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        store.close()
    assert summary.entries == 4 * statements_per_node
    return peak, out.stat().st_size


def test_peak_memory_does_not_grow_with_the_envelopes_exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector.store.sql, "PAGE_ROWS", 50)
    small_peak, small_size = _peak_export_bytes(tmp_path, 100)
    large_peak, large_size = _peak_export_bytes(tmp_path, 400)
    assert large_size > 3.5 * small_size
    # Building the bundle in memory costs several times its size; streamed, the peak is a
    # page of statements. 4x the envelopes may add at most a tenth of the extra bundle bytes.
    assert large_peak - small_peak < 0.1 * (large_size - small_size), (
        f"peak {small_peak / 1e6:.1f} MB for {small_size / 1e6:.1f} MB of bundle, "
        f"{large_peak / 1e6:.1f} MB for {large_size / 1e6:.1f} MB: memory grows with the export"
    )
    assert large_peak < large_size / 4, f"peak {large_peak / 1e6:.1f} MB for a {large_size / 1e6:.1f} MB bundle"


def test_inclusion_proofs_read_each_tile_of_the_log_once(tmp_path: Path) -> None:
    """Entries go key by key, but a key's statements lie one per window among every other
    node's, all over the log: proofs taken in entry order would read a tile of leaves back
    for nearly every entry. Taken in leaf order, each tile is read once."""
    store = SqliteStore(tmp_path / "c.db", now_ms=NOW_MS)
    signer = _signer(100)
    nodes = [_enroll(store, Node(f"node-{i}", _signer(i + 1), gpus=1)) for i in range(6)]
    for _ in range(20):  # one statement per node per window, interleaved as they arrive
        for node in nodes:
            _send(store, node, 1)
    log = Log(store, signer, ORIGIN, tile_height=2)  # 4 leaves a tile: 30 tiles, a cache of 8
    log.sync()
    tiles_read: list[int] = []
    read = store.log_leaves

    def counting(start: int = 0, end: int | None = None) -> list[object]:
        if end is not None and end - start == 4:  # a tile read back (a sync reads pages of 10,000)
            assert start % 4 == 0
            tiles_read.append(start >> 2)
        return read(start, end)  # type: ignore[return-value]

    store.log_leaves = counting  # type: ignore[method-assign]
    out = tmp_path / "bundle.json"
    summary = export_bundle(out, store, log, Selection(all=True), NOW_MS)
    assert summary.entries == 120
    assert len(tiles_read) == len(set(tiles_read)) <= 30, f"tiles read more than once: {sorted(tiles_read)}"
    doc = json.loads(out.read_bytes())
    order = [(e["envelope"]["signatures"][0]["keyid"], e["leaf_index"]) for e in doc["entries"]]
    assert order == sorted(order), "entries stay in (key, seq) order"
    report = verify_bundle(out.read_bytes())
    assert report.ok, [str(f) for f in report.failures]
    store.close()


def test_a_full_disk_for_the_proofs_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import collector.export

    store = SqliteStore(":memory:", now_ms=NOW_MS)
    log, _ = small_site(store)

    class FullDisk:
        def __init__(self) -> None:
            self.closed = False

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            self.closed = True

    made: list[FullDisk] = []

    def temporary_file(**_: object) -> FullDisk:
        made.append(FullDisk())
        return made[-1]

    monkeypatch.setattr(collector.export.tempfile, "TemporaryFile", temporary_file)
    with pytest.raises(ExportError, match="inclusion proofs.*No space left"):
        export_bundle(tmp_path / "bundle.json", store, log, Selection(all=True), NOW_MS)
    assert made and made[0].closed
    assert list(tmp_path.iterdir()) == [], "a failed export must leave neither the bundle nor a temporary file"
    store.close()
