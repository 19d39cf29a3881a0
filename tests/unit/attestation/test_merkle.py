"""RFC 9162 Merkle tree: known answers from transparency-dev/merkle, and property tests
of the cached tree and the RFC verifiers against a brute-force tree built from the RFC's
recursive definitions."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.errors import ProofError
from attestation.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    TiledMerkleTree,
    TileMismatchError,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

# transparency-dev/merkle testonly/constants.go: LeafInputs() and RootHashes().
LEAF_INPUTS = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                          "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# transparency-dev/merkle testonly/reference_test.go: TestRefInclusionProof, TestRefConsistencyProof.
INCLUSION_VECTORS = [
    (0, 1, []),
    (0, 2, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"]),
    (1, 2, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip


# -- brute force: the RFC's recursive definitions, over leaf hashes ----------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = _k(len(leaves))
    return node_hash(ref_root(leaves[:k]), ref_root(leaves[k:]))


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = _k(len(leaves))
    if m < k:
        return ref_path(m, leaves[:k]) + [ref_root(leaves[k:])]
    return ref_path(m - k, leaves[k:]) + [ref_root(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [ref_root(leaves)]
    k = _k(n)
    if m <= k:
        return ref_subproof(m, leaves[:k], b) + [ref_root(leaves[k:])]
    return ref_subproof(m - k, leaves[k:], False) + [ref_root(leaves[:k])]


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(b"leaf %d" % i) for i in range(n)]


# -- known answers ---------------------------------------------------------------


def test_hashing_uses_the_rfc_prefixes() -> None:
    assert leaf_hash(b"") == bytes.fromhex("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    assert EMPTY_ROOT.hex() == ROOTS[0]


@pytest.mark.parametrize("size", range(len(ROOTS)))
def test_roots_match_transparency_dev_vectors(size: int) -> None:
    tree = MerkleTree(leaf_hash(d) for d in LEAF_INPUTS)
    assert tree.root(size).hex() == ROOTS[size], f"root of the first {size} leaves differs from transparency-dev"


@pytest.mark.parametrize(("index", "size", "want"), INCLUSION_VECTORS)
def test_inclusion_proofs_match_transparency_dev_vectors(index: int, size: int, want: list[str]) -> None:
    tree = MerkleTree(leaf_hash(d) for d in LEAF_INPUTS)
    proof = tree.inclusion_proof(index, size)
    assert [p.hex() for p in proof] == want
    verify_inclusion(leaf_hash(LEAF_INPUTS[index]), index, size, proof, bytes.fromhex(ROOTS[size]))


@pytest.mark.parametrize(("size1", "size2", "want"), CONSISTENCY_VECTORS)
def test_consistency_proofs_match_transparency_dev_vectors(size1: int, size2: int, want: list[str]) -> None:
    tree = MerkleTree(leaf_hash(d) for d in LEAF_INPUTS)
    proof = tree.consistency_proof(size1, size2)
    assert [p.hex() for p in proof] == want
    verify_consistency(size1, size2, proof, bytes.fromhex(ROOTS[size1]), bytes.fromhex(ROOTS[size2]))


# -- exhaustive and property tests against the brute-force tree ----------------------


def test_every_proof_up_to_size_64_matches_brute_force_and_verifies() -> None:
    leaves = _leaves(64)
    tree = MerkleTree()
    for n in range(1, 65):
        tree.append(leaves[n - 1])
        root = ref_root(leaves[:n])
        assert tree.root() == root, f"root of size {n}"
        for m in range(n):
            proof = tree.inclusion_proof(m, n)
            assert proof == ref_path(m, leaves[:n]), f"inclusion proof of leaf {m} in size {n}"
            verify_inclusion(leaves[m], m, n, proof, root)
        for m in range(1, n + 1):
            proof = tree.consistency_proof(m, n)
            assert proof == ref_subproof(m, leaves[:n], True), f"consistency proof {m} -> {n}"
            verify_consistency(m, n, proof, ref_root(leaves[:m]), root)


@st.composite
def _size_and_index(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(st.integers(min_value=1, max_value=400))
    return n, draw(st.integers(min_value=0, max_value=n - 1))


@st.composite
def _two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(st.integers(min_value=1, max_value=400))
    return draw(st.integers(min_value=1, max_value=n)), n


_TREE = MerkleTree(_leaves(400))
_LEAVES = _leaves(400)


@settings(max_examples=300, deadline=None)
@given(_size_and_index())
def test_inclusion_proof_property(case: tuple[int, int]) -> None:
    n, m = case
    proof = _TREE.inclusion_proof(m, n)
    assert proof == ref_path(m, _LEAVES[:n])
    root = ref_root(_LEAVES[:n])
    verify_inclusion(_LEAVES[m], m, n, proof, root)
    # The same proof proves no other leaf, at no other index.
    other = (m + 1) % n
    if other != m:
        with pytest.raises(ProofError):
            verify_inclusion(_LEAVES[other], m, n, proof, root)
        with pytest.raises(ProofError):
            verify_inclusion(_LEAVES[m], other, n, proof, root)


@settings(max_examples=300, deadline=None)
@given(_two_sizes(), st.data())
def test_consistency_proof_property(sizes: tuple[int, int], data: st.DataObject) -> None:
    m, n = sizes
    proof = _TREE.consistency_proof(m, n)
    assert proof == ref_subproof(m, _LEAVES[:n], True)
    old_root, root = ref_root(_LEAVES[:m]), ref_root(_LEAVES[:n])
    verify_consistency(m, n, proof, old_root, root)
    if m < n:
        # A tree that differs in one old leaf is not consistent with the new one.
        forked = list(_LEAVES[:m])
        i = data.draw(st.integers(min_value=0, max_value=m - 1))
        forked[i] = leaf_hash(b"forged")
        with pytest.raises(ProofError) as exc:
            verify_consistency(m, n, proof, ref_root(forked), root)
        assert exc.value.reason == "inconsistent"
        # Any flipped bit in the proof breaks it.
        j = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = list(proof)
        bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
        with pytest.raises(ProofError):
            verify_consistency(m, n, bad, old_root, root)


# -- malformed proofs ----------------------------------------------------------------


def test_inclusion_proof_of_wrong_length_is_malformed() -> None:
    tree = MerkleTree(_leaves(10))
    proof = tree.inclusion_proof(3)
    for bad in (proof[:-1], [*proof, proof[0]]):
        with pytest.raises(ProofError) as exc:
            root_from_inclusion_proof(tree.leaf(3), 3, 10, bad)
        assert exc.value.reason == "malformed_proof"
    with pytest.raises(ProofError):
        verify_inclusion(tree.leaf(3), 10, 10, proof, tree.root())
    with pytest.raises(ProofError):
        verify_inclusion(tree.leaf(3), 3, 10, [b"short", *proof[1:]], tree.root())


def test_consistency_edge_cases() -> None:
    tree = MerkleTree(_leaves(10))
    verify_consistency(0, 10, [], EMPTY_ROOT, tree.root())
    verify_consistency(10, 10, [], tree.root(), tree.root())
    with pytest.raises(ProofError):
        verify_consistency(10, 10, [], tree.root(9), tree.root())
    with pytest.raises(ProofError):
        verify_consistency(10, 9, [], tree.root(), tree.root(9))
    with pytest.raises(ProofError):
        verify_consistency(3, 10, [], tree.root(3), tree.root())
    with pytest.raises(ValueError):
        tree.consistency_proof(11)
    with pytest.raises(ValueError):
        tree.inclusion_proof(10)


def test_a_large_tree_is_cheap() -> None:
    tree = MerkleTree(_leaves(45_000))
    for m in (0, 1, 12_345, 44_999):
        verify_inclusion(tree.leaf(m), m, 45_000, tree.inclusion_proof(m), tree.root())
    verify_consistency(30_000, 45_000, tree.consistency_proof(30_000), tree.root(30_000), tree.root())


# -- the tiled tree: the same answers in O(n / tile) memory --------------------------


class _LeafStore:
    """Leaf hashes as a store keeps them, with a count of the tiles read back."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = list(leaves)
        self.reads: list[tuple[int, int]] = []

    def read(self, start: int, end: int) -> list[bytes]:
        self.reads.append((start, end))
        return self.leaves[start:end]


