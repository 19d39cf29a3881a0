"""Ingest: every tampering is refused with its own reason, and nothing stored is lost."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation import dsse
from attestation.chain import ENERGY_RESET_EVENT, ChainHead
from attestation.dsse import Envelope, Signature
from attestation.keys import Ed25519Signer
from attestation.statement import Chain, Event, statement_bytes
from collector.errors import StoreError
from collector.ingest import Accepted, Ingestor, IngestResult, Refused
from collector.store.base import ConflictRecord, RefusalRecord, StatementRecord
from collector.store.sqlite import SqliteStore

# conftest.py's NodeChain, reached through fixtures (conftest modules are not imported).
NodeChain = Any
Enroll = Callable[..., NodeChain]
NOW_MS = 1_700_000_000_000


def _one(ingestor: Ingestor, key_id: str, env: Envelope) -> IngestResult:
    (result,) = ingestor.ingest_batch([(key_id, env)])
    return result


def _accepted(results: Sequence[IngestResult]) -> list[Accepted]:
    bad = [r for r in results if not isinstance(r, Accepted)]
    assert not bad, f"expected every statement accepted, got refusals: {bad}"
    return [r for r in results if isinstance(r, Accepted)]


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# -- the happy path -------------------------------------------------------------


def test_a_valid_chain_is_accepted_and_stored_exactly(store: SqliteStore, ingestor: Ingestor, enroll: Enroll) -> None:
    node = enroll()
    envs = node.take(5)
    results = _accepted(ingestor.ingest_batch([(node.key_id, e) for e in envs]))
    assert [(r.seq, r.duplicate) for r in results] == [(i, False) for i in range(5)]
    assert results[2].window.node_id == "node-a" and len(results[2].window.gpus) == 8
    assert results[2].digest == envs[2].digest()
    assert store.statement_count() == 5
    assert store.next_seq(node.key_id) == 5
    head = store.head(node.key_id)
    assert head is not None and head.digest == envs[-1].digest() and head.end_ms == results[-1].window.end_ms
    # The stored envelope is the signed one, byte for byte: it verifies and has the same digest.
    stored = list(store.iter_statements(node.key_id))
    assert [s.envelope() for s in stored] == envs
    for s in stored:
        assert dsse.verify(s.envelope(), node.signer.public_key()) == s.payload
        assert s.digest == s.envelope().digest() and s.received_ms == NOW_MS


def test_chain_continues_across_batches(store: SqliteStore, ingestor: Ingestor, enroll: Enroll) -> None:
    node = enroll()
    for _ in range(3):
        _accepted(ingestor.ingest_batch([(node.key_id, e) for e in node.take(4)]))
    assert store.statement_count() == 12 and store.next_seq(node.key_id) == 12


def test_two_nodes_in_one_batch(store: SqliteStore, ingestor: Ingestor, enroll: Enroll) -> None:
    a, b = enroll("node-a"), enroll("node-b")
    items = [(a.key_id, a.next()), (b.key_id, b.next()), (a.key_id, a.next()), (b.key_id, b.next())]
    results = _accepted(ingestor.ingest_batch(items))
    assert [r.seq for r in results] == [0, 0, 1, 1]
    assert store.next_seq(a.key_id) == 2 and store.next_seq(b.key_id) == 2


def test_energy_counter_reset_recorded_is_accepted(ingestor: Ingestor, enroll: Enroll) -> None:
    node = enroll(gpus=1)
    _accepted(ingestor.ingest_batch([(node.key_id, e) for e in node.take(2)]))
    g = node.window().gpus[0]
    reset = msgspec.structs.replace(
        g, energy_start_mj=5, energy_end_mj=1000, events=(Event(ENERGY_RESET_EVENT, "driver reloaded"),)
    )
    result = _one(ingestor, node.key_id, node.next(gpus=(reset,)))
    assert isinstance(result, Accepted) and not result.duplicate


# -- replay and equivocation ------------------------------------------------------


def test_replayed_statement_is_acked_as_duplicate_and_not_stored_twice(
    store: SqliteStore, ingestor: Ingestor, enroll: Enroll
) -> None:
    node = enroll()
    envs = node.take(3)
    _accepted(ingestor.ingest_batch([(node.key_id, e) for e in envs]))
    results = _accepted(ingestor.ingest_batch([(node.key_id, envs[1]), (node.key_id, envs[2])]))
    assert [(r.seq, r.duplicate) for r in results] == [(1, True), (2, True)]
    assert store.statement_count() == 3
    assert store.refusal_counts() == {}


def test_duplicate_inside_one_batch(store: SqliteStore, ingestor: Ingestor, enroll: Enroll) -> None:
    node = enroll()
    e0 = node.next()
    results = _accepted(ingestor.ingest_batch([(node.key_id, e0), (node.key_id, e0)]))
    assert [(r.seq, r.duplicate) for r in results] == [(0, False), (0, True)]
    assert store.statement_count() == 1


def test_equivocation_is_refused_and_kept_as_evidence(store: SqliteStore, ingestor: Ingestor, enroll: Enroll) -> None:
    node = enroll()
    envs = node.take(3)
    _accepted(ingestor.ingest_batch([(node.key_id, e) for e in envs]))
    # Same key, same seq 1, different content: the node signed two histories.
    other = node.sign(msgspec.structs.replace(node.window(), chain=Chain(node.key_id, 1, envs[0].digest())))
    result = _one(ingestor, node.key_id, other)
    assert isinstance(result, Refused) and (result.seq, result.reason) == (1, "equivocation")
    (conflict,) = store.conflicts(node.key_id)
    assert (conflict.seq, conflict.original_digest, conflict.digest) == (1, envs[1].digest(), other.digest())
    assert conflict.envelope() == other
    assert store.statement_digest(node.key_id, 1) == envs[1].digest(), "the original must stay"
    # Sent again, the evidence is not duplicated but the refusal is counted again.
    _one(ingestor, node.key_id, other)
    assert len(store.conflicts()) == 1
    assert store.refusal_counts() == {"equivocation": 2}


def test_equivocation_inside_one_batch(store: SqliteStore, ingestor: Ingestor, enroll: Enroll) -> None:
    node = enroll()
    w = node.window()
    first = node.sign(w)
    second = node.sign(msgspec.structs.replace(w, boot_id="boot-2"))
    results = ingestor.ingest_batch([(node.key_id, first), (node.key_id, second)])
    assert isinstance(results[0], Accepted)
    assert isinstance(results[1], Refused) and results[1].reason == "equivocation"
    assert [c.original_digest for c in store.conflicts()] == [first.digest()]


# -- the tamper table ---------------------------------------------------------------

# Each case gets an enrolled node whose seq 0..2 are stored, and returns the (hello key id,
# envelope) to send; the node's own next statement (seq 3) is sent afterwards and must
# still be accepted.
Tamper = Callable[[NodeChain, Enroll], tuple[str, Envelope]]


def _changed_payload_byte(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    env = node.sign(node.window())
    return node.key_id, dataclasses.replace(env, payload=_flip(env.payload, len(env.payload) // 2))


def _changed_signature_byte(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    env = node.sign(node.window())
    sig = env.signatures[0]
    return node.key_id, dataclasses.replace(env, signatures=(Signature(sig.keyid, _flip(sig.sig, 5)),))


def _dropped_statement(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    w3 = node.window()
    e3 = node.sign(w3)
    w4 = msgspec.structs.replace(
        w3, chain=Chain(node.key_id, 4, e3.digest()), start_ms=w3.end_ms, end_ms=w3.end_ms + 60_000
    )
    return node.key_id, node.sign(w4)


def _wrong_prev(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    return node.key_id, node.sign(node.window(chain=Chain(node.key_id, 3, "0" * 64)))


def _overlapping_window(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    w = node.window()
    return node.key_id, node.sign(msgspec.structs.replace(w, start_ms=w.start_ms - 1000, end_ms=w.end_ms - 1000))


def _energy_back_across_windows(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    w = node.window()
    g = w.gpus[3]
    g = msgspec.structs.replace(g, energy_start_mj=g.energy_start_mj - 1 if g.energy_start_mj else 0)
    return node.key_id, node.sign(msgspec.structs.replace(w, gpus=(*w.gpus[:3], g, *w.gpus[4:])))


def _energy_back_within_window(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    w = node.window()
    g = msgspec.structs.replace(w.gpus[0], energy_end_mj=(w.gpus[0].energy_start_mj or 0) - 1)
    return node.key_id, node.sign(msgspec.structs.replace(w, gpus=(g, *w.gpus[1:])))


def _unknown_key(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    stranger = type(node)("node-a", signer=Ed25519Signer.generate())
    return stranger.key_id, stranger.next()


def _other_nodes_key(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    # Node B's key signs a statement that claims to come from node A.
    b = enroll("node-b")
    return b.key_id, b.sign(b.window(node_id="node-a"))


def _claims_other_node(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    enroll("node-b")
    return node.key_id, node.sign(node.window(node_id="node-b"))


def _names_other_key(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    b = enroll("node-b")
    return node.key_id, node.sign(node.window(chain=Chain(b.key_id, 0, None)))


def _signed_by_another_key_than_hello(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    b = enroll("node-b")
    return node.key_id, b.sign(node.window())


def _malformed_json(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    payload = statement_bytes(node.window())[:-7]
    return node.key_id, dsse.sign(payload, node.signer)


def _wrong_field_type(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    doc = json.loads(statement_bytes(node.window()))
    doc["predicate"]["window"]["start_ms"] = str(doc["predicate"]["window"]["start_ms"])
    return node.key_id, dsse.sign(json.dumps(doc).encode(), node.signer)


def _wrong_predicate_type(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    doc = json.loads(statement_bytes(node.window()))
    doc["predicateType"] = "https://slsa.dev/provenance/v1"
    return node.key_id, dsse.sign(json.dumps(doc).encode(), node.signer)


def _wrong_payload_type(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    return node.key_id, node.sign(node.window(), payload_type="application/json")


def _too_large(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    doc = json.loads(statement_bytes(node.window()))
    doc["padding"] = "x" * (1 << 20)
    return node.key_id, dsse.sign(json.dumps(doc).encode(), node.signer)


def _unsigned(node: NodeChain, enroll: Enroll) -> tuple[str, Envelope]:
    return node.key_id, dataclasses.replace(node.sign(node.window()), signatures=())


TAMPER_TABLE: list[tuple[str, Tamper, str]] = [
    ("changed payload byte", _changed_payload_byte, "bad_signature"),
    ("changed signature byte", _changed_signature_byte, "bad_signature"),
    ("no signature", _unsigned, "bad_signature"),
    ("signed by another enrolled key than the stream's", _signed_by_another_key_than_hello, "bad_signature"),
    ("dropped statement (gap)", _dropped_statement, "seq_gap"),
    ("wrong prev (fork)", _wrong_prev, "prev_mismatch"),
    ("overlapping window", _overlapping_window, "window_overlap"),
    ("energy counter back across windows, no reset", _energy_back_across_windows, "energy_decrease"),
    ("energy counter back within a window, no reset", _energy_back_within_window, "energy_decrease"),
    ("unknown key", _unknown_key, "unknown_key"),
    ("node B's key claims node A", _other_nodes_key, "node_mismatch"),
    ("node A's key claims node B", _claims_other_node, "node_mismatch"),
    ("statement names another key", _names_other_key, "key_mismatch"),
    ("malformed JSON", _malformed_json, "bad_schema"),
    ("known field of the wrong type", _wrong_field_type, "bad_schema"),
    ("wrong predicate type", _wrong_predicate_type, "bad_predicate_type"),
    ("wrong payload type", _wrong_payload_type, "bad_payload_type"),
    ("payload over the size limit", _too_large, "too_large"),
]


@pytest.mark.parametrize(
    ("tamper", "reason"), [(t, r) for _, t, r in TAMPER_TABLE], ids=[n for n, _, _ in TAMPER_TABLE]
)
def test_tampering_is_refused_with_its_reason(
    store: SqliteStore, ingestor: Ingestor, enroll: Enroll, tamper: Tamper, reason: str
) -> None:
    node = enroll()
    stored = node.take(3)
    _accepted(ingestor.ingest_batch([(node.key_id, e) for e in stored]))
    key_id, bad = tamper(node, enroll)

    result = _one(ingestor, key_id, bad)

    assert isinstance(result, Refused), f"tampered statement was accepted: {result}"
    assert result.reason == reason, f"refused for {result.reason!r} ({result.message}), expected {reason!r}"
    assert result.message
    assert store.refusal_counts() == {reason: 1}
    assert store.refusals()[0].reason == reason
    # Nothing already stored is lost or changed, and the honest chain continues.
    assert [s.envelope() for s in store.iter_statements(node.key_id)] == stored
    assert store.statement_count() == 3
    nxt = _one(ingestor, node.key_id, node.next())
    assert isinstance(nxt, Accepted) and nxt.seq == 3, f"the honest next statement was not accepted: {nxt}"


# Payloads that JSON parsers read differently (issue 16): signed by the enrolled key, each
# is refused as bad_schema and nothing of it is stored; the honest chain then continues.
_AMBIGUOUS: list[tuple[str, Callable[[str], str]]] = [
    ("duplicate-tenant", lambda t: t.replace('"tenant":', '"tenant":"t-hidden","tenant":', 1)),
    ("duplicate-in-unknown-field", lambda t: t.replace('"predicate":{', '"predicate":{"x":[{"a":1,"a":2}],', 1)),
    ("lone-surrogate", lambda t: t.replace('"boot_id":"', '"boot_id":"\\ud800', 1)),
    ("integer-beyond-2**53", lambda t: t.replace('"gpu_ms":', f'"future_ms":{2**53},"gpu_ms":', 1)),
    ("nan", lambda t: t.replace('"predicate":{', '"predicate":{"x":NaN,', 1)),
    ("byte-order-mark", lambda t: "\ufeff" + t),
]


@pytest.mark.parametrize("mutate", [m for _, m in _AMBIGUOUS], ids=[n for n, _ in _AMBIGUOUS])
def test_a_payload_parsers_read_differently_is_refused_and_not_stored(
    store: SqliteStore, ingestor: Ingestor, enroll: Enroll, mutate: Callable[[str], str]
) -> None:
    node = enroll()
    _accepted(ingestor.ingest_batch([(node.key_id, node.next())]))
    text = statement_bytes(node.window()).decode()
    payload = mutate(text).encode()
    assert payload != text.encode()
    leaves = store.log_size()

    result = _one(ingestor, node.key_id, dsse.sign(payload, node.signer))

    assert isinstance(result, Refused) and result.reason == "bad_schema", result
    assert store.statement_count() == 1 and store.next_seq(node.key_id) == 1
    assert store.refusals()[0].reason == "bad_schema"
    assert store.log_size() == leaves, "a refused statement must not reach the log"
    nxt = _one(ingestor, node.key_id, node.next())
    assert isinstance(nxt, Accepted) and nxt.seq == 1, f"the honest next statement was not accepted: {nxt}"


@pytest.mark.parametrize("keyid", ["", "unknown", "sha256:" + "0" * 64], ids=["absent", "unknown", "unknown-sha256"])
def test_a_signature_without_the_key_id_hint_is_accepted(
    store: SqliteStore, ingestor: Ingestor, enroll: Enroll, keyid: str
) -> None:
    """DSSE keyid is an optional hint: the enrolled key verifies whatever it names."""
    node = enroll()
    env = node.next()
    hintless = dataclasses.replace(env, signatures=(Signature(keyid, env.signatures[0].sig),))
    result = _one(ingestor, node.key_id, hintless)
    assert isinstance(result, Accepted) and result.seq == 0, result
    assert store.statement_count() == 1


def test_revoked_key_is_refused(store: SqliteStore, ingestor: Ingestor, enroll: Enroll) -> None:
    node = enroll()
    _accepted(ingestor.ingest_batch([(node.key_id, e) for e in node.take(2)]))
    assert store.revoke_key(node.key_id, NOW_MS)
    result = _one(ingestor, node.key_id, node.next())
    assert isinstance(result, Refused) and result.reason == "revoked_key"
    assert store.statement_count() == 2
    (refusal,) = store.refusals()
    assert (refusal.node_id, refusal.key_id, refusal.seq) == ("node-a", node.key_id, None)


def test_a_refusal_in_the_middle_of_a_batch_affects_nothing_else(
    store: SqliteStore, ingestor: Ingestor, enroll: Enroll
) -> None:
    node = enroll()
    e0, e1 = node.take(2)
    forged = dataclasses.replace(node.sign(node.window()), payload=b"{}")
    e2, e3 = node.take(2)
    results = ingestor.ingest_batch([(node.key_id, e) for e in (e0, e1, forged, e2, e3)])
    assert [type(r).__name__ for r in results] == ["Accepted", "Accepted", "Refused", "Accepted", "Accepted"]
    assert isinstance(results[2], Refused) and results[2].reason == "bad_signature" and results[2].seq is None
    assert store.statement_count() == 4


def test_a_gap_inside_a_batch_refuses_what_follows_it(store: SqliteStore, ingestor: Ingestor, enroll: Enroll) -> None:
    node = enroll()
    e0, e1, e2 = node.take(3)
    results = ingestor.ingest_batch([(node.key_id, e) for e in (e0, e2)])
    assert isinstance(results[0], Accepted)
    assert isinstance(results[1], Refused) and (results[1].seq, results[1].reason) == (2, "seq_gap")
    # The agent resends from the gap and everything is then accepted.
    results = _accepted(ingestor.ingest_batch([(node.key_id, e) for e in (e1, e2)]))
    assert [r.duplicate for r in results] == [False, False]
    assert store.statement_count() == 3


def test_empty_batch(ingestor: Ingestor) -> None:
    assert ingestor.ingest_batch([]) == []


# -- durability and the store ---------------------------------------------------------


class _FailingStore:
    """A store whose writes fail (a full disk), delegating reads to a real store."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def save_batch(
        self,
        statements: Sequence[StatementRecord],
        heads: Sequence[ChainHead],
        conflicts: Sequence[ConflictRecord] = (),
        refusals: Sequence[RefusalRecord] = (),
    ) -> None:
        raise StoreError("database or disk is full")


