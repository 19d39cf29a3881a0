"""Kubernetes projected-token enrollment (collector/enroll_k8s.py): each refusal is one line
that names what was wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.enroll_k8s import K8sTokenError, K8sTokenVerifier, load_jwks
from tests.unit.collector.k8s_tokens import ISSUER, NOW, Issuer


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def verifier(issuer: Issuer, tmp_path: Path) -> K8sTokenVerifier:
    return K8sTokenVerifier(ISSUER, load_jwks(issuer.jwks(tmp_path / "jwks.json")), clock=lambda: float(NOW))


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_a_pods_token_proves_its_own_node(verifier: K8sTokenVerifier, issuer: Issuer, alg: str) -> None:
    ident = verifier.verify(issuer.token("node-a", alg=alg), "node-a")
    assert (ident.node, ident.pod, ident.namespace, ident.service_account) == (
        "node-a",
        "gpuaudit-agent-node-a",
        "gpuaudit",
        "gpuaudit-agent",
    )


def _refused(verifier: K8sTokenVerifier, token: str, node: str = "node-a") -> K8sTokenError:
    with pytest.raises(K8sTokenError) as info:
        verifier.verify(token, node)
    assert "\n" not in str(info.value), "an enrollment refusal must be one line"
    return info.value


def test_node_bs_token_cannot_enroll_node_a(verifier: K8sTokenVerifier, issuer: Issuer) -> None:
    err = _refused(verifier, issuer.token("node-b"), "node-a")
    assert err.reason == "k8s_token_node_mismatch"
    assert "pod on node 'node-b', not node 'node-a'" in str(err)


@pytest.mark.parametrize(
    ("over", "reason", "words"),
    [
        ({"aud": ["https://kubernetes.default.svc"]}, "k8s_token_audience", "lacks 'gpuaudit-collector'"),
        ({"iss": "https://evil.example"}, "k8s_token_issuer", "issuer 'https://evil.example' is not"),
        ({"exp": NOW - 600, "iat": NOW - 1200, "nbf": NOW - 1200}, "k8s_token_expired", "expired 600 s ago"),
        ({"iat": NOW + 600, "nbf": NOW + 600, "exp": NOW + 1200}, "k8s_token_expired", "not valid yet"),
        ({"iat": NOW - 10, "exp": NOW + 86400 * 365}, "k8s_token_lifetime", "not a Secret-based one"),
        ({"sub": "system:serviceaccount:default:default"}, "k8s_token_subject", "default:default"),
        ({"kubernetes.io": {"namespace": "gpuaudit"}}, "k8s_token_subject", "not bound to a pod"),
        (
            {"kubernetes.io": {"namespace": "gpuaudit", "pod": {"name": "p", "uid": "u"}}},
            "k8s_token_no_node",
            "Kubernetes 1.30+",
        ),
    ],
)
def test_claims_that_are_refused(
    verifier: K8sTokenVerifier, issuer: Issuer, over: dict[str, object], reason: str, words: str
) -> None:
    err = _refused(verifier, issuer.token("node-a", **over))
    assert err.reason == reason, str(err)
    assert words in str(err)


def test_a_bad_signature_or_a_foreign_key_is_refused(verifier: K8sTokenVerifier, issuer: Issuer) -> None:
    head, body, sig = issuer.token("node-a").split(".")
    other = Issuer().token("node-a")  # same kid, another cluster's key
    for token in (f"{head}.{body}.{sig[:-4]}AAAA", other):
        err = _refused(verifier, token)
        assert err.reason == "k8s_token_signature" and "does not verify" in str(err)
    # The claims are only trusted once the signature over them verifies: swap in node-b's payload.
    forged = f"{head}.{issuer.token('node-b').split('.')[1]}.{sig}"
    assert _refused(verifier, forged, "node-b").reason == "k8s_token_signature"


def test_unsigned_or_malformed_tokens_are_refused(verifier: K8sTokenVerifier, issuer: Issuer) -> None:
    import base64
    import json

    head, body, _ = issuer.token("node-a").split(".")
    none = base64.urlsafe_b64encode(json.dumps({"alg": "none"}).encode()).rstrip(b"=").decode()
    assert "'none' is not RS256 or ES256" in str(_refused(verifier, f"{none}.{body}."))
    assert "not a JWT" in str(_refused(verifier, "a-join-token"))
    assert _refused(verifier, f"{head}.{body}").reason == "k8s_token_malformed"


def test_jwks_file_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(K8sTokenError, match="cannot read the issuer keys"):
        load_jwks(tmp_path / "missing.json")
    (tmp_path / "j.json").write_text("<html>")
    with pytest.raises(K8sTokenError, match=r"kubectl get --raw /openid/v1/jwks"):
        load_jwks(tmp_path / "j.json")
    (tmp_path / "j.json").write_text('{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA"}]}')
    with pytest.raises(K8sTokenError, match="holds no RSA or EC P-256 key"):
        load_jwks(tmp_path / "j.json")
