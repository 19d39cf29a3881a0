"""C2SP tlog-checkpoint in a C2SP signed note: signing, strict parsing, verification."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from attestation.checkpoint import (
    Checkpoint,
    note_key_id,
    parse_checkpoint_body,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
)
from attestation.errors import CheckpointError
from attestation.keys import Ed25519Signer
from attestation.merkle import leaf_hash

NAME = "gpuaudit.example/collector-1"
ROOT = leaf_hash(b"root")


def _signed(signer: Ed25519Signer, size: int = 7) -> str:
    return sign_checkpoint(Checkpoint(NAME, size, ROOT), NAME, signer).note


def test_key_id_follows_the_signed_note_spec() -> None:
    signer = Ed25519Signer.generate()
    raw = serialization.load_der_public_key(signer.public_key().spki_der).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    want = hashlib.sha256(NAME.encode() + b"\n\x01" + raw).digest()[:4]
    assert note_key_id(NAME, signer.public_key()) == want


def test_signed_checkpoint_has_the_c2sp_layout_and_verifies() -> None:
    signer = Ed25519Signer.generate()
    note = _signed(signer)
    body, sig_line = note.split("\n\n")
    assert body == f"{NAME}\n7\n{base64.b64encode(ROOT).decode()}"
    assert sig_line.startswith(f"\u2014 {NAME} ") and sig_line.endswith("\n")
    raw = base64.b64decode(sig_line.split(" ")[2])
    assert raw[:4] == note_key_id(NAME, signer.public_key()) and len(raw) == 4 + 64
    cp = verify_checkpoint(note, NAME, signer.public_key(), origin=NAME)
    assert cp == Checkpoint(NAME, 7, ROOT)


def test_other_signatures_are_ignored_but_a_bad_one_by_the_key_fails() -> None:
    signer, witness = Ed25519Signer.generate(), Ed25519Signer.generate()
    note = _signed(signer)
    cosigned = note + _signed(witness).split("\n\n")[1].replace(NAME, "witness.example/w1")
    assert verify_checkpoint(cosigned, NAME, signer.public_key()).size == 7
    with pytest.raises(CheckpointError) as exc:
        verify_checkpoint(note, NAME, witness.public_key())
    assert exc.value.reason == "unknown_log_key"
    tampered = note.replace("\n7\n", "\n8\n")
    with pytest.raises(CheckpointError) as exc:
        verify_checkpoint(tampered, NAME, signer.public_key())
    assert exc.value.reason == "bad_checkpoint_signature"
    with pytest.raises(CheckpointError) as exc:
        verify_checkpoint(note, NAME, signer.public_key(), origin="other.example/log")
    assert exc.value.reason == "wrong_origin"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"origin\n7\n", "too few lines"),
        (b"\n7\n" + base64.b64encode(ROOT) + b"\n", "empty origin"),
        (b"o\n07\n" + base64.b64encode(ROOT) + b"\n", "leading zero"),
        (b"o\n-1\n" + base64.b64encode(ROOT) + b"\n", "negative"),
        (b"o\n7\n" + base64.b64encode(ROOT[:31]) + b"\n", "short root"),
        (b"o\n7\n!!!!\n", "not base64"),
        (b"o\n7\n" + base64.b64encode(ROOT), "no final newline"),
        (b"o\n7\n" + base64.b64encode(ROOT) + b"\n\n", "empty extension line"),
        (b"o\xff\n7\n" + base64.b64encode(ROOT) + b"\n", "not UTF-8"),
    ],
)
def test_checkpoint_body_parsing_is_strict(body: bytes, why: str) -> None:
    with pytest.raises(CheckpointError) as exc:
        parse_checkpoint_body(body)
    assert exc.value.reason == "malformed_checkpoint", why


def test_checkpoint_body_accepts_extensions_and_size_zero() -> None:
    cp = parse_checkpoint_body(b"o\n0\n" + base64.b64encode(ROOT) + b"\next one\n")
    assert cp.size == 0 and cp.extensions == ("ext one",)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda n: n.rstrip("\n"),  # no final newline
        lambda n: n.replace("\n\n", "\n"),  # no blank line
        lambda n: n.replace("\u2014 ", "- "),  # not an em dash
        lambda n: n.replace("\n\n", "\n\x07\n"),  # control character
        lambda n: n.split("\n\n")[0] + "\n\n",  # no signature lines
        lambda n: n[:-10] + "!!!!!!!!!\n",  # signature not base64
    ],
)
def test_signed_note_parsing_is_strict(mutate: object) -> None:
    note = _signed(Ed25519Signer.generate())
    assert callable(mutate)
    with pytest.raises(CheckpointError) as exc:
        parse_note(mutate(note))
    assert exc.value.reason == "malformed_checkpoint"


def test_key_names_with_spaces_are_refused() -> None:
    with pytest.raises(CheckpointError):
        sign_checkpoint(Checkpoint("a b", 1, ROOT), "a b", Ed25519Signer.generate())