def test_store_failure_raises_and_nothing_is_acknowledged(store: SqliteStore, enroll: Enroll) -> None:
    node = enroll()
    ingestor = Ingestor(_FailingStore(store), clock_ms=lambda: NOW_MS)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        ingestor.ingest_batch([(node.key_id, e) for e in node.take(2)])
    assert store.statement_count() == 0 and store.next_seq(node.key_id) == 0


def test_chain_survives_reopening_the_store(tmp_path: Any, new_chain: Callable[..., NodeChain]) -> None:
    path = tmp_path / "c.db"
    node = new_chain("node-a", gpus=2)
    with SqliteStore(path) as store:
        store.enroll("node-a", store.create_token(60, NOW_MS), node.signer.public_key().spki_der, "software", NOW_MS)
        _accepted(Ingestor(store).ingest_batch([(node.key_id, e) for e in node.take(3)]))
    with SqliteStore(path) as store:
        ingestor = Ingestor(store)
        # Energy counters were remembered: going back is still caught after a restart.
        w = node.window()
        back = msgspec.structs.replace(w.gpus[1], energy_start_mj=(w.gpus[1].energy_start_mj or 0) - 1)
        bad = _one(ingestor, node.key_id, node.sign(msgspec.structs.replace(w, gpus=(w.gpus[0], back))))
        assert isinstance(bad, Refused) and bad.reason == "energy_decrease"
        good = _one(ingestor, node.key_id, node.next())
        assert isinstance(good, Accepted) and good.seq == 3


