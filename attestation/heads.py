"""Per-key heads committed at a log checkpoint: what makes a left-out tail visible.

A log checkpoint proves that the statements a bundle holds are in the log; it says
nothing about the statements a bundle leaves out. To let a verifier see that a key's
chain was cut short, the collector commits, in each checkpoint it signs, to the head of
every key at that tree size: for each key with a statement among the first ``size``
leaves, the statement with the highest seq (its node, seq, leaf index, digest, window end
and the GPU serials it names).

The commitment is an extension line of the checkpoint (c2sp.org/tlog-checkpoint allows
lines after the root hash; a reader that does not know them still reads origin, size and
root, so RFC 9162 / C2SP verification of the leaves and checkpoints is unchanged)::

    gpuaudit-heads/v1 <number of heads> <base64 root> <signed_ms>

``root`` is the RFC 9162 Merkle tree hash over the heads sorted by key id, each leaf being
SHA-256(0x00 || canonical JSON of the head, ``KeyHead.leaf_bytes``). ``signed_ms`` is the
time the collector signed the checkpoint (milliseconds since the Unix epoch): it bounds
"nothing later existed". A bundle carries the whole list (``heads``), and the verifier
recomputes the root from it.

Collectors MUST compute the heads from the log's first ``size`` leaves only, and MUST NOT
sign a heads line for a size whose heads they did not compute.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from attestation.errors import CheckpointError
from attestation.merkle import HASH_SIZE, leaf_hash, root_of

HEADS_EXTENSION = "gpuaudit-heads/v1"
_DIGITS = re.compile(r"0|[1-9][0-9]{0,17}")


@dataclass(frozen=True)
class KeyHead:
    """The latest statement of one key among a checkpoint's leaves."""

    key_id: str
    node_id: str
    seq: int
    leaf_index: int
    digest: str  # hex SHA-256 of the statement's PAE
    end_ms: int  # the window's end
    serials: tuple[str, ...] = ()  # GPU serials the statement names, sorted

    def leaf_bytes(self) -> bytes:
        """The canonical bytes hashed into the heads tree (ASCII JSON, no spaces)."""
        return json.dumps(
            [self.key_id, self.node_id, self.seq, self.leaf_index, self.digest, self.end_ms, list(self.serials)],
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode("ascii")

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "node_id": self.node_id,
            "seq": self.seq,
            "leaf_index": self.leaf_index,
            "digest": self.digest,
            "end_ms": self.end_ms,
            "serials": list(self.serials),
        }


@dataclass(frozen=True)
class HeadsCommitment:
    """What a checkpoint's heads line commits to."""

    count: int
    root: bytes
    signed_ms: int

    def extension(self) -> str:
        return f"{HEADS_EXTENSION} {self.count} {base64.b64encode(self.root).decode('ascii')} {self.signed_ms}"


def heads_root(heads: Iterable[KeyHead]) -> bytes:
    """RFC 9162 tree hash over the heads' leaves, in key id order."""
    return root_of([leaf_hash(h.leaf_bytes()) for h in sorted(heads, key=lambda h: h.key_id)])


def commit(heads: Sequence[KeyHead], signed_ms: int) -> HeadsCommitment:
    return HeadsCommitment(count=len(heads), root=heads_root(heads), signed_ms=signed_ms)


def parse_heads_extension(extensions: Sequence[str]) -> HeadsCommitment | None:
    """The heads line among a checkpoint's extension lines; None if there is none.
    Raises CheckpointError (reason ``malformed_checkpoint``) for a malformed or repeated one."""
    found: HeadsCommitment | None = None
    for line in extensions:
        if line.split(" ", 1)[0] != HEADS_EXTENSION:
            continue
        if found is not None:
            raise CheckpointError("the checkpoint has two heads lines", reason="malformed_checkpoint")
        parts = line.split(" ")
        if len(parts) != 4 or not _DIGITS.fullmatch(parts[1]) or not _DIGITS.fullmatch(parts[3]):
            raise CheckpointError(
                f"malformed heads line {line[:60]!r}: expected '{HEADS_EXTENSION} <count> <base64 root> <signed_ms>'",
                reason="malformed_checkpoint",
            )
        try:
            root = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CheckpointError("the heads line's root is not base64", reason="malformed_checkpoint") from exc
        if len(root) != HASH_SIZE:
            raise CheckpointError(
                f"the heads line's root has {len(root)} bytes, expected {HASH_SIZE}", reason="malformed_checkpoint"
            )
        found = HeadsCommitment(count=int(parts[1]), root=root, signed_ms=int(parts[3]))
    return found
