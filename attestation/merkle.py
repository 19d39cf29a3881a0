"""RFC 9162 Merkle trees: hashing, roots, inclusion and consistency proofs.

Hashing (RFC 9162 §2.1.1)::

    MTH({})       = SHA-256()
    leaf hash     = SHA-256(0x00 || d)
    node hash     = SHA-256(0x01 || left || right)
    MTH(D[n])     = node(MTH(D[0:k]), MTH(D[k:n]))   k: the largest power of two < n

For gpuaudit a leaf's data ``d`` is the DSSE PAE of an accepted envelope, so the leaf
hash is SHA-256(0x00 || PAE) and a leaf is recomputed by a verifier from the envelope
it holds, never taken from whoever sent it.

``MerkleTree`` keeps the hash of every complete, aligned subtree (2n hashes for n
leaves), so appending is O(1) amortised and any root, inclusion proof or consistency
proof for any size up to the current one costs O(log^2 n) hashes. The verifiers follow
the RFC's algorithms step by step and need nothing but the proof.

``TiledMerkleTree`` answers the same questions for a log that never ends (the collector's:
one leaf per accepted statement, about 18 million a day at 100,000 GPUs): it keeps only
the hashes of subtrees of at least one tile (2**tile_height leaves) in memory, 32 bytes
each in flat buffers, and reads a tile's leaf hashes back from where they are stored when a
proof reaches below a tile's root.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from attestation.errors import Error, ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only RFC 9162 tree over leaf hashes, with every complete subtree cached.

    ``levels[h][i]`` is the hash of leaves ``[i * 2**h, (i + 1) * 2**h)``; such a
    subtree never changes once complete, so roots and proofs for earlier sizes are
    computed from the same cache.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf: bytes) -> int:
        """Append a leaf hash; return its index."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, got {len(leaf)}")
        index = self.size
        self._levels[0].append(leaf)
        level, i = 0, index
        while i & 1:  # the new node completes a subtree one level up
            if len(self._levels) == level + 1:
                self._levels.append([])
            below = self._levels[level]
            self._levels[level + 1].append(node_hash(below[i - 1], below[i]))
            level, i = level + 1, i >> 1
        return index

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index]

    def _hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) where [start, end) is a node of some tree of size >= end."""
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:  # complete and aligned: cached
            return self._levels[n.bit_length() - 1][start // n]
        k = _split(n)
        return node_hash(self._hash(start, start + k), self._hash(start + k, end))

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside 0..{self.size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        n = self._check_size(size)
        return EMPTY_ROOT if n == 0 else self._hash(0, n)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(m, D[n]) (RFC 9162 §2.1.3.1), ordered from the leaf's sibling upwards."""
        n = self._check_size(size)
        if not 0 <= index < n:
            raise ValueError(f"leaf index {index} is outside a tree of size {n}")
        path: list[bytes] = []
        start, end = 0, n
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                path.append(self._hash(start + k, end))
                end = start + k
            else:
                path.append(self._hash(start, start + k))
                start += k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, size: int | None = None) -> list[bytes]:
        """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) (RFC 9162 §2.1.4.1). Empty when m is 0 or n."""
        n = self._check_size(size)
        if not 0 <= old_size <= n:
            raise ValueError(f"old size {old_size} is outside 0..{n}")
        if old_size in (0, n):
            return []
        proof: list[bytes] = []
        m, start, end, complete = old_size, 0, n, True
        while True:
            if m == end - start:
                if not complete:
                    proof.append(self._hash(start, end))
                break
            k = _split(end - start)
            if m <= k:
                proof.append(self._hash(start + k, end))
                end = start + k
            else:
                proof.append(self._hash(start, start + k))
                m -= k
                start += k
                complete = False
        proof.reverse()
        return proof


class TileMismatchError(Error, ValueError):
    """Leaf hashes read back for a tile no longer hash to the root computed when they were appended."""

    reason = "tile_mismatch"