def test_results_and_refusal_messages_are_safe_to_send_and_store(
    store: SqliteStore, ingestor: Ingestor, enroll: Enroll
) -> None:
    # A lone surrogate (valid JSON escape, not valid UTF-8: refused as JSON parsers read it
    # differently) and a long field, both echoed in the messages.
    node = enroll()
    doc = json.loads(statement_bytes(node.window()))
    for key_id, reason in (("\ud800" + "k" * 5000, "bad_schema"), ("k" * 5000, "key_mismatch")):
        doc["predicate"]["chain"]["key_id"] = key_id
        result = _one(ingestor, node.key_id, dsse.sign(json.dumps(doc).encode(), node.signer))
        assert isinstance(result, Refused) and result.reason == reason, result
        result.message.encode("utf-8")
        assert len(result.message) <= 1000
        assert store.refusals()[0].message == result.message


# -- fuzzing: no input crashes ingest ---------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:2]):
            out += _paths(v, (*prefix, i))
    return out


_fuzz_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _assert_refused_cleanly(store: SqliteStore, results: list[IngestResult], before: int) -> None:
    assert len(results) == 1
    if isinstance(results[0], Refused):
        assert results[0].reason and results[0].reason != "internal_error", results[0]
        results[0].message.encode("utf-8")
        assert store.statement_count() == before