def _tiled(leaves: list[bytes], height: int, cache_tiles: int = 8) -> tuple[TiledMerkleTree, _LeafStore]:
    source = _LeafStore(leaves)
    tree = TiledMerkleTree(source.read, tile_height=height, cache_tiles=cache_tiles)
    for leaf in leaves:
        tree.append(leaf)
    return tree, source


@pytest.mark.parametrize("height", [1, 2, 3])
def test_tiled_tree_gives_every_proof_up_to_size_40_that_the_full_tree_gives(height: int) -> None:
    leaves = _leaves(40)
    full = MerkleTree()
    # cache_tiles=1: almost every tile below the tail is read back from the source.
    tiled = TiledMerkleTree(_LeafStore(leaves).read, tile_height=height, cache_tiles=1)
    for n in range(1, 41):
        full.append(leaves[n - 1])
        assert tiled.append(leaves[n - 1]) == n - 1
        assert tiled.size == n
        assert tiled.root() == full.root(), f"root of size {n}"
        for m in range(n):
            assert tiled.inclusion_proof(m, n) == full.inclusion_proof(m, n), f"inclusion {m} in {n}"
            assert tiled.leaf(m) == leaves[m]
        for m in range(0, n + 1):
            assert tiled.consistency_proof(m, n) == full.consistency_proof(m, n), f"consistency {m} -> {n}"
            assert tiled.root(m) == full.root(m)