class TiledMerkleTree(MerkleTree):
    """``MerkleTree``'s roots and proofs, in O(n / 2**tile_height) memory.

    In memory: ``_upper[j]`` holds, 32 bytes each, the hash of every complete aligned
    subtree of ``2**(tile_height + j)`` leaves, and ``_tail`` the leaves of the incomplete
    last tile. A hash below a complete tile's root is computed from that tile's leaf hashes,
    read through ``read_leaves(start, end)`` (which returns the hashes of leaves
    ``start <= i < end``) and kept in a small LRU cache of tiles. A tile read back is checked
    against the root computed when its leaves were appended: leaves that changed since
    raise ``TileMismatchError``, never a proof for other data.

    With the default height 10 that is 64 bytes per 1,024 leaves (about 1.1 MB a day at
    18 million leaves a day), against about 150 bytes per leaf for a ``MerkleTree`` of
    Python ``bytes``; a proof reads at most two tiles (32 KiB each). The levels above the
    tiles are flat ``bytearray``s rather than a ``MerkleTree`` of tile roots, which would
    take about 2.5 times the memory for the same hashes.
    """

    def __init__(
        self,
        read_leaves: Callable[[int, int], Sequence[bytes]],
        *,
        tile_height: int = 10,
        cache_tiles: int = 8,
    ) -> None:
        if not 1 <= tile_height <= 20:
            raise ValueError(f"tile height must be 1..20, got {tile_height}")
        self._read = read_leaves
        self._height = tile_height
        self._tile = 1 << tile_height
        self._upper: list[bytearray] = [bytearray()]
        self._tail = MerkleTree()
        self._size = 0
        self._cache: OrderedDict[int, MerkleTree] = OrderedDict()
        self._cache_tiles = max(1, cache_tiles)

    @property
    def size(self) -> int:
        return self._size

    @property
    def tile_height(self) -> int:
        return self._height

    def memory_bytes(self) -> int:
        """Bytes held by the in-memory hashes (the tail's and cached tiles' Python objects aside)."""
        return sum(len(level) for level in self._upper)

    def append(self, leaf: bytes) -> int:
        """Append a leaf hash; return its index."""
        self._tail.append(leaf)  # checks the length
        index = self._size
        self._size += 1
        if self._tail.size == self._tile:
            tile = index >> self._height
            self._push(self._tail._hash(0, self._tile), tile)
            self._remember(tile, self._tail)
            self._tail = MerkleTree()
        return index

    @property
    def complete_tiles(self) -> int:
        return self._size >> self._height

    def tile_root(self, tile: int) -> bytes:
        """The root of complete tile ``tile`` (leaves ``tile * 2**h .. (tile + 1) * 2**h - 1``)."""
        if not 0 <= tile < self.complete_tiles:
            raise IndexError(f"tile {tile} is not complete in a tree of size {self._size}")
        return self._upper_hash(0, tile)

    def append_tiles(self, roots: Iterable[bytes]) -> None:
        """Append whole tiles by their roots alone (kept from an earlier run), at a tile boundary.

        Their leaves are read back only when a proof needs them, and checked then against
        these roots."""
        if self._tail.size:
            raise ValueError("whole tiles can only follow a complete tile")
        for root in roots:
            if len(root) != HASH_SIZE:
                raise ValueError(f"a tile root has {HASH_SIZE} bytes, got {len(root)}")
            self._push(root, self._size >> self._height)
            self._size += self._tile

    def _push(self, tile_root: bytes, tile: int) -> None:
        self._upper[0] += tile_root
        level, i = 0, tile
        while i & 1:  # the new tile completes a subtree one level up
            if len(self._upper) == level + 1:
                self._upper.append(bytearray())
            below = self._upper[level]
            left = bytes(below[(i - 1) * HASH_SIZE : i * HASH_SIZE])
            right = bytes(below[i * HASH_SIZE : (i + 1) * HASH_SIZE])
            self._upper[level + 1] += node_hash(left, right)
            level, i = level + 1, i >> 1

    def _remember(self, tile: int, tree: MerkleTree) -> None:
        self._cache[tile] = tree
        self._cache.move_to_end(tile)
        while len(self._cache) > self._cache_tiles:
            self._cache.popitem(last=False)

    def _upper_hash(self, level: int, i: int) -> bytes:
        return bytes(self._upper[level][i * HASH_SIZE : (i + 1) * HASH_SIZE])

    def _tile_tree(self, tile: int) -> MerkleTree:
        """The tree of one tile's leaves: the tail, a cached tile, or one read back and checked."""
        if tile == self._size >> self._height:
            return self._tail
        cached = self._cache.get(tile)
        if cached is not None:
            self._cache.move_to_end(tile)
            return cached
        start = tile << self._height
        hashes = self._read(start, start + self._tile)
        if len(hashes) != self._tile:
            raise TileMismatchError(f"tile {tile}: {len(hashes)} leaf hashes read back, expected {self._tile}")
        try:
            tree = MerkleTree(hashes)
        except ValueError as exc:
            raise TileMismatchError(f"tile {tile}: {exc}") from exc
        if tree._hash(0, self._tile) != self._upper_hash(0, tile):
            raise TileMismatchError(
                f"the leaves {start}..{start + self._tile - 1} no longer hash to the tile root computed when "
                "they were appended: they were changed since"
            )
        self._remember(tile, tree)
        return tree

    def leaf(self, index: int) -> bytes:
        if not 0 <= index < self._size:
            raise IndexError(f"leaf index {index} is outside a tree of size {self._size}")
        return self._tile_tree(index >> self._height).leaf(index & (self._tile - 1))

    def _hash(self, start: int, end: int) -> bytes:
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:  # complete and aligned
            height = n.bit_length() - 1
            if height >= self._height:
                return self._upper_hash(height - self._height, start >> height)
            tile = start >> self._height
            offset = tile << self._height
            return self._tile_tree(tile)._hash(start - offset, end - offset)
        k = _split(n)
        return node_hash(self._hash(start, start + k), self._hash(start + k, end))


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    return MerkleTree(leaf_hashes).root()


