"""The collector's transparency log: an RFC 9162 tree over every accepted statement.

The store appends one leaf per accepted statement in the transaction that stores it
(``Store.save_batch``); this module reads those leaf hashes, serves roots and proofs, and
signs checkpoints (c2sp.org/tlog-checkpoint) with the log's Ed25519 key.

Memory stays small however long the log grows: the tree in memory is an
``attestation.merkle.TiledMerkleTree`` (64 bytes per 1,024 leaves; a proof reads at most
two tiles of leaf hashes back from the store and checks them against the tile roots it
computed when it first read them), leaves are synced page by page, and a statement's leaf
index is looked up in the store (``Store.leaf_index``), not kept in a dict.

The log never signs a checkpoint inconsistent with the previous one
(c2sp.org/tlog-checkpoint, "Signatures"): before signing, the previous checkpoint's size
and root are taken from its stored note and a consistency proof from it to the new tree
is verified; if the store's leaves no longer lead to that root (the database was edited
or restored from an older backup), ``Log.checkpoint`` raises ``InconsistentLogError``
and signs nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec

from attestation.checkpoint import (
    Checkpoint,
    SignedCheckpoint,
    parse_checkpoint_body,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
)
from attestation.errors import CheckpointError, ProofError
from attestation.heads import KeyHead, commit, parse_heads_extension
from attestation.keys import KeyFileExistsError, PublicKey, Signer, create_key_file, load_key_file
from attestation.merkle import TiledMerkleTree, TileMismatchError, verify_consistency
from collector.config import PLACEHOLDER_LOG_HOST, CollectorConfig
from collector.errors import CollectorError
from collector.store.base import CheckpointRecord, StatementRecord, Store

_logger = logging.getLogger(__name__)

_SYNC_PAGE = 10_000  # leaves read per query when syncing


class _GpuSerial(msgspec.Struct):
    serial: str | None = None


class _Predicate(msgspec.Struct):
    gpus: list[_GpuSerial] = msgspec.field(default_factory=list)


class _Serials(msgspec.Struct):
    """Just enough of a statement to read the GPU serials it names (for the committed heads)."""

    predicate: _Predicate = msgspec.field(default_factory=_Predicate)


_serials_decoder = msgspec.json.Decoder(_Serials)


def _serials(payload: bytes) -> tuple[str, ...]:
    try:
        doc = _serials_decoder.decode(payload)
    except (msgspec.DecodeError, ValueError):  # stored statements were verified; be safe anyway
        return ()
    return tuple(sorted({g.serial for g in doc.predicate.gpus if g.serial}))


class LogError(CollectorError):
    """The transparency log cannot be read, or a proof cannot be served."""

    reason = "log"


class LogIdentityError(LogError):
    """This collector would sign the store's log under another origin or key than before."""

    reason = "log_identity"

    def diagnostics(self) -> str:
        return (
            f"{self.reason}: {self}\n"
            "A transparency log has one origin and one signing key: vendors pin them, and every "
            "collector that shares a store signs checkpoints of the same log. Give this collector "
            "the same collector_id and the same log_key file as the others. If the log key was "
            "lost, start one collector once with --accept-log-key-change: vendors who pinned the "
            "old key will see log_key_mismatch until they are given the new one "
            "(gpuaudit-collector log public-key)."
        )


class InconsistentLogError(LogError):
    """The stored leaves contradict a checkpoint the log signed before: nothing was signed."""

    reason = "inconsistent_log"

    def diagnostics(self) -> str:
        return (
            f"{self.reason}: {self}\n"
            "The collector refuses to sign a checkpoint that contradicts one it signed before: "
            "the store's log leaves were changed or the database was restored from an older backup. "
            "Keep the database as it is (it is evidence) and restore the newest backup that still "
            "contains every signed checkpoint's leaves."
        )


@contextmanager
def _tiles_checked() -> Iterator[None]:
    """A tile whose leaves changed in the store since they were synced is an inconsistent log."""
    try:
        yield
    except TileMismatchError as exc:
        raise InconsistentLogError(f"the store's log leaves changed after they were read: {exc}") from exc


