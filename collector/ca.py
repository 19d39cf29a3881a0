"""An operator CA for mTLS between agents and the collector.

``gpuaudit-collector ca init`` creates the CA (ECDSA P-256; the key 0600, never leaves the
operator's machine); ``ca issue`` creates a server certificate (with the host names and IP
addresses agents dial) or a client certificate for one node (its common name is the node
id: the collector refuses a stream whose Hello names another node). ``ca issue --nodes FILE``
does the latter for a list of nodes at once, laid out as each node's ``/etc/gpuaudit``
(``<node>/tls/ca.crt``, ``node.crt``, ``node.key``: the paths deploy/config/agent.toml names).

In Kubernetes the collector itself signs agents' client certificates when they enroll
(``sign_client_csr``; collector/enroll_k8s.py proves the node), so no one issues them by hand.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector.errors import CollectorError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
# A node's files under its directory, as deploy/config/agent.toml expects them in /etc/gpuaudit.
NODE_TLS_DIR = "tls"
NODE_CERT = "node.crt"
NODE_KEY = "node.key"


class CaError(CollectorError):
    reason = "ca"


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    not_after: dt.datetime


def _write_private(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise CaError(f"{path} already exists; refusing to overwrite a private key") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def init_ca(directory: Path, name: str = "gpuaudit operator CA", days: int = 3650) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / CA_KEY, _key_pem(key))
    (directory / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory / CA_CERT


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CaError(f"no CA in {directory}: run `gpuaudit-collector ca init --dir {directory}` first") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{directory / CA_KEY} is not an ECDSA key")
    return cert, key


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or any(c.isspace() for c in name) or len(name) > 253:
        raise CaError(f"bad certificate name {name!r}: a host name or node id, without '/', spaces or a leading '.'")


def _certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    name: str,
    public_key: ec.EllipticCurvePublicKey,
    *,
    server: bool,
    hosts: tuple[str, ...] = (),
    days: int = 397,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = []
    for h in hosts or ((name,) if server else ()):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def issue(
    directory: Path, name: str, *, server: bool, hosts: tuple[str, ...] = (), days: int = 397, out: Path | None = None
) -> Issued:
    """Issue a certificate signed by the CA in ``directory``; writes ``<name>.crt`` and ``<name>.key``."""
    _check_name(name)
    ca_cert, ca_key = _load_ca(directory)
    out = out or directory
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(ca_cert, ca_key, name, key.public_key(), server=server, hosts=hosts, days=days)
    key_path = out / f"{name}.key"
    cert_path = out / f"{name}.crt"
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path, cert.not_valid_after_utc)


def read_node_list(path: Path) -> list[str]:
    """Node ids, one a line; blank lines and ``#`` comments skipped. Duplicates and bad names are errors."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CaError(f"cannot read the node list {path}: {exc.strerror or exc}") from exc
    nodes: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        node = line.split("#", 1)[0].strip()
        if not node:
            continue
        try:
            _check_name(node)
        except CaError as exc:
            raise CaError(f"{path}:{lineno}: {exc}") from None
        if node in nodes:
            raise CaError(f"{path}:{lineno}: node {node!r} is listed twice")
        nodes.append(node)
    if not nodes:
        raise CaError(f"{path} lists no nodes (one node id a line)")
    return nodes


def node_dir(out: Path, node: str) -> Path:
    """Where a node's files go: the tree to copy into that node's /etc/gpuaudit."""
    return out / node


def issue_nodes(directory: Path, nodes: list[str], out: Path, days: int = 397) -> list[Issued]:
    """One client certificate per node: ``<out>/<node>/tls/{ca.crt,node.crt,node.key}``.

    Nothing is written unless every node's key can be: an existing ``node.key`` stops the
    whole run before the first certificate, so a rerun never leaves half a site reissued."""
    for node in nodes:
        _check_name(node)
    ca_cert, ca_key = _load_ca(directory)
    taken = [p for n in nodes if (p := node_dir(out, n) / NODE_TLS_DIR / NODE_KEY).exists()]
    if taken:
        more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
        raise CaError(f"{taken[0]}{more} already exist; refusing to overwrite private keys (move them away first)")
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    issued = []
    for node in nodes:
        tls = node_dir(out, node) / NODE_TLS_DIR
        tls.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(ca_cert, ca_key, node, key.public_key(), server=False, days=days)
        _write_private(tls / NODE_KEY, _key_pem(key))
        (tls / NODE_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tls / CA_CERT).write_bytes(ca_pem)
        issued.append(Issued(tls / NODE_CERT, tls / NODE_KEY, cert.not_valid_after_utc))
    return issued


@dataclass(frozen=True)
class IssuingCa:
    """The CA the collector signs enrolled nodes' client certificates with (Kubernetes)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> IssuingCa:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except OSError as exc:
            raise CaError(f"cannot read the issuing CA ({exc.filename}): {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise CaError(f"the issuing CA {cert_path} / {key_path} is not PEM: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"{key_path} is not an ECDSA key (create the CA with `gpuaudit-collector ca init`)")
        if cert.public_key() != key.public_key():
            raise CaError(f"{key_path} is not the key of {cert_path}")
        return cls(cert, key)

    def sign_client_csr(self, csr_der: bytes, node_id: str, days: int) -> bytes:
        """A client certificate (PEM) for ``node_id`` on the CSR's key. The CSR's own subject
        is ignored: the common name is the node the caller proved, nothing the CSR claims."""
        _check_name(node_id)
        try:
            csr = x509.load_der_x509_csr(csr_der)
        except ValueError as exc:
            raise CaError(f"the certificate request is not a DER PKCS#10 CSR: {exc}") from exc
        if not csr.is_signature_valid:
            raise CaError("the certificate request's self-signature does not verify")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise CaError("the certificate request must be for an ECDSA P-256 key")
        cert = _certificate(self.cert, self.key, node_id, public, server=False, days=days)
        return cert.public_bytes(serialization.Encoding.PEM)
