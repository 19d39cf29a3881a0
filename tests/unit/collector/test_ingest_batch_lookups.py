"""Batched key and chain-head lookups: ``Store.keys_by_id``/``Store.heads`` answer exactly what
``key``/``head`` answer (on both backends, and in the Protocol's default), and ingest asks
for a batch's keys and heads in one call each instead of once per statement, without
keeping revocation (or anything but immutable verification keys) between batches."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from attestation import keys
from attestation.chain import ChainHead
from attestation.dsse import Envelope
from attestation.keys import Ed25519Signer
from collector.errors import StoreConflictError
from collector.ingest import Accepted, Ingestor, IngestResult, Refused
from collector.store import sql, sqlite
from collector.store.base import ConflictRecord, KeyRecord, RefusalRecord, StatementRecord, Store

NodeChain = Any
Enroll = Callable[..., NodeChain]
NOW_MS = 1_700_000_000_000


def _enroll_key(store: Any, node_id: str) -> str:
    spki = Ed25519Signer.generate().public_key().spki_der
    key_id: str = store.enroll(node_id, store.create_token(60, NOW_MS), spki, "software", NOW_MS)
    return key_id


def _statement(key_id: str, seq: int) -> StatementRecord:
    return StatementRecord(
        key_id=key_id,
        seq=seq,
        node_id="node",
        start_ms=seq * 60_000,
        end_ms=(seq + 1) * 60_000,
        digest=f"{seq:064x}",
        payload=b'{"seq": %d}' % seq,
        payload_type="application/vnd.in-toto+json",
        signatures=(),
        received_ms=NOW_MS,
    )


def _head(key_id: str, seq: int, energy: dict[str, int]) -> ChainHead:
    return ChainHead(key_id, seq, f"{seq:064x}", (seq + 1) * 60_000, f"boot-{seq}", energy)


def _single_keys(store: Any, key_ids: Sequence[str]) -> dict[str, KeyRecord]:
    return {k: r for k in key_ids if (r := store.key(k)) is not None}


def _single_heads(store: Any, key_ids: Sequence[str]) -> dict[str, ChainHead]:
    return {k: h for k in key_ids if (h := store.head(k)) is not None}


@pytest.fixture
def site(store: Any) -> tuple[list[str], list[str]]:
    """(enrolled key ids: 0 revoked, 1 and 2 with chain heads, 3 without; ids never enrolled)."""
    keys = [_enroll_key(store, f"node-{i}") for i in range(4)]
    assert store.revoke_key(keys[0], NOW_MS + 5)
    store.save_batch([_statement(keys[1], 0)], [_head(keys[1], 0, {"GPU-0": 42, "GPU-1": 7})])
    store.save_batch(
        [_statement(keys[2], 0), _statement(keys[2], 1)], [_head(keys[2], 1, {})], (), [RefusalRecord(NOW_MS, "x", "")]
    )
    missing = ["sha256:" + "0" * 64, "", "not-a-key", "sha256:" + "f" * 64, "x\x00y"]
    return keys, missing


# -- the store methods ------------------------------------------------------------------


def test_keys_by_id_agrees_with_key(store: Any, site: tuple[list[str], list[str]]) -> None:
    keys, missing = site
    asked = [missing[0], *keys, keys[2], *missing[1:], keys[0]]  # repeats, missing ids in between
    found = store.keys_by_id(asked)
    assert found == _single_keys(store, asked)
    assert set(found) == set(keys)
    assert found[keys[0]].revoked_ms == NOW_MS + 5 and found[keys[1]].revoked_ms is None
    assert all(isinstance(r.spki_der, bytes) for r in found.values())
    assert store.keys_by_id([]) == {} and store.keys_by_id(missing) == {}


def test_heads_agrees_with_head(store: Any, site: tuple[list[str], list[str]]) -> None:
    keys, missing = site
    asked = [*missing, *keys, keys[1]]
    found = store.heads(asked)
    assert found == _single_heads(store, asked)
    assert set(found) == {keys[1], keys[2]}  # revoked key 0 and key 3 have no statement
    assert found[keys[1]] == _head(keys[1], 0, {"GPU-0": 42, "GPU-1": 7})
    assert found[keys[2]].seq == 1 and found[keys[2]].key_id == keys[2]
    assert store.heads([]) == {} and store.heads(missing) == {}


def test_batched_lookups_beyond_one_query(store: Any, site: tuple[list[str], list[str]]) -> None:
    """More ids than one query takes (500): the enrolled ones are found in every chunk."""
    keys, _ = site
    asked = [f"sha256:{i:064x}" for i in range(1_300)]
    for position, key_id in zip((0, 499, 500, 1_299), keys, strict=True):
        asked[position] = key_id
    assert len(store.keys_by_id(asked)) == 4
    assert store.keys_by_id(asked) == _single_keys(store, keys)
    assert store.heads(asked) == _single_heads(store, keys) and len(store.heads(asked)) == 2


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_batched_lookups_with_small_chunks(
    store: Any, site: tuple[list[str], list[str]], chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, missing = site
    monkeypatch.setattr(sql, "LOOKUP_CHUNK", chunk)  # both backends' batched lookups
    asked = [keys[3], *missing, keys[0], keys[3], keys[1], keys[2], missing[0]]
    assert store.keys_by_id(asked) == _single_keys(store, asked)
    assert store.heads(asked) == _single_heads(store, asked)


def test_postgres_lookup_of_ids_it_must_escape(postgres_url: str) -> None:
    """PostgreSQL text holds no NUL or lone surrogate: those ids are escaped as ``key`` does;
    several ids escaping to one text each get ``key``'s answer."""
    from collector.store.postgres import PostgresStore

    with PostgresStore(postgres_url, now_ms=NOW_MS) as store:
        key_id = _enroll_key(store, "node-a")
        asked = [key_id, "a\x00b", "a\\x00b", "k\ud800", "k\\ud800", key_id + "\x00"]
        assert store.keys_by_id(asked) == _single_keys(store, asked) == {key_id: store.key(key_id)}
        assert store.heads(asked) == _single_heads(store, asked) == {}


