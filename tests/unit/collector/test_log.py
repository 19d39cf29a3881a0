"""The collector's transparency log: leaves written with the statements, checkpoints that
are signed only when consistent with the previous one, proofs that verify."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from attestation.checkpoint import verify_checkpoint
from attestation.keys import Ed25519Signer, load_key_file
from attestation.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from collector.config import CollectorConfig
from collector.ingest import Ingestor
from collector.log import InconsistentLogError, Log, LogAudit, LogIdentityError
from collector.store.sqlite import MIGRATIONS, SqliteStore, migrate

# conftest.py's NodeChain, reached through fixtures (conftest modules are not imported).
NodeChain = Any
NOW_MS = 1_700_000_000_000
ORIGIN = "gpuaudit/test"


def _log(store: SqliteStore) -> Log:
    return Log(store, Ed25519Signer.generate(), ORIGIN)


def _edit_behind_the_collectors_back(store: Any, sql: str, params: tuple[object, ...] = ()) -> None:
    """Run ``sql`` (``?`` placeholders) directly on the store's database, on either backend."""
    if not isinstance(store, SqliteStore):
        sql = sql.replace("?", "%s")
    with store._tx() as conn:
        conn.execute(sql, params)


def test_every_accepted_statement_becomes_a_leaf_in_commit_order(
    store: SqliteStore, ingestor: Ingestor, enroll: Callable[..., NodeChain]
) -> None:
    a, b = enroll("node-a", gpus=1), enroll("node-b", gpus=1)
    batch1 = [(a.key_id, e) for e in a.take(2)]
    batch2 = [(b.key_id, b.next()), (a.key_id, a.next())]
    ingestor.ingest_batch(batch1)
    ingestor.ingest_batch(batch2)
    ingestor.ingest_batch(batch2)  # duplicates are not logged twice
    leaves = store.log_leaves()
    assert store.log_size() == 4
    assert [(lf.index, lf.key_id, lf.seq) for lf in leaves] == [
        (0, a.key_id, 0),
        (1, a.key_id, 1),
        (2, b.key_id, 0),
        (3, a.key_id, 2),
    ]
    envs = [e for _, e in batch1 + batch2]
    assert [lf.leaf_hash for lf in leaves] == [leaf_hash(e.pae()) for e in envs], "leaf hash = SHA-256(0x00 || PAE)"
    assert [lf.index for lf in store.log_leaves(1, 3)] == [1, 2]


def test_refused_statements_are_not_logged(
    store: SqliteStore, ingestor: Ingestor, enroll: Callable[..., NodeChain]
) -> None:
    a = enroll(gpus=1)
    ingestor.ingest_batch([(a.key_id, a.next())])
    a.next()  # skipped: the next one is a gap
    ingestor.ingest_batch([(a.key_id, a.next())])
    assert store.log_size() == 1


def test_statements_from_before_the_log_are_backfilled_in_commit_order(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, MIGRATIONS[:1], NOW_MS)
    signer = Ed25519Signer.generate()
    conn.execute(
        "INSERT INTO node_keys VALUES (?, 'n', 'ed25519', ?, 'software', 0, NULL)",
        (signer.key_id, signer.public_key().spki_der),
    )
    for seq in (1, 0, 2):  # committed out of seq order: the log follows commit order
        conn.execute(
            "INSERT INTO statements (key_id, seq, node_id, start_ms, end_ms, digest, payload, payload_type, "
            "signatures, received_ms) VALUES (?, ?, 'n', 0, 1, 'd', ?, 't', '[]', 0)",
            (signer.key_id, seq, b"p%d" % seq),
        )
    conn.close()
    with SqliteStore(path, now_ms=NOW_MS) as store:
        leaves = store.log_leaves()
        assert [lf.seq for lf in leaves] == [1, 0, 2]
        assert leaves[0].leaf_hash == leaf_hash(b"DSSEv1 1 t 2 p1")
    with SqliteStore(path, now_ms=NOW_MS) as store:  # idempotent
        assert store.log_size() == 3