@settings(max_examples=200, deadline=None)
@given(_two_sizes(), st.integers(min_value=1, max_value=6), st.integers(min_value=1, max_value=3))
def test_tiled_tree_property(sizes: tuple[int, int], height: int, cache_tiles: int) -> None:
    m, n = sizes
    tiled, _ = _tiled(_LEAVES[:n], height, cache_tiles)
    assert tiled.root() == _TREE.root(n)
    assert tiled.consistency_proof(m, n) == _TREE.consistency_proof(m, n)
    assert tiled.inclusion_proof(m - 1, n) == _TREE.inclusion_proof(m - 1, n)
    assert tiled.root(m) == _TREE.root(m)


def test_tiled_tree_keeps_64_bytes_per_tile_and_reads_at_most_two_tiles_per_proof() -> None:
    n = 10_000
    leaves = _leaves(n)
    tiled, source = _tiled(leaves, height=6, cache_tiles=1)
    tiles = n >> 6
    # Tile roots, plus the subtrees above them (fewer than one more per tile).
    assert 32 * tiles <= tiled.memory_bytes() < 64 * tiles
    assert source.reads == [], "appending never reads leaves back"
    full = MerkleTree(leaves)
    for index in (0, 63, 64, 5_000, 9_983, 9_984, 9_999):
        source.reads.clear()
        assert tiled.inclusion_proof(index, n) == full.inclusion_proof(index, n)
        assert len(source.reads) <= 1
        assert all(end - start == 64 for start, end in source.reads), "whole tiles are read"
    for old in (1, 64, 777, 9_000):
        source.reads.clear()
        assert tiled.consistency_proof(old, n) == full.consistency_proof(old, n)
        assert len(source.reads) <= 2


def test_a_tile_changed_after_it_was_appended_is_refused_not_proven() -> None:
    leaves = _leaves(20)
    tiled, source = _tiled(leaves, height=2, cache_tiles=1)
    tiled.inclusion_proof(13, 20)  # tile 3 (leaves 12..15) is now the cached one
    source.leaves[5] = leaf_hash(b"forged")  # tile 1, behind the tree's back
    with pytest.raises(TileMismatchError, match="leaves 4..7 no longer hash"):
        tiled.inclusion_proof(5, 20)
    with pytest.raises(TileMismatchError):
        tiled.consistency_proof(6, 20)
    source.leaves[5] = leaves[5]
    assert tiled.inclusion_proof(5, 20) == MerkleTree(leaves).inclusion_proof(5, 20)
    del source.leaves[9:]  # a tile read back short
    with pytest.raises(TileMismatchError, match="1 leaf hashes read back, expected 4"):
        tiled.leaf(8)


def test_tiled_tree_checks_what_it_is_given() -> None:
    tiled, _ = _tiled(_leaves(5), height=2)
    with pytest.raises(ValueError):
        tiled.append(b"short")
    assert tiled.size == 5, "a refused leaf is not counted"
    with pytest.raises(IndexError):
        tiled.leaf(5)
    with pytest.raises(ValueError):
        tiled.root(6)
    with pytest.raises(ValueError):
        TiledMerkleTree(_LeafStore([]).read, tile_height=0)
    assert TiledMerkleTree(_LeafStore([]).read).root() == EMPTY_ROOT


def test_whole_tiles_appended_by_their_roots_give_the_same_tree() -> None:
    leaves = _leaves(23)
    built, _ = _tiled(leaves, height=2)
    source = _LeafStore(leaves)
    restored = TiledMerkleTree(source.read, tile_height=2, cache_tiles=1)
    restored.append_tiles(built.tile_root(t) for t in range(4))
    assert (restored.size, source.reads) == (16, []), "nothing read to append tiles"
    for leaf in leaves[16:]:
        restored.append(leaf)
    full = MerkleTree(leaves)
    assert restored.root() == full.root()
    for m in range(23):
        assert restored.inclusion_proof(m, 23) == full.inclusion_proof(m, 23)
        assert restored.consistency_proof(m, 23) == full.consistency_proof(m, 23)
    with pytest.raises(ValueError, match="only follow a complete tile"):
        restored.append_tiles([built.tile_root(0)])
    with pytest.raises(IndexError):
        restored.tile_root(5)
