"""The store contract, run on both backends: the ``store``/``open_store`` fixtures
(tests/unit/collector/conftest.py) run each test on SQLite and on PostgreSQL. What only
one backend does is in test_sqlite_store.py and test_postgres_store.py."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from attestation.chain import ChainHead
from attestation.keys import Ed25519Signer
from collector.errors import EnrollmentError, StoreConflictError, StoreError
from collector.store.base import RefusalRecord, StatementRecord
from collector.store.sqlite import MIGRATIONS, SqliteStore, token_sha256

NOW_MS = 1_700_000_000_000


def _spki() -> bytes:
    return Ed25519Signer.generate().public_key().spki_der


def _enroll(store: SqliteStore, node_id: str = "node-a") -> str:
    return store.enroll(node_id, store.create_token(60, NOW_MS), _spki(), "software", NOW_MS)


def _statement(key_id: str, seq: int, digest: str = "ab" * 32) -> StatementRecord:
    return StatementRecord(
        key_id=key_id,
        seq=seq,
        node_id="node-a",
        start_ms=seq * 60_000,
        end_ms=(seq + 1) * 60_000,
        digest=digest,
        payload=b'{"seq": %d}' % seq,
        payload_type="application/vnd.in-toto+json",
        signatures=(),
        received_ms=NOW_MS,
    )


def _head(key_id: str, seq: int) -> ChainHead:
    return ChainHead(key_id, seq, "ab" * 32, (seq + 1) * 60_000, "boot-1", {"GPU-0": 42})


# -- opening and closing -----------------------------------------------------


def test_reopen_keeps_data_and_does_not_migrate_again(open_store: Callable[..., SqliteStore]) -> None:
    with open_store(now_ms=NOW_MS) as store:
        key_id = _enroll(store)
        store.save_batch([_statement(key_id, 0)], [_head(key_id, 0)])
        store.save_finding("f1", "opacity", "tenant-a", "high", 1, 2, "{}")
    with open_store(now_ms=NOW_MS + 1) as store:
        assert store.key(key_id) is not None
        assert store.statement_count() == 1
        assert store.head(key_id) == _head(key_id, 0)
        assert store.next_seq(key_id) == 1
        assert [f.finding_id for f in store.findings()] == ["f1"]
        assert store.schema_version() == len(MIGRATIONS)
        (applied,) = store._query("SELECT MAX(applied_ms) FROM schema_migrations")[0]
        assert applied == NOW_MS, "reopening must not re-apply migrations"


def test_closed_store_raises_store_error(open_store: Callable[..., SqliteStore]) -> None:
    store = open_store()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.statement_count()


# -- join tokens and enrollment ----------------------------------------------


def test_token_is_random_urlsafe_and_stored_only_as_its_hash(store: SqliteStore) -> None:
    token = store.create_token(600, NOW_MS)
    other = store.create_token(600, NOW_MS)
    assert token != other and len(token) >= 43
    assert token.startswith("gpa_"), "a token must never start with '-' (a command line reads it as an option)"
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    if isinstance(store, SqliteStore):
        dump = "\n".join(store._c().iterdump())
    else:  # every text column of the PostgreSQL schema
        dump = "\n".join(str(row) for row in store._query("SELECT * FROM join_tokens"))
    assert token not in dump, "the join token itself must never be stored"
    assert token_sha256(token) in dump
    (rec,) = [t for t in store.tokens() if t.token_sha256 == token_sha256(token)]
    assert (rec.created_ms, rec.expires_ms, rec.used_ms) == (NOW_MS, NOW_MS + 600_000, None)


def test_token_ttl_must_be_positive(store: SqliteStore) -> None:
    with pytest.raises(ValueError):
        store.create_token(0, NOW_MS)


def test_enroll_records_the_key(store: SqliteStore) -> None:
    signer = Ed25519Signer.generate()
    token = store.create_token(60, NOW_MS)
    key_id = store.enroll("node-a", token, signer.public_key().spki_der, "tpm", NOW_MS + 5)
    assert key_id == signer.key_id
    key = store.key(key_id)
    assert key is not None
    assert (key.node_id, key.algorithm, key.assurance, key.enrolled_ms, key.revoked) == (
        "node-a",
        "ed25519",
        "tpm",
        NOW_MS + 5,
        False,
    )
    assert key.spki_der == signer.public_key().spki_der
    assert store.next_seq(key_id) == 0 and store.head(key_id) is None
    (rec,) = store.tokens()
    assert (rec.used_ms, rec.used_by_node) == (NOW_MS + 5, "node-a")


def test_token_is_one_time(store: SqliteStore) -> None:
    token = store.create_token(60, NOW_MS)
    store.enroll("node-a", token, _spki(), "software", NOW_MS)
    with pytest.raises(EnrollmentError) as info:
        store.enroll("node-b", token, _spki(), "software", NOW_MS)
    assert info.value.reason == "token_used"
    assert "one-time" in info.value.diagnostics()
    assert [k.node_id for k in store.keys()] == ["node-a"]


def test_token_expires(store: SqliteStore) -> None:
    token = store.create_token(60, NOW_MS)
    with pytest.raises(EnrollmentError) as info:
        store.enroll("node-a", token, _spki(), "software", NOW_MS + 60_000)
    assert info.value.reason == "token_expired"
    assert store.keys() == []


def test_unknown_token(store: SqliteStore) -> None:
    store.create_token(60, NOW_MS)
    with pytest.raises(EnrollmentError) as info:
        store.enroll("node-a", "not-a-token", _spki(), "software", NOW_MS)
    assert info.value.reason == "bad_token"


def test_enrolled_key_cannot_enroll_again_and_keeps_the_token(store: SqliteStore) -> None:
    spki = _spki()
    store.enroll("node-a", store.create_token(60, NOW_MS), spki, "software", NOW_MS)
    token = store.create_token(60, NOW_MS)
    with pytest.raises(EnrollmentError) as info:
        store.enroll("node-b", token, spki, "software", NOW_MS)
    assert info.value.reason == "key_exists"
    # The refused enrollment did not consume the token.
    store.enroll("node-b", token, _spki(), "software", NOW_MS)


@pytest.mark.parametrize(
    ("node_id", "spki", "assurance", "reason"),
    [
        ("node-a", b"\x30\x03garbage", "software", "bad_key"),
        ("", None, "software", "bad_request"),
        ("n" * 254, None, "software", "bad_request"),
        ("node-\ud800", None, "software", "bad_request"),
        ("node-a", None, "firmware", "bad_request"),
    ],
)
def test_bad_enrollment_requests_do_not_burn_the_token(
    store: SqliteStore, node_id: str, spki: bytes | None, assurance: str, reason: str
) -> None:
    token = store.create_token(60, NOW_MS)
    with pytest.raises(EnrollmentError) as info:
        store.enroll(node_id, token, spki if spki is not None else _spki(), assurance, NOW_MS)
    assert info.value.reason == reason
    store.enroll("node-ok", token, _spki(), "software", NOW_MS)


def test_two_collectors_racing_for_one_token_enroll_once(open_store: Callable[..., SqliteStore]) -> None:
    token = open_store().create_token(60, NOW_MS)
    stores = [open_store() for _ in range(4)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(stores))

    def attempt(s: SqliteStore, node: str) -> None:
        barrier.wait()
        try:
            s.enroll(node, token, _spki(), "software", NOW_MS)
            outcomes.append("ok")
        except EnrollmentError as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=attempt, args=(s, f"node-{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert sorted(outcomes) == ["ok", "token_used", "token_used", "token_used"]


def test_revoke_key(store: SqliteStore) -> None:
    key_id = _enroll(store)
    assert store.revoke_key(key_id, NOW_MS + 1)
    assert not store.revoke_key(key_id, NOW_MS + 2), "revoking twice keeps the first time"
    assert not store.revoke_key("sha256:unknown", NOW_MS)
    key = store.key(key_id)
    assert key is not None and key.revoked_ms == NOW_MS + 1


# -- statements ---------------------------------------------------------------


def test_save_batch_is_all_or_nothing(store: SqliteStore) -> None:
    key_id = _enroll(store)
    store.save_batch([_statement(key_id, 0)], [_head(key_id, 0)])
    with pytest.raises(StoreConflictError):
        store.save_batch(
            [_statement(key_id, 1), _statement(key_id, 0, "cd" * 32)],
            [_head(key_id, 1)],
            refusals=[RefusalRecord(NOW_MS, "bad_signature", "x")],
        )
    assert store.statement_count() == 1
    assert store.next_seq(key_id) == 1
    assert store.statement_digest(key_id, 0) == "ab" * 32
    assert store.refusal_counts() == {}


def test_statements_of_an_unenrolled_key_are_refused_by_the_schema(store: SqliteStore) -> None:
    with pytest.raises(StoreError):
        store.save_batch([_statement("sha256:nobody", 0)], [])


def test_iter_statements_pages_and_filters(store: SqliteStore) -> None:
    a = _enroll(store, "node-a")
    b = _enroll(store, "node-b")
    store.save_batch([_statement(a, i) for i in range(1200)], [_head(a, 1199)])
    store.save_batch([_statement(b, i) for i in range(3)], [_head(b, 2)])
    everything = list(store.iter_statements())
    assert len(everything) == 1203
    assert [(s.key_id, s.seq) for s in everything] == sorted((s.key_id, s.seq) for s in everything)
    assert [s.seq for s in store.iter_statements(b)] == [0, 1, 2]
    assert [s.seq for s in store.iter_statements(a, from_seq=1198)] == [1198, 1199]
    # Windows overlapping [120000, 240000): seq 1 ends at 120000 (excluded) ... seq 3 starts at 180000.
    assert [s.seq for s in store.iter_statements(a, window_from_ms=120_000, window_to_ms=240_000)] == [2, 3]


def test_head_round_trips_energy_counters(store: SqliteStore) -> None:
    key_id = _enroll(store)
    head = ChainHead(key_id, 0, "ef" * 32, 60_000, "boot-9", {"GPU-a": 1, "GPU-b": 2**40})
    store.save_batch([_statement(key_id, 0)], [head])
    assert store.head(key_id) == head


# -- refusals and findings ----------------------------------------------------


def test_refusals_are_counted_exactly_and_rows_kept_bounded(open_store: Callable[..., SqliteStore]) -> None:
    with open_store(max_refusal_rows=10) as store:
        for i in range(25):
            store.record_refusal(RefusalRecord(NOW_MS + i, "bad_signature" if i % 5 else "seq_gap", f"m{i}", seq=i))
        store.save_batch([], [], refusals=[RefusalRecord(NOW_MS, "too_large", "big")] * 3)
        assert store.refusal_counts() == {"bad_signature": 20, "seq_gap": 5, "too_large": 3}
        recent = store.refusals(limit=100)
        assert len(recent) == 10
        assert recent[0].reason == "too_large" and recent[-1].message == "m18"


def test_findings_upsert_by_id(store: SqliteStore) -> None:
    store.save_finding("f-1", "opacity", "tenant-a", "medium", 1000, 5000, '{"score": 1}')
    store.save_finding("f-2", "flops", "tenant-b", "high", 500, 6000, "{}")
    store.save_finding("f-1", "opacity", "tenant-a", "high", 1000, 9000, '{"score": 2}')
    findings = store.findings()
    assert [f.finding_id for f in findings] == ["f-2", "f-1"], "ordered by start"
    f1 = findings[1]
    assert (f1.severity, f1.json_text) == ("high", '{"score": 2}'), "an upsert replaces the finding"
    assert f1.detected_ms == 5000, "the first detection time is kept"
    assert [f.finding_id for f in store.findings(tenant="tenant-b")] == ["f-2"]


def test_store_can_be_shared_between_threads(enroll: Callable[..., object], store: SqliteStore) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                store.create_token(60, NOW_MS)
                store.statement_count()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.tokens()) == 80
