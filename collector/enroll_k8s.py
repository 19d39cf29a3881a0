"""Enrollment without a human per node, in Kubernetes: each agent pod proves which node it
runs on with a projected service-account token, as SPIRE's ``k8s_psat`` node attestor does.

The DaemonSet projects a token for the audience ``gpuaudit-collector`` (600 s, renewed by the
kubelet). The API server signs it with the cluster's service-account issuer key and binds it
to the pod; from Kubernetes 1.30 on (``ServiceAccountTokenPodNodeInfo``, beta and on by
default in 1.30) it also names the pod's node::

    {"iss": "https://kubernetes.default.svc.cluster.local", "aud": ["gpuaudit-collector"],
     "sub": "system:serviceaccount:gpuaudit:gpuaudit-agent", "iat": ..., "nbf": ..., "exp": ...,
     "kubernetes.io": {"namespace": "gpuaudit",
                       "serviceaccount": {"name": "gpuaudit-agent", "uid": "..."},
                       "pod": {"name": "gpuaudit-agent-x7k2p", "uid": "..."},
                       "node": {"name": "gpu-node-17", "uid": "..."}}}

The collector checks it offline, against the issuer's public keys (a JWKS file: the
cluster's ``/openid/v1/jwks``), in this order:

1. the token is a compact JWS whose header names RS256 or ES256 (nothing else, never "none");
2. the signature verifies under the JWKS key the header's ``kid`` names (or, without a kid,
   under one key of the header's type);
3. ``iss`` is the configured issuer, ``aud`` contains the configured audience;
4. ``nbf``/``iat`` are not in the future and ``exp`` is not past (``CLOCK_SKEW_S`` either way),
   and the token lived at most ``MAX_LIFETIME_S`` (a long-lived Secret-based token is refused);
5. ``sub`` is the configured service account, and the token is bound to a pod of it;
6. the ``kubernetes.io.node.name`` claim equals the node id being enrolled: a pod on node A
   holds no token that names node B.

Without the node claim (Kubernetes before 1.30) the token is refused: resolving the pod to
its node would need the API server, which the collector does not call. A token taken from a
pod can enroll a key for that pod's node until it expires; the shared bootstrap certificate
(mTLS) keeps it off the network outside the cluster. Each step's failure is one line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.errors import Error
from attestation.keys import key_id_of
from attestation.v1 import collector_pb2 as pb
from collector.errors import CollectorError, EnrollmentError

if TYPE_CHECKING:
    from collector.ca import IssuingCa
    from collector.metrics import CollectorMetrics
    from collector.store.base import Store

_logger = logging.getLogger(__name__)

# The audience the DaemonSet's projected token is requested for.
DEFAULT_AUDIENCE = "gpuaudit-collector"
DEFAULT_SERVICE_ACCOUNT = "system:serviceaccount:gpuaudit:gpuaudit-agent"
# Clock skew tolerated between the API server and the collector, seconds.
CLOCK_SKEW_S = 60
# Longest token lifetime accepted (exp - iat): the kubelet's own default projection, 3607 s.
# The DaemonSet asks for 600 s.
MAX_LIFETIME_S = 3607
# The common name of the shared bootstrap client certificate: good for enrolling with a
# Kubernetes token, nothing else (a stream must present the node's own certificate).
BOOTSTRAP_NAME = "gpuaudit-bootstrap"


class K8sTokenError(CollectorError):
    """A Kubernetes service-account token was refused. ``reason`` is one of a fixed set
    (metrics label); the message says what was wrong and what to change."""

    reason = "k8s_token"


def _b64url(part: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise K8sTokenError(f"token {what} is not base64url", reason="k8s_token_malformed") from exc


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise K8sTokenError(f"token {what} is not JSON", reason="k8s_token_malformed") from exc
    if not isinstance(doc, dict):
        raise K8sTokenError(f"token {what} is not a JSON object", reason="k8s_token_malformed")
    return doc


def _int_b64(value: Any, what: str) -> int:
    if not isinstance(value, str):
        raise ValueError(f"{what} is missing")
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


@dataclass(frozen=True)
class _Key:
    kid: str | None
    public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def load_jwks(path: Path) -> tuple[_Key, ...]:
    """The issuer's public keys from a JWKS file (RSA and EC P-256; other keys are skipped)."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise K8sTokenError(f"cannot read the issuer keys {path}: {exc.strerror or exc}", reason="k8s_jwks") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise K8sTokenError(
            f"{path} is not JSON: save `kubectl get --raw /openid/v1/jwks` there", reason="k8s_jwks"
        ) from exc
    raw = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        raise K8sTokenError(f'{path} has no "keys" list: is it the output of /openid/v1/jwks?', reason="k8s_jwks")
    keys: list[_Key] = []
    for i, k in enumerate(raw):
        if not isinstance(k, dict):
            continue
        kid = k.get("kid") if isinstance(k.get("kid"), str) else None
        try:
            if k.get("kty") == "RSA":
                keys.append(
                    _Key(kid, rsa.RSAPublicNumbers(_int_b64(k.get("e"), "e"), _int_b64(k.get("n"), "n")).public_key())
                )
            elif k.get("kty") == "EC" and k.get("crv") == "P-256":
                numbers = ec.EllipticCurvePublicNumbers(
                    _int_b64(k.get("x"), "x"), _int_b64(k.get("y"), "y"), ec.SECP256R1()
                )
                keys.append(_Key(kid, numbers.public_key()))
        except (ValueError, binascii.Error) as exc:
            raise K8sTokenError(f"{path}: key {i} ({kid or 'no kid'}) is malformed: {exc}", reason="k8s_jwks") from exc
    if not keys:
        raise K8sTokenError(f"{path} holds no RSA or EC P-256 key", reason="k8s_jwks")
    return tuple(keys)