def test_checkpoints_are_signed_stored_and_consistent(
    store: SqliteStore, ingestor: Ingestor, enroll: Callable[..., NodeChain]
) -> None:
    a = enroll(gpus=1)
    log = _log(store)
    empty = log.checkpoint(NOW_MS)
    assert empty.checkpoint.size == 0
    ingestor.ingest_batch([(a.key_id, e) for e in a.take(5)])
    first = log.checkpoint(NOW_MS + 1)
    cp = verify_checkpoint(first.note, ORIGIN, log.public_key(), origin=ORIGIN)
    assert cp.size == 5 and cp.root == log.root()
    assert log.checkpoint(NOW_MS + 2).note == first.note, "nothing appended: the same checkpoint"
    ingestor.ingest_batch([(a.key_id, e) for e in a.take(6)])
    second = log.checkpoint(NOW_MS + 3)
    assert second.checkpoint.size == 11
    stored = store.latest_checkpoint()
    assert stored is not None and stored.note == second.note and stored.tree_size == 11
    verify_consistency(5, 11, log.consistency_proof(5, 11), first.checkpoint.root, second.checkpoint.root)
    for lf in store.log_leaves():
        verify_inclusion(lf.leaf_hash, lf.index, 11, log.inclusion_proof(lf.index, 11), second.checkpoint.root)
    assert log.leaf_index(a.key_id, 10) == 10


def test_a_rewritten_log_is_never_signed(
    store: SqliteStore, ingestor: Ingestor, enroll: Callable[..., NodeChain]
) -> None:
    a = enroll(gpus=1)
    ingestor.ingest_batch([(a.key_id, e) for e in a.take(4)])
    signer = Ed25519Signer.generate()
    Log(store, signer, ORIGIN).checkpoint(NOW_MS)
    _edit_behind_the_collectors_back(
        store, "UPDATE log_leaves SET leaf_hash = ? WHERE leaf_index = 2", (leaf_hash(b"forged"),)
    )
    ingestor.ingest_batch([(a.key_id, a.next())])
    restarted = Log(store, signer, ORIGIN)
    with pytest.raises(InconsistentLogError) as exc:
        restarted.checkpoint(NOW_MS + 1)
    assert "root signed before" in str(exc.value)
    latest = store.latest_checkpoint()
    assert latest is not None and latest.tree_size == 4, "nothing was signed"


def test_a_truncated_log_is_never_signed(
    store: SqliteStore, ingestor: Ingestor, enroll: Callable[..., NodeChain]
) -> None:
    a = enroll(gpus=1)
    ingestor.ingest_batch([(a.key_id, e) for e in a.take(4)])
    signer = Ed25519Signer.generate()
    Log(store, signer, ORIGIN).checkpoint(NOW_MS)
    _edit_behind_the_collectors_back(store, "DELETE FROM log_leaves WHERE leaf_index = 3")
    with pytest.raises(InconsistentLogError):
        Log(store, signer, ORIGIN).checkpoint(NOW_MS + 1)


def test_open_creates_the_log_key_0600_next_to_the_db(tmp_path: Path) -> None:
    cfg = CollectorConfig(db=tmp_path / "c.db", collector_id="site-7")
    with SqliteStore(cfg.db, now_ms=NOW_MS) as store:
        log = Log.open(cfg, store)
        key_path = tmp_path / "c.db.log-key.pem"
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert log.origin == "log.example.com/gpuaudit/site-7", "a new log without log_origin: the placeholder"
        again = Log.open(cfg, store)
        assert again.public_key() == log.public_key(), "the key is created once, then loaded"


def test_an_unset_origin_is_a_placeholder_and_the_collector_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """c2sp.org/tlog-checkpoint: the origin SHOULD be a schema-less URL the operator owns."""
    cfg = CollectorConfig(db=tmp_path / "c.db")
    with SqliteStore(cfg.db, now_ms=NOW_MS) as store, caplog.at_level("WARNING", logger="collector.log"):
        log = Log.open(cfg, store)
    assert log.origin == "log.example.com/gpuaudit/collector-1"
    assert "://" not in log.origin and not log.origin.startswith("gpuaudit/")
    assert any("log_origin is not set" in r.getMessage() and "placeholder" in r.getMessage() for r in caplog.records)