class _LoopingStore(Store):
    """A store with only the single-key lookups: ``Store``'s defaults batch them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def key(self, key_id: str) -> KeyRecord | None:
        self.calls.append("key")
        record: KeyRecord | None = self.inner.key(key_id)
        return record

    def head(self, key_id: str) -> ChainHead | None:
        self.calls.append("head")
        head: ChainHead | None = self.inner.head(key_id)
        return head


def test_store_default_batched_lookups_loop_over_the_single_ones(store: Any, site: tuple[list[str], list[str]]) -> None:
    keys, missing = site
    looping = _LoopingStore(store)
    asked = [*keys, *missing, keys[1]]
    assert looping.keys_by_id(asked) == store.keys_by_id(asked)
    assert looping.heads(asked) == store.heads(asked)
    distinct = len(set(asked))
    assert looping.calls == ["key"] * distinct + ["head"] * distinct


# -- ingest -----------------------------------------------------------------------------


class _CountingStore:
    """Delegates to a real store and counts the lookups ingest makes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def key(self, key_id: str) -> Any:
        self._count("key")
        return self.inner.key(key_id)

    def head(self, key_id: str) -> Any:
        self._count("head")
        return self.inner.head(key_id)

    def keys_by_id(self, key_ids: Sequence[str]) -> Any:
        self._count("keys_by_id")
        return self.inner.keys_by_id(key_ids)

    def heads(self, key_ids: Sequence[str]) -> Any:
        self._count("heads")
        return self.inner.heads(key_ids)

    def statement_digest(self, key_id: str, seq: int) -> Any:
        self._count("statement_digest")
        return self.inner.statement_digest(key_id, seq)


def _batch(nodes: Sequence[NodeChain]) -> list[tuple[str, Envelope]]:
    return [(n.key_id, n.next()) for n in nodes]


def _accepted(results: Sequence[IngestResult]) -> list[Accepted]:
    bad = [r for r in results if not isinstance(r, Accepted)]
    assert not bad, f"expected every statement accepted, got refusals: {bad}"
    return [r for r in results if isinstance(r, Accepted)]


@pytest.fixture
def _sql_trace(store: Any) -> Iterator[list[str]]:
    """The SQL statements a SQLite store runs (PostgreSQL: not traced, an empty list)."""
    statements: list[str] = []
    if isinstance(store, sqlite.SqliteStore):
        conn: sqlite3.Connection = store._c()
        conn.set_trace_callback(statements.append)
        yield statements
        conn.set_trace_callback(None)
    else:
        yield statements