@dataclass(frozen=True)
class PodIdentity:
    """What a verified token proves: which pod of which service account, on which node."""

    node: str
    pod: str
    namespace: str
    service_account: str


@dataclass(frozen=True)
class K8sTokenVerifier:
    issuer: str
    keys: tuple[_Key, ...]
    audience: str = DEFAULT_AUDIENCE
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    clock: Callable[[], float] = time.time

    @classmethod
    def from_files(
        cls, issuer: str, jwks: Path, audience: str = DEFAULT_AUDIENCE, service_account: str = DEFAULT_SERVICE_ACCOUNT
    ) -> K8sTokenVerifier:
        return cls(issuer, load_jwks(jwks), audience, service_account)

    def verify(self, token: str, node_id: str) -> PodIdentity:
        """The pod identity the token proves for ``node_id``; raises K8sTokenError otherwise."""
        # 1. A compact JWS with an algorithm we accept.
        parts = token.strip().split(".")
        if len(parts) != 3:
            raise K8sTokenError("k8s_token is not a JWT (header.payload.signature)", reason="k8s_token_malformed")
        header = _json_object(_b64url(parts[0], "header"), "header")
        alg = header.get("alg")
        if alg not in ("RS256", "ES256"):
            raise K8sTokenError(f"token algorithm {alg!r} is not RS256 or ES256", reason="k8s_token_malformed")
        # 2. The signature, under the issuer key the header names.
        self._check_signature(
            alg, header.get("kid"), f"{parts[0]}.{parts[1]}".encode("ascii"), _b64url(parts[2], "signature")
        )
        claims = _json_object(_b64url(parts[1], "payload"), "payload")
        # 3. Issuer and audience.
        if claims.get("iss") != self.issuer:
            raise K8sTokenError(
                f"token issuer {claims.get('iss')!r} is not {self.issuer!r} (k8s_issuer: the cluster's "
                "--service-account-issuer)",
                reason="k8s_token_issuer",
            )
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.audience not in auds:
            raise K8sTokenError(
                f"token audience {auds} lacks {self.audience!r}: project the token with audience {self.audience!r}",
                reason="k8s_token_audience",
            )
        # 4. Time.
        now = self.clock()
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int):
            raise K8sTokenError("token lacks numeric exp and iat claims", reason="k8s_token_malformed")
        if now > exp + CLOCK_SKEW_S:
            raise K8sTokenError(
                f"token expired {int(now - exp)} s ago: the kubelet renews the projected file; read it anew",
                reason="k8s_token_expired",
            )
        nbf = claims.get("nbf", iat)
        if not isinstance(nbf, int) or max(nbf, iat) > now + CLOCK_SKEW_S:
            raise K8sTokenError(
                "token is not valid yet (nbf/iat in the future): check the collector's and API server's clocks",
                reason="k8s_token_expired",
            )
        if exp - iat > MAX_LIFETIME_S:
            raise K8sTokenError(
                f"token lives {exp - iat} s, more than {MAX_LIFETIME_S} s: use a projected token (expirationSeconds "
                "600), not a Secret-based one",
                reason="k8s_token_lifetime",
            )
        # 5. The service account, and a pod of it.
        if claims.get("sub") != self.service_account:
            raise K8sTokenError(
                f"token subject {claims.get('sub')!r} is not {self.service_account!r} (k8s_service_account)",
                reason="k8s_token_subject",
            )
        k8s = claims.get("kubernetes.io")
        k8s = k8s if isinstance(k8s, dict) else {}
        pod = _name(k8s, "pod")
        if pod is None:
            raise K8sTokenError(
                "token is not bound to a pod: use a projected service-account token", reason="k8s_token_subject"
            )
        # 6. The node.
        node = _name(k8s, "node")
        if node is None:
            raise K8sTokenError(
                "token has no kubernetes.io node claim: needs Kubernetes 1.30+ (ServiceAccountTokenPodNodeInfo)",
                reason="k8s_token_no_node",
            )
        if node != node_id:
            raise K8sTokenError(
                f"token is for a pod on node {node!r}, not node {node_id!r}: a pod enrolls only its own node",
                reason="k8s_token_node_mismatch",
            )
        sa = _name(k8s, "serviceaccount") or ""
        namespace = k8s.get("namespace") if isinstance(k8s.get("namespace"), str) else ""
        return PodIdentity(node=node, pod=pod, namespace=str(namespace), service_account=sa)

    def _check_signature(self, alg: str, kid: Any, signed: bytes, signature: bytes) -> None:
        want = rsa.RSAPublicKey if alg == "RS256" else ec.EllipticCurvePublicKey
        candidates = [k for k in self.keys if isinstance(k.public, want) and (kid is None or k.kid == kid)]
        if not candidates:
            raise K8sTokenError(
                f"no issuer key {kid!r} for {alg} in k8s_jwks: refresh it from the cluster's /openid/v1/jwks",
                reason="k8s_token_signature",
            )
        for k in candidates:
            try:
                if isinstance(k.public, rsa.RSAPublicKey):
                    k.public.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
                else:
                    if len(signature) != 64:
                        continue
                    der = encode_dss_signature(
                        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                    )
                    k.public.verify(der, signed, ec.ECDSA(hashes.SHA256()))
                return
            except InvalidSignature:
                continue
        raise K8sTokenError(
            "token signature does not verify under the cluster's issuer keys (k8s_jwks)", reason="k8s_token_signature"
        )


