"""mTLS between agents and the collector: operator CA, node identity bound to the certificate."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.node import open_channel
from agent.stream import enroll, tls_channel
from attestation.keys import Ed25519Signer
from collector.ca import init_ca, issue
from collector.config import CollectorConfig
from collector.detect.config import DetectConfig
from collector.detect.engine import DetectorEngine
from collector.server import InsecureRefusedError, start_collector
from collector.store.sqlite import SqliteStore
from collector.tenants import TenantDirectory
from core.agentconfig import AgentConfig

Runner = Callable[[Any], Any]


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = tmp_path / "ca"
    init_ca(ca)
    issue(ca, "collector", server=True, hosts=("127.0.0.1", "localhost"))
    issue(ca, "n1", server=False)
    issue(ca, "n2", server=False)
    other = tmp_path / "rogue-ca"
    init_ca(other, "rogue")
    issue(other, "n1", server=False)
    return tmp_path


def test_ca_files_are_private_and_certificates_chain(pki: Path) -> None:
    for key in (pki / "ca" / "ca.key", pki / "ca" / "n1.key", pki / "ca" / "collector.key"):
        assert key.stat().st_mode & 0o077 == 0, f"{key} is readable by others"
    ctx = ssl.create_default_context(cafile=str(pki / "ca" / "ca.crt"))
    ctx.load_cert_chain(str(pki / "ca" / "n1.crt"), str(pki / "ca" / "n1.key"))  # key matches cert


def _collector_config(pki: Path) -> CollectorConfig:
    return CollectorConfig(
        listen="127.0.0.1:0",
        metrics_listen="",
        db=pki / "c.db",
        tls_cert=pki / "ca" / "collector.crt",
        tls_key=pki / "ca" / "collector.key",
        tls_client_ca=pki / "ca" / "ca.crt",
    )


def test_mtls_enrolls_the_right_node_and_refuses_everyone_else(pki: Path, run_async: Runner) -> None:
    ca = pki / "ca"

    def channel(port: int, name: str, ca_dir: Path = ca) -> grpc.aio.Channel:
        return tls_channel(
            f"127.0.0.1:{port}",
            (ca / "ca.crt").read_bytes(),
            (ca_dir / f"{name}.crt").read_bytes(),
            (ca_dir / f"{name}.key").read_bytes(),
        )

    async def scenario() -> None:
        store = SqliteStore(pki / "c.db")
        running = await start_collector(
            _collector_config(pki), store, DetectorEngine(DetectConfig(), TenantDirectory())
        )
        port = running.port
        try:
            now = time.time_ns() // 1_000_000
            t1, t2, t3 = (store.create_token(600, now) for _ in range(3))
            # The node whose certificate names it enrolls.
            async with channel(port, "n1") as ch:
                signer = Ed25519Signer.generate()
                assert await enroll(ch, "n1", signer, t1, attempts=1) == signer.key_id
            # A valid certificate for n2 cannot speak for n1.
            async with channel(port, "n2") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await enroll(ch, "n1", Ed25519Signer.generate(), t2, attempts=1)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "n2" in (err.value.details() or "")
            # A certificate from another CA does not get through the handshake.
            async with channel(port, "n1", pki / "rogue-ca") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await enroll(ch, "n1", Ed25519Signer.generate(), t3, attempts=1, timeout_s=3)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            # Plaintext to a TLS port fails.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                with pytest.raises(grpc.aio.AioRpcError):
                    await enroll(ch, "n1", Ed25519Signer.generate(), t3, attempts=1, timeout_s=3)
            # A handshake of garbage does not hurt the server.
            await asyncio.to_thread(_send_garbage, port)
            async with channel(port, "n1") as ch:
                signer2 = Ed25519Signer.generate()
                assert await enroll(ch, "n1", signer2, t3, attempts=1) == signer2.key_id
            assert running.metrics.refused.labels("peer_mismatch")._value.get() == 1
        finally:
            await running.stop(0.5)
            store.close()

    run_async(scenario())


def _send_garbage(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x02\x00" + bytes(range(256)) * 4)
        s.settimeout(2)
        try:
            s.recv(1024)
        except OSError:
            pass


def test_plaintext_is_refused_without_the_explicit_flag(tmp_path: Path, run_async: Runner) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "c.db")
        try:
            with pytest.raises(InsecureRefusedError):
                await start_collector(
                    CollectorConfig(listen="127.0.0.1:0", metrics_listen="", db=tmp_path / "c.db"),
                    store,
                    DetectorEngine(DetectConfig(), TenantDirectory()),
                )
        finally:
            store.close()

    run_async(scenario())
    with pytest.raises(RuntimeError, match="insecure"):
        open_channel(AgentConfig(collector="127.0.0.1:1"))


def test_agent_config_opens_an_mtls_channel(pki: Path) -> None:
    ca = pki / "ca"
    cfg = dataclasses.replace(
        AgentConfig(collector="127.0.0.1:1"), tls_ca=ca / "ca.crt", tls_cert=ca / "n1.crt", tls_key=ca / "n1.key"
    )

    async def scenario() -> None:
        ch = open_channel(cfg)
        assert isinstance(ch, grpc.aio.Channel)
        await ch.close()

    asyncio.run(scenario())