def test_an_explicit_origin_is_used_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = CollectorConfig(db=tmp_path / "c.db", log_origin="log.site-7.example.org/gpuaudit")
    with SqliteStore(cfg.db, now_ms=NOW_MS) as store, caplog.at_level("WARNING", logger="collector.log"):
        log = Log.open(cfg, store)
        log.check_identity()
        signed = log.checkpoint(NOW_MS)
        assert signed.checkpoint.origin == "log.site-7.example.org/gpuaudit"
        Log.open(cfg, store).check_identity()  # a restart with the same origin
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_a_log_signed_before_log_origin_existed_keeps_its_origin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Compatibility: a store whose checkpoints name gpuaudit/<collector_id> goes on under it
    (vendors pinned it), with a warning to set it explicitly; set explicitly, it still works."""
    cfg = CollectorConfig(db=tmp_path / "c.db", collector_id="site-7")
    with SqliteStore(cfg.db, now_ms=NOW_MS) as store:
        old = Log(store, load_key_file(_key(cfg)), "gpuaudit/site-7")
        old.checkpoint(NOW_MS)
        with caplog.at_level("WARNING", logger="collector.log"):
            log = Log.open(cfg, store)
        assert log.origin == "gpuaudit/site-7"
        log.check_identity()
        assert any("log_origin = 'gpuaudit/site-7'" in r.getMessage() for r in caplog.records)
        explicit = CollectorConfig(db=cfg.db, collector_id="site-7", log_origin="gpuaudit/site-7")
        Log.open(explicit, store).check_identity()
        # Naming another origin for an existing log is refused, as before.
        other = CollectorConfig(db=cfg.db, collector_id="site-7", log_origin="log.example.org/gpuaudit")
        with pytest.raises(LogIdentityError, match="origin 'gpuaudit/site-7'"):
            Log.open(other, store).check_identity()


def _key(cfg: CollectorConfig) -> Path:
    from attestation.keys import create_key_file

    create_key_file(cfg.log_key_path())
    return cfg.log_key_path()


@pytest.mark.parametrize(
    ("origin", "needle"),
    [
        ("", "non-empty"),
        ("log example.org", "without spaces"),
        ("log.example.org/a+b", "'+'"),
        ("https://log.example.org/gpuaudit", "schema-less, e.g. 'log.example.org/gpuaudit'"),
    ],
)
def test_a_log_origin_that_is_not_a_note_key_name_is_a_config_error(tmp_path: Path, origin: str, needle: str) -> None:
    from collector.config import load_collector_config
    from core.errors import ConfigError

    path = tmp_path / "collector.toml"
    path.write_text(f"log_origin = {origin!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match="log_origin") as exc:
        load_collector_config(path, {})
    assert needle in str(exc.value)


def test_a_placeholder_origin_set_explicitly_still_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = CollectorConfig(db=tmp_path / "c.db", log_origin="log.example.com/gpuaudit")
    with SqliteStore(cfg.db, now_ms=NOW_MS) as store, caplog.at_level("WARNING", logger="collector.log"):
        assert Log.open(cfg, store).origin == "log.example.com/gpuaudit"
    assert any("placeholder" in r.getMessage() for r in caplog.records)


def test_open_takes_the_key_another_collector_created_at_the_same_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two collectors on one PostgreSQL store start together with one key path: the one
    that loses the race to create the key loads the winner's instead of failing to start."""
    import collector.log

    real_create = collector.log.create_key_file

    def lose_the_race(path: Path) -> Any:
        real_create(path)  # the other collector, a moment earlier
        return real_create(path)

    monkeypatch.setattr(collector.log, "create_key_file", lose_the_race)
    cfg = CollectorConfig(db=tmp_path / "c.db", collector_id="site-7")
    with SqliteStore(cfg.db, now_ms=NOW_MS) as store:
        log = Log.open(cfg, store)
    assert log.public_key() == load_key_file(tmp_path / "c.db.log-key.pem").public_key()


