"""Key rotation end to end: the agent's old key hands over to the new one, the collector
enrolls the new key without a join token and retires the old one, and the verifier links
the two chains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
from test_verify_tamper import FIRST_WINDOW_MS, WINDOW_MS, Node, Site

from agent.signing import ChainSigner
from agent.spool import Spool
from attestation import dsse
from attestation.keys import Ed25519Signer
from attestation.statement import Chain, UsageWindow, parse_statement, statement_bytes
from attestation.verify import verify_bundle
from attestation.wire import envelope_from_bytes
from collector.ingest import Accepted, Refused


def _window(node: Node, i: int) -> UsageWindow:
    start = FIRST_WINDOW_MS + i * WINDOW_MS
    w = node.window(start_ms=start, end_ms=start + WINDOW_MS)
    base = 1_000_000_000
    gpus = tuple(
        msgspec.structs.replace(g, energy_start_mj=base + i * 1000, energy_end_mj=base + (i + 1) * 1000) for g in w.gpus
    )
    return msgspec.structs.replace(w, gpus=gpus, chain=Chain("", 0, None))


def _rotated_site(tmp_path: Path) -> tuple[Site, Node, Ed25519Signer, Ed25519Signer, list[Any]]:
    site = Site()
    node = site.enroll(Node("n1"))
    old, new = node.signer, Ed25519Signer.generate()
    spool = Spool(tmp_path / "spool.db")
    cs = ChainSigner(old, spool)
    for i in range(2):
        cs.sign(_window(node, i))
    cs.rotate(new)
    _, handover = cs.sign(_window(node, 2))
    assert cs.signer is new and cs.epoch == 1 and cs.next_seq == 0
    for i in range(3, 5):
        cs.sign(_window(node, i))
    envs = {k: [envelope_from_bytes(b) for _, b in spool.pending(k)] for k in (old.key_id, new.key_id)}
    spool.close()
    results = site.ingestor.ingest_batch([(old.key_id, e) for e in envs[old.key_id]])
    assert all(isinstance(r, Accepted) for r in results), results
    return site, node, old, new, [handover, envs]


def test_rotation_hands_over_and_the_collector_enrolls_the_new_key(tmp_path: Path) -> None:
    site, _, old, new, (handover, envs) = _rotated_site(tmp_path)
    last = parse_statement(handover.payload)
    assert last.rotation is not None and last.rotation.new_key_id == new.key_id
    first_new = parse_statement(envs[new.key_id][0].payload)
    assert (first_new.chain.seq, first_new.chain.epoch) == (0, 1)
    assert (first_new.chain.prev_key_id, first_new.chain.prev_key_digest) == (old.key_id, handover.digest())

    new_rec, old_rec = site.store.key(new.key_id), site.store.key(old.key_id)
    assert new_rec is not None and new_rec.node_id == "n1", "the new key must be enrolled without a join token"
    assert old_rec is not None and old_rec.revoked_ms == last.end_ms, "the old key retires where it handed over"
    results = site.ingestor.ingest_batch([(new.key_id, e) for e in envs[new.key_id]])
    assert all(isinstance(r, Accepted) for r in results), results

    report = verify_bundle(json.dumps(site.bundle()).encode())
    assert report.ok, [str(f) for f in report.failures]
    assert report.keys == 2


def test_a_chain_start_claiming_someone_elses_handover_is_refused(tmp_path: Path) -> None:
    site, node, old, new, (handover, envs) = _rotated_site(tmp_path)
    w = parse_statement(envs[new.key_id][0].payload)
    forged = msgspec.structs.replace(w, chain=msgspec.structs.replace(w.chain, prev_key_digest="0" * 64))
    (res,) = site.ingestor.ingest_batch([(new.key_id, dsse.sign(statement_bytes(forged), new))])
    assert isinstance(res, Refused) and res.reason == "bad_rotation", res


def test_the_old_key_signing_after_its_handover_is_named(tmp_path: Path) -> None:
    site, node, old, new, (handover, envs) = _rotated_site(tmp_path)
    site.ingestor.ingest_batch([(new.key_id, e) for e in envs[new.key_id]])
    doc = site.bundle()
    last = parse_statement(handover.payload)
    late = msgspec.structs.replace(
        last,
        chain=Chain(old.key_id, last.chain.seq + 1, handover.digest()),
        start_ms=last.end_ms,
        end_ms=last.end_ms + WINDOW_MS,
        rotation=None,
    )
    env = dsse.sign(statement_bytes(late), old)
    entry = dict(doc["entries"][0], envelope=env.to_json())
    at = max(i for i, e in enumerate(doc["entries"]) if e["envelope"] == handover.to_json()) + 1
    doc["entries"].insert(at, entry)
    report = verify_bundle(json.dumps(doc).encode())
    assert {"after_rotation", "revoked_key"} <= report.reasons(), [str(f) for f in report.failures]