@_fuzz_settings
@given(payload=st.binary(max_size=2000))
def test_fuzz_random_bytes_signed_by_an_enrolled_key(
    store: SqliteStore, ingestor: Ingestor, enroll: Enroll, payload: bytes
) -> None:
    node = enroll()
    results = ingestor.ingest_batch([(node.key_id, dsse.sign(payload, node.signer))])
    _assert_refused_cleanly(store, results, 0)


@_fuzz_settings
@given(doc=_json)
def test_fuzz_random_json_signed_by_an_enrolled_key(
    store: SqliteStore, ingestor: Ingestor, enroll: Enroll, doc: Any
) -> None:
    node = enroll()
    results = ingestor.ingest_batch([(node.key_id, dsse.sign(json.dumps(doc).encode(), node.signer))])
    _assert_refused_cleanly(store, results, 0)


@_fuzz_settings
@given(data=st.data())
def test_fuzz_valid_statement_with_one_field_replaced(
    store: SqliteStore, ingestor: Ingestor, enroll: Enroll, data: st.DataObject
) -> None:
    node = enroll(gpus=2, buckets=2)
    doc = json.loads(statement_bytes(node.window()))
    path = data.draw(st.sampled_from(_paths(doc)[1:]))
    value = data.draw(_json)
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    before = store.statement_count()
    results = ingestor.ingest_batch([(node.key_id, dsse.sign(json.dumps(doc).encode(), node.signer))])
    _assert_refused_cleanly(store, results, before)


@_fuzz_settings
@given(
    payload=st.binary(max_size=200),
    payload_type=st.text(max_size=40),
    sigs=st.lists(st.tuples(st.text(max_size=80), st.binary(max_size=80)), max_size=10),
    hello_key=st.text(max_size=80),
)
def test_fuzz_arbitrary_envelopes(
    store: SqliteStore,
    ingestor: Ingestor,
    enroll: Enroll,
    payload: bytes,
    payload_type: str,
    sigs: list[tuple[str, bytes]],
    hello_key: str,
) -> None:
    node = enroll()
    env = Envelope(payload, payload_type, tuple(Signature(k, s) for k, s in sigs))
    for key_id in (hello_key, node.key_id):
        results = ingestor.ingest_batch([(key_id, env)])
        assert isinstance(results[0], Refused)
        _assert_refused_cleanly(store, results, 0)