def _name(k8s: Mapping[str, Any], what: str) -> str | None:
    obj = k8s.get(what)
    name = obj.get("name") if isinstance(obj, dict) else None
    return name if isinstance(name, str) and name else None


class K8sEnrollment:
    """The Enroll RPC's path for a request that carries ``k8s_token``: verify the token for the
    node, enroll the key (idempotent for the same node and key, so an agent may call again to
    renew its certificate), and sign the node's client certificate when asked and able."""

    def __init__(
        self,
        verifier: K8sTokenVerifier,
        store: Store,
        metrics: CollectorMetrics,
        *,
        issuing_ca: IssuingCa | None = None,
        cert_days: int = 30,
        require_peer_identity: bool = False,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        timeout_s: float = 10.0,
        collector_id: str = "collector-1",
    ) -> None:
        self._verifier = verifier
        self._store = store
        self._metrics = metrics
        self._ca = issuing_ca
        self._cert_days = cert_days
        self._require_peer = require_peer_identity
        self._clock_ms = clock_ms
        self._timeout_s = timeout_s
        self.collector_id = collector_id

    async def enroll(self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext) -> pb.EnrollResponse:
        node_id = request.node_id
        try:
            if node_id == BOOTSTRAP_NAME:
                raise K8sTokenError(
                    f"node id {BOOTSTRAP_NAME!r} is reserved for the bootstrap certificate", reason="bad_request"
                )
            if self._require_peer:
                # Under mTLS: the shared bootstrap certificate, or this node's own (renewal).
                names = [v.decode("utf-8", "replace") for v in context.auth_context().get("x509_common_name", [])]
                if BOOTSTRAP_NAME not in names and node_id not in names:
                    raise K8sTokenError(
                        f"client certificate names {names or 'no node'}, "
                        f"neither {BOOTSTRAP_NAME!r} nor node {node_id!r}",
                        reason="peer_mismatch",
                    )
            ident = self._verifier.verify(request.k8s_token, node_id)
            key_id = await asyncio.wait_for(asyncio.to_thread(self._enroll_key, request), self._timeout_s)
            cert = b""
            if request.tls_csr_der and self._ca is not None:
                cert = self._ca.sign_client_csr(bytes(request.tls_csr_der), node_id, self._cert_days)
        except TimeoutError:
            self._metrics.enroll_refused.labels("timeout").inc()
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"enrollment took longer than {self._timeout_s} s; retry it"
            )
        except Error as exc:
            self._metrics.enroll_refused.labels(exc.reason).inc()
            _logger.warning("Kubernetes enrollment of node %r refused: %s", node_id, exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, exc.diagnostics())
        self._metrics.enrolled.inc()
        _logger.info(
            "enrolled node %s with key %s (Kubernetes pod %s/%s%s)",
            node_id,
            key_id,
            ident.namespace,
            ident.pod,
            ", client certificate issued" if cert else "",
        )
        return pb.EnrollResponse(key_id=key_id, collector_id=self.collector_id, tls_cert_pem=cert)

    def _enroll_key(self, request: pb.EnrollRequest) -> str:
        spki = bytes(request.public_key_spki)
        try:
            key_id = key_id_of(spki)
        except Exception as exc:  # noqa: BLE001 - any malformed key is the request's fault
            raise EnrollmentError(f"public key refused: {exc}", reason="bad_key") from exc
        existing = self._store.key(key_id)
        if existing is not None:
            if existing.node_id != request.node_id:
                raise EnrollmentError(
                    f"key {key_id} is already enrolled for node {existing.node_id!r}", reason="key_exists"
                )
            if existing.revoked_ms is not None:
                raise EnrollmentError(f"key {key_id} was revoked; the agent must make a new key", reason="key_exists")
            return key_id  # the same node and key again: renewal of its certificate
        # The token proved the node: a one-minute join token, used at once (as a key rotation is).
        token = self._store.create_token(60, self._clock_ms())
        return self._store.enroll(request.node_id, token, spki, request.key_assurance or "software", self._clock_ms())
