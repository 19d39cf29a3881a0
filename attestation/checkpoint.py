"""Log checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes, Ed25519.

A checkpoint (c2sp.org/tlog-checkpoint) is the note text::

    <origin>\\n<tree size, decimal>\\n<base64 root hash>\\n[extension lines\\n]

and a signed note (c2sp.org/signed-note) is that text, a blank line, and one or more
signature lines ``— <key name> base64(key ID || signature)\\n``. For Ed25519 the
signature is over the note text and the key ID is the first four bytes of
SHA-256(key name || 0x0A || 0x01 || 32-byte public key).

Parsing is strict: valid UTF-8, no control characters but newline, no leading zeros in
the size, a 32-byte root, non-empty extension lines. Following the signed-note spec a
verifier ignores signatures by other keys (witness cosignatures, a rotated key), MUST
reject a note in which no signature by its key verifies, and rejects a note in which a
signature by its key fails.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from attestation.errors import CheckpointError
from attestation.keys import ED25519, PublicKey, Signer
from attestation.merkle import HASH_SIZE

ED25519_SIGNATURE_TYPE = b"\x01"
EM_DASH = "\u2014"
# The signed-note spec asks verifiers to accept at least 16 signatures.
MAX_SIGNATURES = 64
MAX_NOTE_BYTES = 1 << 16
_SIZE_RE = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, size and root hash (plus opaque extension lines)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> bytes:
        """The note text, exactly as signed."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"), *self.extensions]
        return ("\n".join(lines) + "\n").encode("utf-8")


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes  # 4 bytes
    signature: bytes


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    note: str  # the whole signed note: body, blank line, signature lines

    def to_text(self) -> str:
        return self.note


def _check_key_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name) or any(ord(c) < 0x20 for c in name):
        raise CheckpointError(
            f"key name {name!r} must be non-empty, without spaces or '+'", reason="malformed_checkpoint"
        )


def _raw_ed25519(key: PublicKey) -> bytes:
    if key.algorithm != ED25519:
        raise CheckpointError(f"log keys are Ed25519; got {key.algorithm}", reason="bad_log_key")
    pub = serialization.load_der_public_key(key.spki_der)
    assert isinstance(pub, ed25519.Ed25519PublicKey)
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def note_key_id(name: str, key: PublicKey) -> bytes:
    """SHA-256(key name || 0x0A || 0x01 || 32-byte Ed25519 public key)[:4] (signed-note, Ed25519)."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + ED25519_SIGNATURE_TYPE + _raw_ed25519(key)).digest()[:4]


def sign_checkpoint(checkpoint: Checkpoint, name: str, signer: Signer) -> SignedCheckpoint:
    """Sign ``checkpoint`` as a signed note by ``signer`` (an Ed25519 key) under ``name``."""
    _check_key_name(name)
    parse_checkpoint_body(checkpoint.body())  # never sign what a verifier would refuse to parse
    body = checkpoint.body()
    key_id = note_key_id(name, signer.public_key())
    sig = signer.sign(body)
    line = f"{EM_DASH} {name} {base64.b64encode(key_id + sig).decode('ascii')}\n"
    return SignedCheckpoint(checkpoint=checkpoint, note=body.decode("utf-8") + "\n" + line)


def parse_note(note: str | bytes) -> tuple[bytes, list[NoteSignature]]:
    """Split a signed note into its text and signature lines. Raises CheckpointError."""

    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"malformed signed note: {msg}", reason="malformed_checkpoint")

    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise bad(f"{len(note)} bytes exceed {MAX_NOTE_BYTES}")
        try:
            text = note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad(f"not UTF-8 ({exc})") from exc
    else:
        text = note
        if len(text.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
            raise bad(f"longer than {MAX_NOTE_BYTES} bytes")
    if any(ord(c) < 0x20 and c != "\n" for c in text) or "\x7f" in text:
        raise bad("contains control characters other than newline")
    if not text.endswith("\n"):
        raise bad("does not end with a newline")
    cut = text.rfind("\n\n")
    if cut < 0:
        raise bad("no blank line between the text and the signatures")
    body, sig_block = text[: cut + 1], text[cut + 2 :]
    sigs: list[NoteSignature] = []
    for line in sig_block[:-1].split("\n"):
        if not line.startswith(EM_DASH + " "):
            raise bad(f"signature line {line[:40]!r} does not start with an em dash and a space")
        parts = line[2:].split(" ")
        if len(parts) != 2:
            raise bad(f"signature line {line[:40]!r} is not '— <name> <base64>'")
        name, b64 = parts
        try:
            _check_key_name(name)
        except CheckpointError as exc:
            raise bad(str(exc)) from exc
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise bad(f"signature of {name} is not base64") from exc
        if len(raw) < 5:
            raise bad(f"signature of {name} is too short")
        sigs.append(NoteSignature(name=name, key_id=raw[:4], signature=raw[4:]))
        if len(sigs) > MAX_SIGNATURES:
            raise bad(f"more than {MAX_SIGNATURES} signatures")
    if not sigs:
        raise bad("no signature lines")
    return body.encode("utf-8"), sigs


def parse_checkpoint_body(body: bytes) -> Checkpoint:
    """Parse a tlog-checkpoint note text strictly. Raises CheckpointError."""

    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"malformed checkpoint: {msg}", reason="malformed_checkpoint")

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad("not UTF-8") from exc
    if not text.endswith("\n"):
        raise bad("does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise bad(f"{len(lines)} line(s); origin, size and root hash are required")
    origin, size_s, root_s, *extensions = lines
    if not origin:
        raise bad("empty origin")
    if not _SIZE_RE.fullmatch(size_s):
        raise bad(f"tree size {size_s[:30]!r} is not a decimal without leading zeros")
    try:
        root = base64.b64decode(root_s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad("root hash is not base64") from exc
    if len(root) != HASH_SIZE:
        raise bad(f"root hash has {len(root)} bytes, expected {HASH_SIZE}")
    if any(not e for e in extensions):
        raise bad("empty extension line")
    return Checkpoint(origin=origin, size=int(size_s), root=root, extensions=tuple(extensions))


def verify_checkpoint(note: str | bytes, name: str, key: PublicKey, *, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint by the log key (``name``, ``key``) and return it.

    Steps (c2sp.org/signed-note, c2sp.org/tlog-checkpoint):
    1. the note parses; signatures by other keys (other name or key ID) are ignored;
    2. every signature by this key verifies over the note text, and there is one;
    3. only then is the text parsed as a checkpoint, whose origin is the expected one.
    Raises CheckpointError.
    """
    # 1.
    body, sigs = parse_note(note)
    key_id = note_key_id(name, key)
    mine = [s for s in sigs if s.name == name and s.key_id == key_id]
    # 2.
    if not mine:
        raise CheckpointError(
            f"the checkpoint carries no signature by log key {name} ({key_id.hex()}); "
            f"it is signed by {', '.join(f'{s.name} ({s.key_id.hex()})' for s in sigs)}",
            reason="unknown_log_key",
        )
    pub = serialization.load_der_public_key(key.spki_der)
    assert isinstance(pub, ed25519.Ed25519PublicKey)
    for s in mine:
        try:
            pub.verify(s.signature, body)
        except InvalidSignature as exc:
            raise CheckpointError(
                f"the signature by log key {name} does not verify over the checkpoint",
                reason="bad_checkpoint_signature",
            ) from exc
    # 3.
    cp = parse_checkpoint_body(body)
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint origin {cp.origin!r}, expected {origin!r}", reason="wrong_origin")
    return cp