@dataclass(frozen=True)
class LogAudit:
    """What ``Log.audit`` found: every stored tile root and the latest checkpoint's root
    recomputed from the leaves."""

    leaves: int
    tiles_checked: int
    tiles_missing: int  # complete tiles with no stored root yet (no collector has synced them)
    bad_tiles: tuple[int, ...]  # stored roots that their leaves do not hash to
    checkpoint_size: int | None  # None: no checkpoint signed yet
    checkpoint_ok: bool | None

    @property
    def ok(self) -> bool:
        return not self.bad_tiles and self.checkpoint_ok is not False


def resolve_origin(cfg: CollectorConfig, store: Store) -> str:
    """The origin this collector signs its log under, warning (once per start) when the
    operator has not named the log.

    1. ``log_origin`` when set: it is the operator's, and the store's log must have it too
       (``Log.check_identity``);
    2. unset, and the store's latest checkpoint has the origin of logs signed before
       ``log_origin`` existed (``gpuaudit/<collector_id>``): that one, so an existing log
       goes on verifying for the vendors who pinned it;
    3. unset otherwise: the placeholder ``log.example.com/gpuaudit/<collector_id>``.
    """
    if cfg.log_origin:
        if cfg.log_origin.split("/", 1)[0] == PLACEHOLDER_LOG_HOST:
            _logger.warning(
                "log_origin %r is a placeholder: name the transparency log after a domain you own "
                "(e.g. log.<your domain>/gpuaudit; c2sp.org/tlog-checkpoint)",
                cfg.log_origin,
            )
        return cfg.log_origin
    previous = store.latest_checkpoint()
    stored: str | None = None
    if previous is not None:
        try:
            stored = parse_checkpoint_body(parse_note(previous.note)[0]).origin
        except CheckpointError:
            stored = None  # check_identity says why
    if stored == cfg.legacy_log_origin:
        _logger.warning(
            "log_origin is not set: the store's log keeps its origin %r; set log_origin = %r in the "
            "collector config to keep it explicitly (an origin cannot change once vendors pin it)",
            stored,
            stored,
        )
        return stored
    _logger.warning(
        "log_origin is not set: the transparency log is signed as the placeholder %r. Set log_origin "
        'to a schema-less name you own (e.g. "log.<your domain>/gpuaudit"; c2sp.org/tlog-checkpoint) '
        "before vendors pin it: a log keeps its origin for life",
        cfg.placeholder_log_origin,
    )
    return cfg.placeholder_log_origin


