"""Retention on both backends: old payloads age into hourly aggregates while the log's
leaves, root, checkpoints and the proofs of the remaining statements stay valid."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attestation.keys import Ed25519Signer
from attestation.merkle import verify_inclusion
from collector.ingest import Ingestor
from collector.log import Log
from collector.retention import HOUR_MS, age_statements

NodeChain = Any
NOW_MS = 1_700_000_000_000
WINDOW_MS = 60_000


def test_aged_payloads_become_aggregates_and_the_log_stays_valid(
    store: Any, ingestor: Ingestor, enroll: Callable[..., NodeChain]
) -> None:
    a, b = enroll("node-a", gpus=2, buckets=6), enroll("node-b", gpus=1, buckets=6)
    first = a.start_ms
    ingestor.ingest_batch([(a.key_id, e) for e in a.take(8)] + [(b.key_id, e) for e in b.take(8)])
    log = Log(store, Ed25519Signer.generate(), "gpuaudit/test")
    before = log.checkpoint(NOW_MS)
    leaves_before = store.log_leaves()

    cutoff = first + 5 * WINDOW_MS  # windows 0..4 of each node ended by then
    report = age_statements(store, cutoff, NOW_MS + 1, chunk=3)  # several chunks
    assert report.statements == 10

    # The payloads are gone, the rows, digests, chain and leaves are not.
    assert [s.seq for s in store.iter_statements(a.key_id)] == [5, 6, 7]
    assert store.statement_count() == 16 and store.next_seq(a.key_id) == 8
    assert store.log_leaves() == leaves_before, "leaf hashes are kept: the tree is unchanged"
    assert store.statement_digest(a.key_id, 0) is not None, "a replay of an aged statement is still a duplicate"

    # Root unchanged, the old checkpoint is still consistent, proofs of what remains verify.
    after = Log(store, Ed25519Signer.generate(), "gpuaudit/test")
    assert after.sync() == 16 and after.root() == before.checkpoint.root
    for index, rec in store.log_statements(0):
        assert rec.end_ms > cutoff
        proof = after.inclusion_proof(index, 16)
        verify_inclusion(after.leaf_hash(index), index, 16, proof, before.checkpoint.root)
    assert [i for i, _ in store.log_statements(0)] == sorted(lf.index for lf in leaves_before if lf.seq >= 5), (
        "log_statements skips aged payloads"
    )

    # Aggregates: 5 windows x (2 GPUs of node-a + 1 of node-b), tenant-a, in their hour.
    agg = store.usage_hourly()
    assert {(r.node_id, r.tenant) for r in agg} == {("node-a", "tenant-a"), ("node-b", "tenant-a")}
    assert sum(r.windows for r in agg) == 15
    assert sum(r.window_ms for r in agg) == 15 * WINDOW_MS
    assert sum(r.energy_mj for r in agg) == 15 * 300_000 * 60  # 300 W for 60 s each
    assert all(r.hour_ms % HOUR_MS == 0 for r in agg)
    assert sum(r.util_permille_ms for r in agg) == 15 * 930 * WINDOW_MS
    assert store.usage_hourly(tenant="nobody") == []

    # Idempotent: nothing left to age, nothing counted twice.
    assert age_statements(store, cutoff, NOW_MS + 2).statements == 0
    assert sum(r.windows for r in store.usage_hourly()) == 15

    # The chain goes on after retention.
    results = ingestor.ingest_batch([(a.key_id, a.next())])
    assert results[0].accepted and store.log_size() == 17


def test_replaying_an_aged_statement_is_a_duplicate(
    store: Any, ingestor: Ingestor, enroll: Callable[..., NodeChain]
) -> None:
    a = enroll(gpus=1, buckets=6)
    envs = a.take(3)
    ingestor.ingest_batch([(a.key_id, e) for e in envs])
    age_statements(store, a.start_ms, NOW_MS)
    (res,) = ingestor.ingest_batch([(a.key_id, envs[0])])
    assert res.accepted and res.duplicate and store.log_size() == 3