def _lookups(statements: list[str]) -> int:
    """SELECTs of keys or chain heads among traced SQL."""
    return sum(1 for s in statements if s.lstrip().startswith("SELECT") and ("node_keys" in s or "chain_heads" in s))


@pytest.mark.parametrize("nodes", [5, 40])
def test_a_batch_from_n_nodes_makes_a_constant_number_of_lookups(
    store: Any, enroll: Enroll, nodes: int, _sql_trace: list[str]
) -> None:
    chains = [enroll(f"node-{i:03d}", gpus=1, buckets=4) for i in range(nodes)]
    counting = _CountingStore(store)
    ingestor = Ingestor(counting, clock_ms=lambda: NOW_MS)  # type: ignore[arg-type]
    for round_ in range(3):  # a first statement (no head yet), then chains that continue
        _sql_trace.clear()
        counting.calls.clear()
        results = _accepted(ingestor.ingest_batch(_batch(chains)))
        assert [r.seq for r in results] == [round_] * nodes
        # keys: at verification and again at commit (a key revoked in between is refused)
        assert counting.calls == {"keys_by_id": 2, "heads": 1}, counting.calls
        if isinstance(store, sqlite.SqliteStore):
            assert _lookups(_sql_trace) == 3, _sql_trace
    assert store.statement_count() == 3 * nodes


def test_duplicates_and_refusals_keep_their_lookups_batched(store: Any, enroll: Enroll) -> None:
    chains = [enroll(f"node-{i}", gpus=1, buckets=4) for i in range(4)]
    counting = _CountingStore(store)
    ingestor = Ingestor(counting, clock_ms=lambda: NOW_MS)  # type: ignore[arg-type]
    first = _batch(chains)
    _accepted(ingestor.ingest_batch(first))
    counting.calls.clear()
    stranger = Ed25519Signer.generate().key_id
    revoked = enroll("node-revoked", gpus=1, buckets=4)
    assert store.revoke_key(revoked.key_id, NOW_MS)
    batch = [
        *first,
        *_batch(chains),
        (stranger, first[0][1]),
        (revoked.key_id, revoked.next()),
        (stranger, first[1][1]),
    ]
    results = ingestor.ingest_batch(batch)
    assert [r.duplicate for r in results[:4] if isinstance(r, Accepted)] == [True] * 4
    assert all(isinstance(r, Accepted) and not r.duplicate for r in results[4:8])
    assert [(r.reason, r.key_id) for r in results[8:] if isinstance(r, Refused)] == [
        ("unknown_key", stranger),
        ("revoked_key", revoked.key_id),
        ("unknown_key", stranger),
    ]
    assert counting.calls == {"keys_by_id": 2, "heads": 1, "statement_digest": 4}, counting.calls


def test_a_key_revoked_between_batches_is_refused_in_the_next(store: Any, enroll: Enroll) -> None:
    a, b = enroll("node-a", gpus=1, buckets=4), enroll("node-b", gpus=1, buckets=4)
    ingestor = Ingestor(store, clock_ms=lambda: NOW_MS)
    _accepted(ingestor.ingest_batch(_batch([a, b])))
    assert store.revoke_key(a.key_id, NOW_MS + 1)
    results = ingestor.ingest_batch(_batch([a, b]))
    assert isinstance(results[0], Refused) and results[0].reason == "revoked_key"
    assert isinstance(results[1], Accepted) and results[1].seq == 1
    assert store.next_seq(a.key_id) == 1 and store.next_seq(b.key_id) == 2


def test_a_key_enrolled_between_batches_is_known_in_the_next(
    store: Any, enroll: Enroll, new_chain: Callable[..., NodeChain]
) -> None:
    a = enroll("node-a", gpus=1, buckets=4)
    late = new_chain("node-late", gpus=1, buckets=4)
    ingestor = Ingestor(store, clock_ms=lambda: NOW_MS)
    env = late.next()
    results = ingestor.ingest_batch([(a.key_id, a.next()), (late.key_id, env)])
    assert isinstance(results[1], Refused) and results[1].reason == "unknown_key"
    store.enroll("node-late", store.create_token(60, NOW_MS), late.signer.public_key().spki_der, "software", NOW_MS)
    _accepted(ingestor.ingest_batch([(a.key_id, a.next()), (late.key_id, env)]))