class Log:
    """Roots, proofs and signed checkpoints over the store's log leaves. Thread-safe."""

    def __init__(
        self, store: Store, signer: Signer, origin: str, *, tile_height: int = 10, cache_tiles: int = 8
    ) -> None:
        """``cache_tiles``: tiles read back kept for the next proofs (about 150 KB each)."""
        self._store = store
        self._signer = signer
        self._origin = origin
        self._tree = TiledMerkleTree(self._read_leaves, tile_height=tile_height, cache_tiles=cache_tiles)
        self._tiles_stored = 0  # tiles whose roots are known to be in the store
        self._lock = threading.RLock()
        # Per-key heads at tree size _heads_size (attestation/heads.py); None: not loaded yet.
        self._heads: dict[str, KeyHead] = {}
        self._heads_size: int | None = None

    @classmethod
    def open(cls, cfg: CollectorConfig, store: Store, *, cache_tiles: int = 8) -> Log:
        """The log of ``cfg``'s collector; its key file is created (0600) on first use."""
        path: Path = cfg.log_key_path()
        if path.exists():
            signer = load_key_file(path)
        else:
            try:
                signer = create_key_file(path)
                _logger.info("created the log signing key %s (%s)", path, signer.key_id)
            except KeyFileExistsError:  # another collector sharing the key created it just now
                signer = load_key_file(path)
        return cls(store, signer, resolve_origin(cfg, store), cache_tiles=cache_tiles)

    @property
    def origin(self) -> str:
        return self._origin

    def public_key(self) -> PublicKey:
        return self._signer.public_key()

    @property
    def signer(self) -> Signer:
        """The log key, also used to sign what the collector itself vouches for in a bundle
        (tenant KYC summaries)."""
        return self._signer

    def sync(self) -> int:
        """Read what was appended since the last call; return the tree size.

        Whole tiles whose roots are stored (``log_tiles``) are taken by their roots, so a
        restart reads one row per 1,024 leaves; the leaves after them are read a page at a
        time, and the roots of the tiles they complete are stored for the next restart.
        A stored root that does not match its leaves is found when a proof reads the tile
        back, and before signing by the consistency check against the previous checkpoint.
        """
        with self._lock:
            tree, height = self._tree, self._tree.tile_height
            if tree.size % (1 << height) == 0:
                complete = self._store.log_size() >> height
                while tree.complete_tiles < complete:
                    roots = self._store.log_tile_roots(
                        height, tree.complete_tiles, min(complete, tree.complete_tiles + _SYNC_PAGE)
                    )
                    if not roots:
                        break
                    try:
                        tree.append_tiles(roots)
                    except ValueError as exc:
                        raise InconsistentLogError(f"a stored log tile root is malformed: {exc}") from exc
                self._tiles_stored = max(self._tiles_stored, tree.complete_tiles)
            while True:
                start = tree.size
                page = self._store.log_leaves(start, start + _SYNC_PAGE)
                for leaf in page:
                    if leaf.index != tree.size:
                        raise LogError(f"log leaf {leaf.index} follows leaf {tree.size - 1}: leaves are missing")
                    try:
                        tree.append(leaf.leaf_hash)
                    except ValueError as exc:
                        raise InconsistentLogError(f"log leaf {leaf.index} is malformed: {exc}") from exc
                if len(page) < _SYNC_PAGE:
                    break
            if self._tiles_stored < tree.complete_tiles:
                first = self._tiles_stored
                self._store.save_log_tile_roots(
                    height, first, [tree.tile_root(t) for t in range(first, tree.complete_tiles)]
                )
                self._tiles_stored = tree.complete_tiles
            return tree.size

    def audit(self) -> LogAudit:
        """Recompute the log from its leaves alone, a page at a time (O(n) reads, O(n / tile)
        memory): every stored tile root must be what its leaves hash to, and the latest
        checkpoint's root what its first ``size`` leaves hash to. ``sync`` trusts stored tile
        roots (a proof reading a tile back checks it); this is the full check, for operators
        to run from time to time (``gpuaudit-collector log audit``)."""
        height = self._tree.tile_height
        fresh = TiledMerkleTree(self._read_leaves, tile_height=height)
        latest = self._store.latest_checkpoint()
        cp_size = cp_root = None
        if latest is not None:
            try:
                body = parse_checkpoint_body(parse_note(latest.note)[0])
            except CheckpointError as exc:
                raise InconsistentLogError(f"the stored latest checkpoint cannot be read: {exc}") from exc
            cp_size, cp_root = body.size, body.root
        cp_ok: bool | None = True if cp_size == 0 and cp_root == fresh.root() else None
        checked = missing = 0
        bad: list[int] = []
        while True:
            page = self._store.log_leaves(fresh.size, fresh.size + _SYNC_PAGE)
            for leaf in page:
                if leaf.index != fresh.size:
                    raise LogError(f"log leaf {leaf.index} follows leaf {fresh.size - 1}: leaves are missing")
                try:
                    fresh.append(leaf.leaf_hash)
                except ValueError as exc:
                    raise InconsistentLogError(f"log leaf {leaf.index} is malformed: {exc}") from exc
                if fresh.size == cp_size:
                    cp_ok = fresh.root() == cp_root
            tile, end = checked + missing + len(bad), fresh.complete_tiles
            while tile < end:
                stored = self._store.log_tile_roots(height, tile, end)
                for root in stored:
                    if root == fresh.tile_root(tile):
                        checked += 1
                    else:
                        bad.append(tile)
                    tile += 1
                if tile < end:  # the next one is not stored
                    missing += 1
                    tile += 1
            if len(page) < _SYNC_PAGE:
                break
        if cp_size is not None and cp_ok is None:
            cp_ok = False  # signed at a size beyond the leaves there are
        return LogAudit(fresh.size, checked, missing, tuple(bad), cp_size, cp_ok)

    def _read_leaves(self, start: int, end: int) -> list[bytes]:
        """The leaf hashes of one tile, read back for a proof (TiledMerkleTree checks them)."""
        leaves = self._store.log_leaves(start, end)
        if [leaf.index for leaf in leaves] != list(range(start, start + len(leaves))):
            raise LogError(f"log leaves {start}..{end - 1} read back with gaps")
        return [leaf.leaf_hash for leaf in leaves]

    @property
    def size(self) -> int:
        return self._tree.size

    def leaf_index(self, key_id: str, seq: int) -> int | None:
        """The leaf index of statement (key_id, seq), None if it is not (yet) in the synced log."""
        index = self._store.leaf_index(key_id, seq)
        return index if index is not None and index < self._tree.size else None

    def leaf_hash(self, index: int) -> bytes:
        with self._lock, _tiles_checked():
            return self._tree.leaf(index)

    def root(self, size: int | None = None) -> bytes:
        with self._lock, _tiles_checked():
            return self._tree.root(size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._lock, _tiles_checked():
            return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        with self._lock, _tiles_checked():
            return self._tree.consistency_proof(old_size, size)

    def heads(self, size: int) -> list[KeyHead]:
        """The head of every key among the log's first ``size`` leaves, in key id order: the
        statement with the highest seq (attestation/heads.py). ``size`` must not exceed the
        synced tree's. Incremental: from the heads committed last (``Store.committed_heads``)
        and the leaves after them."""
        with self._lock:
            return sorted(self._heads_at(size)[0].values(), key=lambda h: h.key_id)

    def _heads_at(self, size: int) -> tuple[dict[str, KeyHead], dict[str, KeyHead]]:
        """(heads at ``size``, the heads that changed since the store's committed ones)."""
        if size > self._tree.size:
            raise LogError(f"heads asked at size {size}, beyond the log's {self._tree.size}")
        stored_size, stored = self._store.committed_heads()
        if self._heads_size is None or self._heads_size > size or self._heads_size < stored_size <= size:
            if stored_size <= size:
                self._heads, self._heads_size = {h.key_id: h for h in stored}, stored_size
            else:  # another collector committed beyond this size: recompute from the first leaf
                self._heads, self._heads_size = {}, 0
        base = self._heads_size
        latest: dict[str, tuple[int, int]] = {}  # key id -> (seq, leaf index), among leaves base..size-1
        start = base
        while start < size:
            page = self._store.log_leaves(start, min(size, start + _SYNC_PAGE))
            if not page or page[0].index != start:
                raise LogError(f"log leaves from {start} are missing: cannot compute the heads at size {size}")
            for leaf in page:
                old = latest.get(leaf.key_id)
                if old is None or leaf.seq > old[0]:
                    latest[leaf.key_id] = (leaf.seq, leaf.index)
            start = page[-1].index + 1
        changed: dict[str, KeyHead] = {}
        for key_id, (seq, index) in latest.items():
            current = self._heads.get(key_id)
            if current is not None and current.seq >= seq:
                continue
            changed[key_id] = self._head_of(key_id, seq, index)
        self._heads.update(changed)
        self._heads_size = size
        if stored_size < size:
            # What the store lacks: the heads that changed after its committed size.
            for h in self._heads.values():
                if h.leaf_index >= stored_size:
                    changed.setdefault(h.key_id, h)
        return self._heads, changed

    def _head_of(self, key_id: str, seq: int, index: int) -> KeyHead:
        rows = self._store.log_statements(index, index + 1)
        rec: StatementRecord | None = rows[0][1] if rows and rows[0][0] == index else None
        if rec is not None and rec.key_id == key_id and rec.seq == seq:
            return KeyHead(key_id, rec.node_id, seq, index, rec.digest, rec.end_ms, _serials(rec.payload))
        # Its payload aged out (retention): the chain head and enrollment still say what it was.
        head = self._store.heads([key_id]).get(key_id)
        key = self._store.key(key_id)
        if head is None or head.seq != seq or key is None:
            raise LogError(f"the statement {key_id}/{seq} of log leaf {index} cannot be read to commit its head")
        return KeyHead(key_id, key.node_id, seq, index, head.digest, head.end_ms, ())

    def check_identity(self, *, accept_key_change: bool = False) -> None:
        """Refuse to sign under another origin or key than the store's latest checkpoint.

        Several collectors may share one store (PostgreSQL); they must then share the log's
        origin (``collector_id``) and signing key, or the log they sign would carry
        checkpoints that no single pinned key verifies. Raises LogIdentityError. A new key
        for the same origin is accepted only with ``accept_key_change`` (a lost key)."""
        previous = self._store.latest_checkpoint()
        if previous is None:
            return
        try:
            body = parse_checkpoint_body(parse_note(previous.note)[0])
        except CheckpointError as exc:
            raise LogIdentityError(f"the store's latest checkpoint cannot be read: {exc}") from exc
        if body.origin != self._origin:
            raise LogIdentityError(
                f"the store's log has origin {body.origin!r}; this collector would sign as {self._origin!r}"
            )
        try:
            self.verify_own(previous.note)
        except CheckpointError as exc:
            if not accept_key_change:
                raise LogIdentityError(
                    f"the store's latest checkpoint is not signed by this collector's log key "
                    f"{self.public_key().key_id}: {exc}"
                ) from exc
            _logger.warning(
                "the log key changed to %s (accepted by the operator); vendors pinning the old one need the new one",
                self.public_key().key_id,
            )

    def verify_own(self, note: str) -> Checkpoint:
        """Verify a checkpoint this log signed (e.g. one a vendor kept). Raises CheckpointError."""
        return verify_checkpoint(note, self._origin, self.public_key(), origin=self._origin)

    def checkpoint(self, now_ms: int) -> SignedCheckpoint:
        """Sign (and store) a checkpoint of the whole log, unless it contradicts the previous one.

        Steps:
        1. read the leaves committed since the last sync;
        2. take the previous checkpoint's size and root from its stored note;
        3. verify a consistency proof from it to the current tree (RFC 9162 §2.1.4.2),
           raising InconsistentLogError otherwise;
        4. if nothing was appended and the previous note is ours and commits to the same
           per-key heads, return it unchanged;
        5. sign the new checkpoint, with the heads line (attestation/heads.py) as its
           extension, and store it and the heads.
        """
        with self._lock, _tiles_checked():
            # 1.
            size = self.sync()
            root = self._tree.root()
            # 2.
            previous = self._store.latest_checkpoint()
            if previous is not None:
                try:
                    prev = parse_checkpoint_body(parse_note(previous.note)[0])
                except CheckpointError as exc:
                    raise InconsistentLogError(f"the stored previous checkpoint cannot be read: {exc}") from exc
                # 3.
                if prev.size > size:
                    raise InconsistentLogError(
                        f"the log has {size} leaves but a checkpoint was signed at size {prev.size}"
                    )
                try:
                    verify_consistency(prev.size, size, self._tree.consistency_proof(prev.size, size), prev.root, root)
                except ProofError as exc:
                    raise InconsistentLogError(
                        f"the log's first {prev.size} leaves no longer lead to the root signed before: {exc}"
                    ) from exc
            heads, changed = self._heads_at(size)
            commitment = commit(list(heads.values()), now_ms)
            # 4.
            if previous is not None and prev.size == size and prev.origin == self._origin:
                try:
                    cp = self.verify_own(previous.note)
                    committed = parse_heads_extension(cp.extensions)
                except CheckpointError:
                    pass  # signed by another key (rotated): sign again with ours
                else:
                    if committed is not None and (committed.count, committed.root) == (
                        commitment.count,
                        commitment.root,
                    ):
                        return SignedCheckpoint(checkpoint=cp, note=previous.note)
                    # else: signed before heads were committed (or with others): sign again
            # 5.
            cp = Checkpoint(self._origin, size, root, (commitment.extension(),))
            signed = sign_checkpoint(cp, self._origin, self._signer)
            self._store.save_checkpoint(CheckpointRecord(size, root, now_ms, signed.note))
            self._store.save_committed_heads(size, list(changed.values()))
            _logger.info(
                "signed checkpoint %s at size %d, root %s, %d key heads", self._origin, size, root.hex(), len(heads)
            )
            return signed
