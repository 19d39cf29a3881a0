"""Signing keys, chosen by URI.

``file:/path/to/key.pem`` is the only backend today: an Ed25519 private key in PKCS#8
PEM, created with mode 0600 and refused when group or others can read it. The ``Signer``
protocol is what a ``tpm:`` or ``pkcs11:`` backend will implement; those hold ECDSA P-256
keys, which ``PublicKey.verify`` already accepts.

A key is named by its key id: ``sha256:`` + hex SHA-256 of its DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from attestation.errors import KeyFileError, VerificationError

ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-p256-sha256"


def key_id_of(spki_der: bytes) -> str:
    return "sha256:" + hashlib.sha256(spki_der).hexdigest()


class Signer(Protocol):
    """A private key the agent signs with. Implementations never expose the key."""

    @property
    def key_id(self) -> str: ...

    @property
    def algorithm(self) -> str: ...

    @property
    def assurance(self) -> str:
        """Where the private key lives: ``software``, ``tpm`` or ``hsm``."""
        ...

    def public_key(self) -> PublicKey: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class PublicKey:
    """A verification key: algorithm plus DER SubjectPublicKeyInfo."""

    algorithm: str
    spki_der: bytes

    @property
    def key_id(self) -> str:
        return _key_id(self.spki_der)

    @classmethod
    def from_spki(cls, spki_der: bytes) -> PublicKey:
        try:
            key = serialization.load_der_public_key(spki_der)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"not a DER SubjectPublicKeyInfo: {exc}") from exc
        if isinstance(key, ed25519.Ed25519PublicKey):
            return cls(ED25519, spki_der)
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            return cls(ECDSA_P256, spki_der)
        raise KeyFileError(f"unsupported public key type {type(key).__name__}; use Ed25519 or ECDSA P-256")

    def verify(self, signature: bytes, message: bytes) -> None:
        key = _loaded(self.spki_der)
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, message)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            else:  # pragma: no cover - from_spki refuses other types
                raise VerificationError(f"unsupported key type {type(key).__name__}")
        except InvalidSignature as exc:
            raise VerificationError(f"signature does not verify with key {self.key_id}") from exc


# A collector verifies every node's statements with the same few thousand keys: their parsed
# form and id are kept (immutable values; bounded so that a flood of one-off keys cannot grow
# memory).
@functools.lru_cache(maxsize=16384)
def _loaded(spki_der: bytes) -> PublicKeyTypes:
    return serialization.load_der_public_key(spki_der)


@functools.lru_cache(maxsize=16384)
def _key_id(spki_der: bytes) -> str:
    return key_id_of(spki_der)


class Ed25519Signer:
    """An Ed25519 key held in process memory (the ``file:`` backend)."""

    assurance = "software"
    algorithm = ED25519

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._key = private_key
        spki = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._public = PublicKey(ED25519, spki)

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @property
    def key_id(self) -> str:
        return self._public.key_id

    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def private_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


class KeyFileExistsError(KeyFileError):
    """``create_key_file`` found a key already there (perhaps created a moment ago by another
    process); it is never overwritten."""


def create_key_file(path: Path) -> Ed25519Signer:
    """Create a new Ed25519 key at ``path`` with mode 0600. Refuses to overwrite
    (``KeyFileExistsError``).

    The key is written and fsynced under a temporary name in the same directory, then
    published with ``link()``, which fails if ``path`` exists: a process that reads
    ``path`` sees a whole key or none, and of two processes creating it at once exactly
    one wins (collectors sharing a PostgreSQL store start together and share the log key)."""
    signer = Ed25519Signer.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise KeyFileExistsError(f"{path} already exists; refusing to overwrite a key")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(signer.private_pem())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError as exc:
            raise KeyFileExistsError(f"{path} already exists; refusing to overwrite a key") from exc
        except OSError:  # a filesystem without hard links: exclusive create, written in place
            _write_exclusive(path, signer.private_pem())
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return signer


def _write_exclusive(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileExistsError(f"{path} already exists; refusing to overwrite a key") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(directory: Path) -> None:
    """Make a new name in ``directory`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_key_file(path: Path) -> Ed25519Signer:
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise KeyFileError(f"key file {path} does not exist") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; group/others must have no access")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be read: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key file {path} is not a PEM private key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"key file {path} holds {type(key).__name__}; the file: backend uses Ed25519")
    return Ed25519Signer(key)


def open_signer(uri: str, *, create: bool = False) -> Signer:
    """Open the signer named by ``uri``. ``file:`` is implemented; others are refused clearly."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        raw = parsed.path if parsed.netloc == "" else parsed.netloc + parsed.path
        if not raw:
            raise KeyFileError(f"key URI {uri!r} names no file; expected file:/path/to/key.pem")
        path = Path(raw)
        if create and not path.exists():
            return create_key_file(path)
        return load_key_file(path)
    if parsed.scheme in ("tpm", "pkcs11"):
        raise KeyFileError(f"key backend {parsed.scheme}: is not implemented yet; use file:/path")
    raise KeyFileError(f"unknown key URI {uri!r}; expected file:/path/to/key.pem")