def test_collectors_sharing_a_store_must_sign_as_one_log(
    store: SqliteStore, ingestor: Ingestor, enroll: Callable[..., NodeChain]
) -> None:
    a = enroll(gpus=1)
    ingestor.ingest_batch([(a.key_id, e) for e in a.take(3)])
    key = Ed25519Signer.generate()
    first = Log(store, key, ORIGIN)
    first.check_identity()  # an empty checkpoint history: anything goes
    first.checkpoint(NOW_MS)

    Log(store, key, ORIGIN).check_identity()  # the same origin and key: a restart, or a peer
    with pytest.raises(LogIdentityError, match="origin 'gpuaudit/test'; this collector would sign as 'gpuaudit/other'"):
        Log(store, key, "gpuaudit/other").check_identity()
    other_key = Ed25519Signer.generate()
    with pytest.raises(LogIdentityError, match=f"not signed by this collector's log key {other_key.key_id}") as exc:
        Log(store, other_key, ORIGIN).check_identity()
    assert "--accept-log-key-change" in exc.value.diagnostics()

    # A lost key, replaced on purpose: accepted once, and the log goes on under the new key.
    replaced = Log(store, other_key, ORIGIN)
    replaced.check_identity(accept_key_change=True)
    ingestor.ingest_batch([(a.key_id, a.next())])
    cp = replaced.checkpoint(NOW_MS + 1)
    verify_checkpoint(cp.note, ORIGIN, other_key.public_key(), origin=ORIGIN)
    assert cp.checkpoint.size == 4
    Log(store, other_key, ORIGIN).check_identity()
    with pytest.raises(LogIdentityError):
        Log(store, key, ORIGIN).check_identity()


