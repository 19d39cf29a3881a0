"""Projected service-account tokens minted in tests, as a kube-apiserver signs them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISSUER = "https://kubernetes.default.svc.cluster.local"
NOW = 1_780_000_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(n: int) -> str:
    return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class Issuer:
    """A cluster's service-account issuer: one RSA key (kid "rsa-1") and one P-256 key ("ec-1")."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())

    def jwks(self, path: Path) -> Path:
        r = self.rsa.public_key().public_numbers()
        e = self.ec.public_key().public_numbers()
        keys = [
            {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": _int(r.n), "e": _int(r.e)},
            {"kty": "EC", "kid": "ec-1", "crv": "P-256", "alg": "ES256", "x": _int(e.x), "y": _int(e.y)},
        ]
        path.write_text(json.dumps({"keys": keys}))
        return path

    def token(self, node: str = "node-a", *, alg: str = "RS256", **over: Any) -> str:
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": ["gpuaudit-collector"],
            "sub": "system:serviceaccount:gpuaudit:gpuaudit-agent",
            "iat": NOW - 10,
            "nbf": NOW - 10,
            "exp": NOW + 590,
            "kubernetes.io": {
                "namespace": "gpuaudit",
                "serviceaccount": {"name": "gpuaudit-agent", "uid": "sa-uid"},
                "pod": {"name": f"gpuaudit-agent-{node}", "uid": "pod-uid"},
                "node": {"name": node, "uid": "node-uid"},
            },
        }
        claims.update(over)
        claims = {k: v for k, v in claims.items() if v is not None}
        header = {"alg": alg, "kid": "rsa-1" if alg == "RS256" else "ec-1"}
        signed = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        if alg == "RS256":
            sig = self.rsa.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = decode_dss_signature(self.ec.sign(signed.encode(), ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signed}.{_b64(sig)}"
