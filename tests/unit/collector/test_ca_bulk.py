"""`ca issue --nodes` and `token create --nodes`: one command for a list of nodes, each node's
files laid out as its /etc/gpuaudit (the paths deploy/config/agent.toml names)."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector.ca import CaError, IssuingCa, init_ca, issue_nodes, read_node_list
from collector.cli import main
from collector.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[3]
NODES = ["kl1-n0001", "kl1-n0002", "kl1-n0003"]


def _node_list(tmp_path: Path) -> Path:
    path = tmp_path / "nodes.txt"
    path.write_text("# rack 1\nkl1-n0001\n\nkl1-n0002  # spare PSU\nkl1-n0003\n")
    return path


def _agent_defaults() -> dict[str, Path]:
    doc = tomllib.loads((ROOT / "deploy" / "config" / "agent.toml").read_text())
    return {k: Path(doc[k]) for k in ("tls_ca", "tls_cert", "tls_key", "join_token_file")}


def test_node_list_skips_comments_and_refuses_duplicates(tmp_path: Path) -> None:
    assert read_node_list(_node_list(tmp_path)) == NODES
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(CaError, match=r"dup.txt:3: node 'a' is listed twice"):
        read_node_list(tmp_path / "dup.txt")
    (tmp_path / "bad.txt").write_text("ok\n../etc\n")
    with pytest.raises(CaError, match=r"bad.txt:2: bad certificate name"):
        read_node_list(tmp_path / "bad.txt")


def test_ca_issue_nodes_lays_out_each_nodes_etc_gpuaudit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(ca)]) == 0
    out = tmp_path / "out"
    args = ["ca", "issue", "--dir", str(ca), "--client", "--nodes", str(_node_list(tmp_path)), "--out", str(out)]
    assert main(args) == 0
    assert "3 client certificates" in capsys.readouterr().out
    defaults = _agent_defaults()
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    for node in NODES:
        # The node's tree mirrors /etc/gpuaudit: copy out/<node>/ there and agent.toml finds everything.
        files = {k: out / node / v.relative_to("/etc/gpuaudit") for k, v in defaults.items() if k != "join_token_file"}
        cert = x509.load_pem_x509_certificate(files["tls_cert"].read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == node
        assert cert.issuer == ca_cert.subject
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert files["tls_ca"].read_bytes() == (ca / "ca.crt").read_bytes()
        assert stat.S_IMODE(files["tls_key"].stat().st_mode) == 0o600
    # A second run would overwrite keys: refused before anything is written.
    before = (out / "kl1-n0001" / "tls" / "node.crt").read_bytes()
    assert main(args) == 2
    assert "already exist; refusing to overwrite private keys" in capsys.readouterr().err
    assert (out / "kl1-n0001" / "tls" / "node.crt").read_bytes() == before


def test_issue_nodes_writes_nothing_if_one_key_exists(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    (tmp_path / "out" / "kl1-n0003" / "tls").mkdir(parents=True)
    (tmp_path / "out" / "kl1-n0003" / "tls" / "node.key").write_text("old")
    with pytest.raises(CaError, match="already exist"):
        issue_nodes(tmp_path / "ca", NODES, tmp_path / "out")
    assert not (tmp_path / "out" / "kl1-n0001").exists(), "no node may be issued when the run is refused"


def test_token_create_nodes_one_token_file_per_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "c.db"
    out = tmp_path / "out"
    args = ["token", "create", "--db", str(db), "--nodes", str(_node_list(tmp_path)), "--out-dir", str(out)]
    assert main(args) == 0
    assert "3 join tokens" in capsys.readouterr().out
    rel = _agent_defaults()["join_token_file"].relative_to("/etc/gpuaudit")
    tokens = [(out / n / rel).read_text().strip() for n in NODES]
    assert len(set(tokens)) == 3 and all(len(t) > 30 for t in tokens)
    assert all(stat.S_IMODE((out / n / rel).stat().st_mode) == 0o600 for n in NODES)
    store = SqliteStore(db)
    try:
        assert len(store.tokens()) == 3, "each token is known to the collector (by its hash)"
    finally:
        store.close()
    assert main(args) == 2, "a rerun must not replace tokens already handed out"
    assert "already exists" in capsys.readouterr().err
    assert main(["token", "create", "--db", str(db), "--nodes", str(_node_list(tmp_path))]) == 2
    assert "--nodes needs --out-dir" in capsys.readouterr().err


def test_issuing_ca_signs_the_proven_node_not_the_csr_subject(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    init_ca(tmp_path / "ca")
    ca = IssuingCa.load(tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "ca.key")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-b")]))
        .sign(key, hashes.SHA256())
    )
    pem = ca.sign_client_csr(csr.public_bytes(serialization.Encoding.DER), "node-a", days=30)
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-a"
    assert cert.public_key() == key.public_key()
    with pytest.raises(CaError, match="not a DER PKCS#10 CSR"):
        ca.sign_client_csr(b"junk", "node-a", days=30)