def test_proofs_reach_into_tiles_read_back_from_the_store(
    store: SqliteStore, ingestor: Ingestor, enroll: Callable[..., NodeChain], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiles of 4 leaves and sync pages of 3: what the tree keeps in memory is a tile root per
    4 leaves, and every proof below a tile root is computed from leaves read back."""
    import collector.log as log_module

    monkeypatch.setattr(log_module, "_SYNC_PAGE", 3)
    a, b = enroll("node-a", gpus=1), enroll("node-b", gpus=1)
    for _ in range(5):
        ingestor.ingest_batch([(a.key_id, a.next()), (b.key_id, b.next()), (a.key_id, a.next())])
    log = Log(store, Ed25519Signer.generate(), ORIGIN, tile_height=2)
    first = log.checkpoint(NOW_MS)
    assert first.checkpoint.size == 15
    ingestor.ingest_batch([(b.key_id, e) for e in b.take(6)])
    second = log.checkpoint(NOW_MS + 1)
    assert second.checkpoint.size == 21
    assert log._tree.memory_bytes() < 32 * 21, "tile roots only, not every leaf"
    leaves = store.log_leaves()
    assert log.root() == MerkleTree([lf.leaf_hash for lf in leaves]).root()
    for lf in leaves:
        assert log.leaf_index(lf.key_id, lf.seq) == lf.index
        assert log.leaf_hash(lf.index) == lf.leaf_hash
        verify_inclusion(lf.leaf_hash, lf.index, 21, log.inclusion_proof(lf.index, 21), second.checkpoint.root)
        if lf.index < 15:
            verify_inclusion(lf.leaf_hash, lf.index, 15, log.inclusion_proof(lf.index, 15), first.checkpoint.root)
    for old in range(1, 21):
        verify_consistency(old, 21, log.consistency_proof(old, 21), log.root(old), second.checkpoint.root)
    assert log.leaf_index(b.key_id, 99) is None, "never stored"
    ingestor.ingest_batch([(b.key_id, b.next())])
    assert log.leaf_index(b.key_id, 11) is None, "stored, but not yet in the synced log"
    log.sync()
    assert log.leaf_index(b.key_id, 11) == 21


def test_a_leaf_changed_after_it_was_synced_gets_no_proof_and_fails_the_audit(
    store: SqliteStore, ingestor: Ingestor, enroll: Callable[..., NodeChain]
) -> None:
    a = enroll(gpus=1)
    ingestor.ingest_batch([(a.key_id, e) for e in a.take(12)])
    signer = Ed25519Signer.generate()
    log = Log(store, signer, ORIGIN, tile_height=2)
    signed = log.checkpoint(NOW_MS)
    assert log.audit() == LogAudit(12, 3, 0, (), 12, True)
    _edit_behind_the_collectors_back(
        store, "UPDATE log_leaves SET leaf_hash = ? WHERE leaf_index = 5", (leaf_hash(b"forged"),)
    )
    log._tree._cache.clear()  # as in a long-running collector, whose few cached tiles are newer ones
    with pytest.raises(InconsistentLogError, match="leaves 4..7 no longer hash"):
        log.inclusion_proof(5, 12)
    with pytest.raises(InconsistentLogError):
        log.consistency_proof(6, 12)
    # A proof that needs only the changed tile's root (kept in memory) is still the signed tree's.
    leaf1 = store.log_leaves(1, 2)[0].leaf_hash
    verify_inclusion(leaf1, 1, 12, log.inclusion_proof(1, 12), signed.checkpoint.root)
    # A restarted log takes tile 1 by its stored root, so the edit is not read at start; the
    # audit recomputes everything from the leaves and finds it.
    audit = Log(store, signer, ORIGIN, tile_height=2).audit()
    assert audit == LogAudit(12, 2, 0, (1,), 12, False) and not audit.ok


def test_a_restart_takes_whole_tiles_by_their_stored_roots(
    store: SqliteStore, ingestor: Ingestor, enroll: Callable[..., NodeChain], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = enroll(gpus=1)
    ingestor.ingest_batch([(a.key_id, e) for e in a.take(10)])
    signer = Ed25519Signer.generate()
    first = Log(store, signer, ORIGIN, tile_height=2)
    first.checkpoint(NOW_MS)
    assert store.log_tile_roots(2, 0, 100) == [first._tree.tile_root(t) for t in range(2)]
    ingestor.ingest_batch([(a.key_id, e) for e in a.take(5)])

    read: list[tuple[int, int | None]] = []
    real = store.log_leaves

    def counting(start: int = 0, end: int | None = None) -> Any:
        read.append((start, end))
        return real(start, end)

    monkeypatch.setattr(store, "log_leaves", counting)
    restarted = Log(store, signer, ORIGIN, tile_height=2)
    cp = restarted.checkpoint(NOW_MS + 1)
    assert cp.checkpoint.size == 15
    assert read and read[0][0] == 8, "leaves 0..7 were not read: their two tiles' roots were"
    assert cp.checkpoint.root == MerkleTree([lf.leaf_hash for lf in real()]).root()
    assert store.log_tile_roots(2, 0, 100) == [restarted._tree.tile_root(t) for t in range(3)]
    # A stored tile root edited: the restarted tree no longer leads to the signed root.
    _edit_behind_the_collectors_back(
        store, "UPDATE log_tiles SET root = ? WHERE height = 2 AND tile = 0", (leaf_hash(b"forged"),)
    )
    with pytest.raises(InconsistentLogError, match="root signed before"):
        Log(store, signer, ORIGIN, tile_height=2).checkpoint(NOW_MS + 2)
    audit = Log(store, signer, ORIGIN, tile_height=2).audit()
    assert (audit.bad_tiles, audit.checkpoint_ok, audit.ok) == ((0,), True, False)
    # A missing tile root is counted, and the next sync stores it again.
    _edit_behind_the_collectors_back(store, "DELETE FROM log_tiles WHERE height = 2 AND tile = 1")
    assert Log(store, signer, ORIGIN, tile_height=2).audit().tiles_missing == 1
    Log(store, signer, ORIGIN, tile_height=2).sync()
    audit = Log(store, signer, ORIGIN, tile_height=2).audit()
    assert (audit.tiles_missing, audit.tiles_checked, audit.bad_tiles) == (0, 2, (0,))


def test_between_checkpoints_the_log_follows_the_store_a_little_at_a_time(
    store: SqliteStore, ingestor: Ingestor, enroll: Callable[..., NodeChain], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpointer syncs every sync_s, so the leaves of a whole period are never read in
    one go; a store error while syncing is logged and the checkpointer keeps going."""
    import asyncio

    from collector.errors import StoreError
    from collector.logservice import Checkpointer

    a = enroll(gpus=1)
    log = _log(store)
    checkpointer = Checkpointer(log, period_s=3600, clock_ms=lambda: NOW_MS, sync_s=0.02)
    real_sync = log.sync
    failures = [1]

    def flaky_sync() -> int:
        if failures[0]:
            failures[0] -= 1
            raise StoreError("database is restarting")
        return real_sync()

    async def run() -> None:
        checkpointer.start()
        while checkpointer.latest() is None:  # the first checkpoint is signed at start
            await asyncio.sleep(0.01)
        for i in range(3):
            await asyncio.to_thread(ingestor.ingest_batch, [(a.key_id, e) for e in a.take(2)])
            for _ in range(200):
                if log.size == 2 * (i + 1):
                    break
                await asyncio.sleep(0.01)
            assert log.size == 2 * (i + 1)
            if i == 0:
                monkeypatch.setattr(log, "sync", flaky_sync)
        await checkpointer.stop()

    asyncio.run(run())
    assert failures == [0], "the failing sync was tried"
    latest = store.latest_checkpoint()
    assert latest is not None and latest.tree_size == 0, "one checkpoint, signed at start; the rest were syncs"


def test_the_log_service_answers_data_loss_for_a_tile_that_changed(
    store: SqliteStore, ingestor: Ingestor, enroll: Callable[..., NodeChain]
) -> None:
    import asyncio

    import grpc

    from attestation.v1 import collector_pb2 as pb
    from collector.logservice import Checkpointer, LogService

    class AbortedError(Exception):
        pass

    class Context:
        code: grpc.StatusCode | None = None
        details = ""

        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            self.code, self.details = code, details
            raise AbortedError

    a = enroll(gpus=1)
    ingestor.ingest_batch([(a.key_id, e) for e in a.take(12)])
    log = Log(store, Ed25519Signer.generate(), ORIGIN, tile_height=2)
    checkpointer = Checkpointer(log, period_s=0)
    assert checkpointer.sign_now() is not None
    service = LogService(checkpointer)
    request = pb.GetInclusionProofRequest(statement=pb.StatementRef(key_id=a.key_id, seq=5))
    answer = asyncio.run(service.GetInclusionProof(request, Context()))
    assert (answer.leaf_index, answer.tree_size, len(answer.hashes)) == (5, 12, 4)

    _edit_behind_the_collectors_back(
        store, "UPDATE log_leaves SET leaf_hash = ? WHERE leaf_index = 5", (leaf_hash(b"forged"),)
    )
    log._tree._cache.clear()
    context = Context()
    with pytest.raises(AbortedError):
        asyncio.run(service.GetInclusionProof(request, context))
    assert context.code == grpc.StatusCode.DATA_LOSS and "inconsistent_log" in context.details


def test_malformed_stored_hashes_are_an_inconsistent_log_not_a_crash(
    store: SqliteStore, ingestor: Ingestor, enroll: Callable[..., NodeChain]
) -> None:
    a = enroll(gpus=1)
    ingestor.ingest_batch([(a.key_id, e) for e in a.take(9)])
    signer = Ed25519Signer.generate()
    log = Log(store, signer, ORIGIN, tile_height=2)
    log.checkpoint(NOW_MS)
    _edit_behind_the_collectors_back(store, "UPDATE log_tiles SET root = ? WHERE height = 2 AND tile = 1", (b"short",))
    with pytest.raises(InconsistentLogError, match="stored log tile root is malformed"):
        Log(store, signer, ORIGIN, tile_height=2).sync()
    _edit_behind_the_collectors_back(store, "UPDATE log_leaves SET leaf_hash = ? WHERE leaf_index = 8", (b"short",))
    with pytest.raises(InconsistentLogError, match="log leaf 8 is malformed"):
        Log(store, signer, ORIGIN, tile_height=2).audit()
    _edit_behind_the_collectors_back(store, "UPDATE log_leaves SET leaf_hash = ? WHERE leaf_index = 2", (b"short",))
    log._tree._cache.clear()
    with pytest.raises(InconsistentLogError, match="tile 0"):
        log.inclusion_proof(2, 9)
