"""Signing keys: the file: backend's permissions, what it refuses, and key ids."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestation.errors import KeyFileError
from attestation.keys import (
    ED25519,
    Ed25519Signer,
    KeyFileExistsError,
    PublicKey,
    create_key_file,
    key_id_of,
    load_key_file,
    open_signer,
)

KEY_ID = re.compile(r"sha256:[0-9a-f]{64}")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


# -- create / load ---------------------------------------------------------------------


def test_create_key_file_makes_a_0600_key_that_loads_back_as_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "agent.key"
    signer = create_key_file(path)
    assert _mode(path) == 0o600, f"new key file has mode {_mode(path):04o}, want 0600"
    loaded = load_key_file(path)
    assert loaded.key_id == signer.key_id
    assert loaded.public_key() == signer.public_key()
    assert loaded.algorithm == ED25519 and loaded.assurance == "software"


def test_create_key_file_mode_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        create_key_file(tmp_path / "agent.key")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "agent.key") == 0o600


def test_create_key_file_refuses_to_overwrite_and_leaves_the_old_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    first = create_key_file(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        create_key_file(path)
    assert path.read_bytes() == before, "the existing key was modified"
    assert load_key_file(path).key_id == first.key_id


def test_of_processes_creating_one_key_at_once_exactly_one_wins(tmp_path: Path) -> None:
    """Collectors sharing a PostgreSQL store start together and share the log key: each
    either creates the key or is told it exists, and the file is the winner's, whole."""
    path = tmp_path / "keys" / "log-key.pem"
    ready = threading.Barrier(8)
    won: list[str] = []
    lost: list[Exception] = []

    def create() -> None:
        ready.wait()
        try:
            won.append(create_key_file(path).key_id)
        except KeyFileExistsError as exc:
            lost.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7, (won, lost)
    assert load_key_file(path).key_id == won[0]
    assert _mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["log-key.pem"], "temporary files were left behind"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o602, 0o610, 0o601])
def test_load_key_file_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "agent.key"
    create_key_file(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError) as exc:
        load_key_file(path)
    assert f"{mode:04o}" in str(exc.value), f"error should show the mode: {exc.value}"
    assert "chmod 600" in exc.value.diagnostics(), "diagnostics should tell the operator how to fix it"


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_load_key_file_accepts_owner_only_modes(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "agent.key"
    signer = create_key_file(path)
    os.chmod(path, mode)
    assert load_key_file(path).key_id == signer.key_id


BAD_CONTENT: list[tuple[str, Callable[[], bytes], str]] = [
    ("empty", lambda: b"", "not a PEM private key"),
    ("not-pem", lambda: b"hello, I am not a key\n", "not a PEM private key"),
    ("public-key-pem", lambda: Ed25519Signer.generate().public_key().spki_der, "not a PEM private key"),
    ("truncated-pem", lambda: Ed25519Signer.generate().private_pem()[:60], "not a PEM private key"),
    (
        "encrypted-pem",
        lambda: ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        ),
        "not a PEM private key",
    ),
    ("rsa-pem", lambda: _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "uses Ed25519"),
    ("p256-pem", lambda: _pem(ec.generate_private_key(ec.SECP256R1())), "uses Ed25519"),
]


@pytest.mark.parametrize(("make", "needle"), [(m, n) for _, m, n in BAD_CONTENT], ids=[i for i, _, _ in BAD_CONTENT])
def test_load_key_file_refuses_what_is_not_an_ed25519_private_key(
    tmp_path: Path, make: Callable[[], bytes], needle: str
) -> None:
    path = _write(tmp_path / "agent.key", make())
    with pytest.raises(KeyFileError) as exc:
        load_key_file(path)
    assert needle in str(exc.value), f"error should say {needle!r}: {exc.value}"
    assert str(path) in str(exc.value), f"error should name the file: {exc.value}"


def test_load_key_file_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key_file(tmp_path / "nope.key")


def test_load_key_file_on_a_directory_is_a_key_file_error(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        load_key_file(d)


# -- open_signer -----------------------------------------------------------------------


def test_open_signer_file_uri_forms(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    signer = create_key_file(path)
    for uri in (f"file:{path}", f"file://{path}"):
        assert open_signer(uri).key_id == signer.key_id, f"{uri} did not open the key at {path}"


def test_open_signer_create_makes_the_key_once_then_reuses_it(tmp_path: Path) -> None:
    path = tmp_path / "state" / "agent.key"
    first = open_signer(f"file:{path}", create=True)
    assert _mode(path) == 0o600
    again = open_signer(f"file:{path}", create=True)
    assert again.key_id == first.key_id, "create=True replaced an existing key"


def test_open_signer_without_create_does_not_make_a_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        open_signer(f"file:{tmp_path / 'agent.key'}")
    assert not (tmp_path / "agent.key").exists()


@pytest.mark.parametrize("uri", ["tpm:", "tpm://0x81000001", "pkcs11:token=agent"])
def test_open_signer_hardware_backends_say_not_implemented(uri: str) -> None:
    with pytest.raises(KeyFileError) as exc:
        open_signer(uri)
    assert "not implemented" in str(exc.value), f"error for {uri!r} should say it is not implemented: {exc.value}"


@pytest.mark.parametrize("uri", ["", "agent.key", "/var/lib/gpuaudit/agent.key", "http://example.com/k", "file"])
def test_open_signer_refuses_junk_uris(uri: str) -> None:
    with pytest.raises(KeyFileError) as exc:
        open_signer(uri)
    assert "unknown key URI" in str(exc.value), f"{uri!r}: {exc.value}"


def test_open_signer_file_uri_without_a_path_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "file:" names no file: it must not fall back to the current directory.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyFileError):
        open_signer("file:")
    with pytest.raises(KeyFileError):
        open_signer("file:", create=True)


# -- key ids ---------------------------------------------------------------------------


def test_key_id_is_sha256_of_the_spki_and_stable(tmp_path: Path) -> None:
    signer = create_key_file(tmp_path / "agent.key")
    spki = signer.public_key().spki_der
    assert KEY_ID.fullmatch(signer.key_id), f"key id {signer.key_id!r} is not sha256: + 64 lower-case hex"
    assert signer.key_id == "sha256:" + hashlib.sha256(spki).hexdigest()
    assert signer.key_id == key_id_of(spki) == PublicKey.from_spki(spki).key_id
    assert load_key_file(tmp_path / "agent.key").key_id == signer.key_id, "key id changed across a reload"


def test_different_keys_have_different_ids() -> None:
    assert Ed25519Signer.generate().key_id != Ed25519Signer.generate().key_id


@pytest.mark.parametrize(
    "spki",
    [
        b"not der",
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    ],
    ids=["not-der", "rsa", "p384"],
)
def test_public_key_from_spki_accepts_only_ed25519_and_p256(spki: bytes) -> None:
    with pytest.raises(KeyFileError):
        PublicKey.from_spki(spki)
