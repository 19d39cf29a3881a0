"""Kubernetes enrollment end to end: a real collector under mTLS, agents that start with
only the shared bootstrap certificate and their pod's projected token (minted here), and
come away enrolled with their own client certificate. A pod on node A cannot enroll node B."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from agent.node import bootstrap_k8s, open_channel
from agent.spool import Spool
from agent.stream import enroll, tls_channel
from attestation.keys import Ed25519Signer
from collector.ca import init_ca, issue
from collector.config import CollectorConfig
from collector.detect.config import DetectConfig
from collector.detect.engine import DetectorEngine
from collector.enroll_k8s import BOOTSTRAP_NAME
from collector.server import start_collector
from collector.store.sqlite import SqliteStore
from collector.tenants import TenantDirectory
from core.agentconfig import AgentConfig
from tests.unit.collector.k8s_tokens import ISSUER, NOW, Issuer

Runner = Callable[[Any], Any]


def _agent(tmp: Path, node: str, port: int, token: str) -> AgentConfig:
    ca = tmp / "ca"
    (tmp / node).mkdir(exist_ok=True)
    (tmp / node / "token").write_text(token)
    return AgentConfig(
        node_id=node,
        collector=f"127.0.0.1:{port}",
        tls_ca=ca / "ca.crt",
        tls_cert=tmp / node / "tls" / "node.crt",
        tls_key=tmp / node / "tls" / "node.key",
        k8s_token_file=tmp / node / "token",
        tls_bootstrap_cert=ca / f"{BOOTSTRAP_NAME}.crt",
        tls_bootstrap_key=ca / f"{BOOTSTRAP_NAME}.key",
    )


def test_each_pod_enrolls_its_own_node_and_gets_its_certificate(tmp_path: Path, run_async: Runner) -> None:
    ca = tmp_path / "ca"
    init_ca(ca)
    issue(ca, "collector", server=True, hosts=("127.0.0.1",))
    issue(ca, BOOTSTRAP_NAME, server=False)
    cluster = Issuer()
    cfg = CollectorConfig(
        listen="127.0.0.1:0",
        metrics_listen="",
        health_listen="127.0.0.1:0",
        db=tmp_path / "c.db",
        tls_cert=ca / "collector.crt",
        tls_key=ca / "collector.key",
        tls_client_ca=ca / "ca.crt",
        k8s_issuer=ISSUER,
        k8s_jwks=cluster.jwks(tmp_path / "jwks.json"),
        issue_ca_cert=ca / "ca.crt",
        issue_ca_key=ca / "ca.key",
    )
    # Tokens are minted for NOW; the collector checks expiry against the real clock.
    now = int(time.time())
    fresh = {"iat": now - 5, "nbf": now - 5, "exp": now + 595}

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "c.db")
        running = await start_collector(cfg, store, DetectorEngine(DetectConfig(), TenantDirectory()))
        try:
            for node in ("gpu-a", "gpu-b"):
                agent = _agent(tmp_path, node, running.port, cluster.token(node, **fresh))
                signer = Ed25519Signer.generate()
                spool = Spool(tmp_path / node / "spool.db")
                await bootstrap_k8s(agent, signer, spool)
                assert spool.get_meta("enrolled_key_id") == signer.key_id
                assert agent.tls_key is not None and agent.tls_key.stat().st_mode & 0o077 == 0
                cert = x509.load_pem_x509_certificate(agent.tls_cert.read_bytes())  # type: ignore[union-attr]
                assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == node
                key = store.key(signer.key_id)
                assert key is not None and key.node_id == node
                # The issued certificate is good for mTLS as this node: enrolling again is a renewal.
                async with open_channel(agent) as ch:
                    t = store.create_token(60, time.time_ns() // 1_000_000)
                    assert await enroll(ch, node, Ed25519Signer.generate(), t, attempts=1)
                spool.close()
            # A pod on gpu-b, holding gpu-b's token, claims to be gpu-a: refused, nothing enrolled.
            thief = _agent(tmp_path, "gpu-a", running.port, cluster.token("gpu-b", **fresh))
            thief = dataclasses.replace(thief, tls_cert=tmp_path / "x.crt", tls_key=tmp_path / "x.key")
            signer = Ed25519Signer.generate()
            spool = Spool(tmp_path / "thief.db")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await bootstrap_k8s(thief, signer, spool)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "pod on node 'gpu-b', not node 'gpu-a'" in (err.value.details() or "")
            assert store.key(signer.key_id) is None and not (tmp_path / "x.crt").exists()
            # An expired token (minted at NOW, long past) is refused with its reason.
            late = _agent(tmp_path, "gpu-c", running.port, cluster.token("gpu-c", iat=NOW - 600, exp=NOW))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await bootstrap_k8s(late, Ed25519Signer.generate(), spool)
            assert "k8s_token_expired" in (err.value.details() or "")
            spool.close()
            # The bootstrap certificate alone cannot enroll with a join token: it names no node.
            async with tls_channel(
                f"127.0.0.1:{running.port}",
                (ca / "ca.crt").read_bytes(),
                (ca / f"{BOOTSTRAP_NAME}.crt").read_bytes(),
                (ca / f"{BOOTSTRAP_NAME}.key").read_bytes(),
            ) as ch:
                t = store.create_token(60, time.time_ns() // 1_000_000)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await enroll(ch, "gpu-d", Ed25519Signer.generate(), t, attempts=1)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert running.metrics.enroll_refused.labels("k8s_token_node_mismatch")._value.get() == 1
            # The kubelet's probe port: plaintext health only.
            assert running.health_server is not None
        finally:
            await running.stop(0.5)
            store.close()

    run_async(scenario())
