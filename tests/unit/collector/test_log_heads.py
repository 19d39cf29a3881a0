"""The log commits every key's head in each checkpoint (attestation/heads.py): computed
incrementally from the heads the store committed last, the same as computed from every
leaf, on both store backends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attestation.checkpoint import Checkpoint, parse_checkpoint_body, parse_note, sign_checkpoint
from attestation.heads import KeyHead, commit, parse_heads_extension
from attestation.keys import Ed25519Signer
from attestation.statement import parse_statement
from collector.ingest import Accepted, Ingestor
from collector.log import Log
from collector.store.base import CheckpointRecord

# conftest.py's NodeChain, reached through fixtures (conftest modules are not imported).
NodeChain = Any
NOW_MS = 1_700_000_000_000
ORIGIN = "gpuaudit/test-heads"


def _send(store: Any, node: NodeChain, n: int) -> None:
    results = Ingestor(store, clock_ms=lambda: NOW_MS).ingest_batch([(node.key_id, node.next()) for _ in range(n)])
    assert all(isinstance(r, Accepted) for r in results), results


def _brute_force(store: Any, size: int) -> list[KeyHead]:
    """Every key's highest seq among the first ``size`` leaves, from the leaves themselves."""
    best: dict[str, tuple[int, int]] = {}
    for leaf in store.log_leaves(0, size):
        if leaf.key_id not in best or leaf.seq > best[leaf.key_id][0]:
            best[leaf.key_id] = (leaf.seq, leaf.index)
    out = []
    for key_id, (seq, index) in sorted(best.items()):
        ((_, rec),) = store.log_statements(index, index + 1)
        serials = tuple(sorted({g.serial for g in parse_statement(rec.payload).gpus if g.serial}))
        out.append(KeyHead(key_id, rec.node_id, seq, index, rec.digest, rec.end_ms, serials))
    return out


def test_each_checkpoint_commits_the_heads_at_its_size(store: Any, enroll: Callable[..., NodeChain]) -> None:
    signer = Ed25519Signer.generate()
    log = Log(store, signer, ORIGIN)
    a, b = enroll("node-a", gpus=2, buckets=6), enroll("node-b", gpus=2, buckets=6)
    _send(store, a, 3)
    _send(store, b, 2)
    first = log.checkpoint(NOW_MS)
    commitment = parse_heads_extension(first.checkpoint.extensions)
    assert commitment is not None and commitment.signed_ms == NOW_MS
    assert commit(_brute_force(store, 5), NOW_MS) == commitment
    assert store.committed_heads() == (5, _brute_force(store, 5))
    assert log.checkpoint(NOW_MS + 1).note == first.note, "nothing appended: the same checkpoint"
    _send(store, a, 2)
    c = enroll("node-c", gpus=2, buckets=6)
    _send(store, c, 1)
    # A restarted collector takes the committed heads and reads only the leaves after them.
    restarted = Log(store, signer, ORIGIN)
    second = restarted.checkpoint(NOW_MS + 2)
    assert second.checkpoint.size == 8
    assert parse_heads_extension(second.checkpoint.extensions) == commit(_brute_force(store, 8), NOW_MS + 2)
    assert restarted.heads(8) == _brute_force(store, 8)
    assert store.committed_heads() == (8, _brute_force(store, 8))
    assert restarted.heads(5) == _brute_force(store, 5), "heads at an earlier size are recomputed"


def test_a_checkpoint_from_before_heads_is_signed_again_with_them(store: Any, enroll: Callable[..., NodeChain]) -> None:
    signer = Ed25519Signer.generate()
    a = enroll("node-a", gpus=2, buckets=6)
    _send(store, a, 2)
    log = Log(store, signer, ORIGIN)
    log.sync()
    old = sign_checkpoint(Checkpoint(ORIGIN, 2, log.root()), ORIGIN, signer)  # what an older collector signed
    store.save_checkpoint(CheckpointRecord(2, log.root(), NOW_MS, old.note))
    new = log.checkpoint(NOW_MS + 1)
    assert new.note != old.note and new.checkpoint.size == 2
    assert parse_heads_extension(parse_checkpoint_body(parse_note(new.note)[0]).extensions) is not None


def test_only_a_later_size_replaces_the_committed_heads(store: Any) -> None:
    head = KeyHead("sha256:" + "a" * 64, "node-a", 4, 9, "b" * 64, NOW_MS, ("sn1",))
    assert store.save_committed_heads(10, [head])
    older = KeyHead("sha256:" + "a" * 64, "node-a", 2, 5, "c" * 64, NOW_MS, ())
    assert not store.save_committed_heads(8, [older]), "another collector committed a later size"
    assert store.committed_heads() == (10, [head])