def test_verification_keys_are_reused_across_batches(store: Any, enroll: Enroll) -> None:
    chains = [enroll(f"node-{i}", gpus=1, buckets=4) for i in range(3)]
    ingestor = Ingestor(store, clock_ms=lambda: NOW_MS)
    keys._loaded.cache_clear()
    for _ in range(3):
        _accepted(ingestor.ingest_batch(_batch(chains)))
    info = keys._loaded.cache_info()
    assert (info.misses, info.hits) == (3, 6)


def test_an_id_the_store_cannot_take_is_refused_alone(store: Any, enroll: Enroll) -> None:
    """A key id a backend cannot even look up (SQLite: a lone surrogate is not UTF-8) fails
    the batched lookup; ingest then looks the keys up one by one, so only that envelope is
    refused, with the reason a batch of its own gives it."""
    a = enroll("node-a", gpus=1, buckets=4)
    ingestor = Ingestor(store, clock_ms=lambda: NOW_MS)
    bad_id = "sha256:\ud800"
    (alone,) = ingestor.ingest_batch([(bad_id, a.sign(a.window()))])
    assert isinstance(alone, Refused)
    results = ingestor.ingest_batch([(a.key_id, a.next()), (bad_id, a.sign(a.window())), (a.key_id, a.next())])
    assert isinstance(results[1], Refused) and results[1].reason == alone.reason
    assert [r.seq for r in _accepted([results[0], results[2]])] == [0, 1]


class _ConflictOnceStore(_CountingStore):
    """The first save_batch loses a race: another collector stored the same statements first."""

    def __init__(self, inner: Any, rival: Ingestor, rival_batch: list[tuple[str, Envelope]]) -> None:
        super().__init__(inner)
        self.rival = rival
        self.rival_batch = rival_batch
        self.saves = 0

    def save_batch(
        self,
        statements: Sequence[StatementRecord],
        heads: Sequence[ChainHead],
        conflicts: Sequence[ConflictRecord] = (),
        refusals: Sequence[RefusalRecord] = (),
    ) -> None:
        self.saves += 1
        if self.saves == 1:
            _accepted(self.rival.ingest_batch(self.rival_batch))
            raise StoreConflictError("another writer stored (key, seq) first")
        self.inner.save_batch(statements, heads, conflicts, refusals)


def test_a_retry_after_a_conflict_reads_the_heads_again(store: Any, enroll: Enroll) -> None:
    chains = [enroll(f"node-{i}", gpus=1, buckets=4) for i in range(3)]
    batch = _batch(chains)
    racing = _ConflictOnceStore(store, Ingestor(store, clock_ms=lambda: NOW_MS), batch)
    ingestor = Ingestor(racing, clock_ms=lambda: NOW_MS)  # type: ignore[arg-type]
    results = _accepted(ingestor.ingest_batch(batch))
    # The second attempt saw the rival's heads: the statements are duplicates, stored once.
    assert [(r.seq, r.duplicate) for r in results] == [(0, True)] * 3
    assert racing.calls["heads"] == 2 and racing.calls["keys_by_id"] == 2 and "head" not in racing.calls
    assert store.statement_count() == 3


def test_a_key_revoked_between_verification_and_commit_is_refused(store: Any, enroll: Enroll) -> None:
    """The collector verifies a batch while the one before it commits; a rotation committed
    meanwhile revokes the old key, and the verified batch must not extend that key's chain."""
    a, b = enroll("node-a", gpus=1, buckets=4), enroll("node-b", gpus=1, buckets=4)
    ingestor = Ingestor(store, clock_ms=lambda: NOW_MS)
    verified = ingestor.verify_batch([(a.key_id, a.next()), (b.key_id, b.next())])
    assert len(verified.verified) == 2
    store.revoke_key(a.key_id, NOW_MS)
    results = ingestor.commit_batch(verified)
    assert isinstance(results[0], Refused) and results[0].reason == "revoked_key" and results[0].seq == 0
    assert isinstance(results[1], Accepted) and results[1].seq == 0
    assert store.head(a.key_id) is None and store.statement_count() == 1