def _check_hashes(hashes: Sequence[bytes], what: str) -> None:
    for i, h in enumerate(hashes):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise ProofError(f"{what}[{i}] is not a {HASH_SIZE}-byte hash", reason="malformed_proof")


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root implied by ``proof`` (RFC 9162 §2.1.3.2, steps 1-4). Raises ProofError."""
    _check_hashes([leaf], "leaf")
    _check_hashes(proof, "inclusion proof")
    # 1. leaf_index < tree_size
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}", reason="malformed_proof")
    # 2.
    fn, sn = index, size - 1
    # 3.
    r = leaf
    # 4.
    for p in proof:
        # 4a.
        if sn == 0:
            raise ProofError(f"inclusion proof is longer than a tree of size {size} allows", reason="malformed_proof")
        # 4b.
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        # 4c.
        fn >>= 1
        sn >>= 1
    # 5. (first half) sn must be 0
    if sn != 0:
        raise ProofError(f"inclusion proof is shorter than a tree of size {size} needs", reason="malformed_proof")
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2: ``leaf`` is at ``index`` in the tree of ``size`` with ``root``. Raises ProofError."""
    # 5. (second half) r equals root_hash
    if root_from_inclusion_proof(leaf, index, size, proof) != root:
        raise ProofError(
            f"leaf {leaf.hex()} is not at index {index} of the tree of size {size} with root {root.hex()}",
            reason="not_included",
        )


def verify_consistency(old_size: int, size: int, proof: Sequence[bytes], old_root: bytes, root: bytes) -> None:
    """RFC 9162 §2.1.4.2: the tree (size, root) extends (old_size, old_root). Raises ProofError."""
    _check_hashes([old_root, root], "root")
    _check_hashes(proof, "consistency proof")
    if not 0 <= old_size <= size:
        raise ProofError(f"tree size went back from {old_size} to {size}", reason="inconsistent")
    if old_size == size:
        if proof:
            raise ProofError("a consistency proof between equal sizes must be empty", reason="malformed_proof")
        if old_root != root:
            raise ProofError(f"two different roots for tree size {size}", reason="inconsistent")
        return
    if old_size == 0:
        # Every tree extends the empty one; its root is fixed.
        if proof:
            raise ProofError("a consistency proof from the empty tree must be empty", reason="malformed_proof")
        if old_root != EMPTY_ROOT:
            raise ProofError("the root of the empty tree is SHA-256 of nothing", reason="inconsistent")
        return
    # 1.
    if not proof:
        raise ProofError("empty consistency proof", reason="malformed_proof")
    path = list(proof)
    # 2.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # 3.
    fn, sn = old_size - 1, size - 1
    # 4.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = path[0]
    # 6.
    for c in path[1:]:
        # 6a.
        if sn == 0:
            raise ProofError("consistency proof is longer than the sizes allow", reason="malformed_proof")
        # 6b.
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        # 6c.
        fn >>= 1
        sn >>= 1
    # 7.
    if sn != 0:
        raise ProofError("consistency proof is shorter than the sizes need", reason="malformed_proof")
    if fr != old_root:
        raise ProofError(
            f"the proof does not lead to the earlier root {old_root.hex()} of size {old_size}", reason="inconsistent"
        )
    if sr != root:
        raise ProofError(f"the proof does not lead to the root {root.hex()} of size {size}", reason="inconsistent")
