"""Fixtures for the collector's unit tests: a store, and nodes that sign valid chains."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from attestation import dsse
from attestation.dsse import Envelope
from attestation.keys import Ed25519Signer
from attestation.statement import Chain, GpuWindow, Series, UsageWindow, Workload, statement_bytes
from collector.ingest import Ingestor
from collector.store.sqlite import SqliteStore

NOW_MS = 1_700_000_000_000
WINDOW_MS = 60_000
FIRST_WINDOW_MS = 1_699_999_980_000  # a multiple of WINDOW_MS, before NOW_MS
GPU_POWER_MW = 300_000


class NodeChain:
    """A node agent in miniature: signs the statements of one key's chain, in order.

    ``window()`` builds the next statement without consuming it (to tamper with it);
    ``next()`` signs it and advances seq, prev, the window and the energy counters.
    """

    def __init__(self, node_id: str, signer: Ed25519Signer | None = None, gpus: int = 8, buckets: int = 60) -> None:
        self.node_id = node_id
        self.signer = signer or Ed25519Signer.generate()
        self.gpus = gpus
        self.buckets = buckets
        self.seq = 0
        self.prev: str | None = None
        self.start_ms = FIRST_WINDOW_MS
        self.energy_mj = [1_000_000_000 * (i + 1) for i in range(gpus)]

    @property
    def key_id(self) -> str:
        return self.signer.key_id

    def _gpu(self, i: int) -> GpuWindow:
        used_mj = GPU_POWER_MW * WINDOW_MS // 1000
        bucket_ms = WINDOW_MS // self.buckets
        return GpuWindow(
            index=i,
            uuid=f"GPU-{self.node_id}-{i:04d}",
            serial=f"1650{i:09d}",
            model="NVIDIA H100 80GB HBM3",
            mem_total_bytes=80 * 1024**3,
            power_limit_mw=700_000,
            samples=self.buckets,
            energy_start_mj=self.energy_mj[i],
            energy_end_mj=self.energy_mj[i] + used_mj,
            power_mean_mw=GPU_POWER_MW,
            power_max_mw=GPU_POWER_MW + 50_000,
            util_mean_permille=930,
            mem_used_max_bytes=60 * 1024**3,
            series=Series(
                bucket_ms=bucket_ms,
                util_permille=tuple(900 + (b % 7) * 10 for b in range(self.buckets)),
                power_mw=tuple(GPU_POWER_MW + (b % 5) * 1000 for b in range(self.buckets)),
            ),
            workloads=(Workload("tenant-a", "k8s_pod", "train/llm-0", 1, 60 * 1024**3, 1000, 0),),
        )

    def window(self, **changes: Any) -> UsageWindow:
        w = UsageWindow(
            node_id=self.node_id,
            boot_id="boot-1",
            agent_version="0.1.0",
            start_ms=self.start_ms,
            end_ms=self.start_ms + WINDOW_MS,
            sample_interval_ms=1000,
            chain=Chain(key_id=self.key_id, seq=self.seq, prev=self.prev),
            gpus=tuple(self._gpu(i) for i in range(self.gpus)),
        )
        return msgspec.structs.replace(w, **changes)

    def sign(self, window: UsageWindow, payload_type: str = dsse.IN_TOTO_PAYLOAD_TYPE) -> Envelope:
        return dsse.sign(statement_bytes(window), self.signer, payload_type)

    def next(self, **changes: Any) -> Envelope:
        w = self.window(**changes)
        env = self.sign(w)
        self.accept(w, env)
        return env

    def accept(self, w: UsageWindow, env: Envelope) -> None:
        """Advance past ``w`` as if it had been signed and sent."""
        self.seq = w.chain.seq + 1
        self.prev = env.digest()
        self.start_ms = w.end_ms
        for g in w.gpus:
            if g.energy_end_mj is not None:
                self.energy_mj[g.index] = g.energy_end_mj

    def take(self, n: int) -> list[Envelope]:
        return [self.next() for _ in range(n)]


# -- stores: every store test runs against SQLite and against PostgreSQL ---------------

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def with_search_path(url: str, schema: str) -> str:
    """``url`` with the session's search_path set to ``schema`` (libpq ``options``)."""
    return url + ("&" if "?" in url else "?") + f"options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The test server (GPUAUDIT_TEST_POSTGRES_URL overrides); skips when none is reachable."""
    url = os.environ.get("GPUAUDIT_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'gpuaudit[postgres]')")
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL server reachable at {url} (set GPUAUDIT_TEST_POSTGRES_URL): {exc}")
    return url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A URL whose search_path is a fresh schema, dropped after the test."""
    import psycopg

    schema = f"gpuaudit_test_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(postgres_server_url, schema)
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend under test; every test that uses a store runs on both."""
    return str(request.param)


@pytest.fixture
def open_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """open_store(**kwargs) -> a new store on this test's database (the same database on
    every call, so a test can reopen it); closed after the test."""
    opened: list[Any] = []
    if backend == "postgres":
        from collector.store.postgres import PostgresStore

        url = request.getfixturevalue("postgres_url")

        def _open(**kwargs: Any) -> Any:
            opened.append(PostgresStore(url, **kwargs))
            return opened[-1]
    else:
        path = tmp_path / "collector.db"

        def _open(**kwargs: Any) -> Any:
            opened.append(SqliteStore(path, **kwargs))
            return opened[-1]

    yield _open
    for s in opened:
        s.close()


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The store under test: SQLite in memory, or a PostgreSQL schema of its own."""
    if backend == "postgres":
        from collector.store.postgres import PostgresStore

        s: Any = PostgresStore(request.getfixturevalue("postgres_url"), now_ms=NOW_MS)
    else:
        s = SqliteStore(":memory:", now_ms=NOW_MS)
    yield s
    s.close()


@pytest.fixture
def enroll(store: SqliteStore) -> Callable[..., NodeChain]:
    """enroll(node_id="node-a", gpus=8) -> a NodeChain whose key is enrolled in ``store``."""

    def _enroll(node_id: str = "node-a", gpus: int = 8, buckets: int = 60) -> NodeChain:
        chain = NodeChain(node_id, gpus=gpus, buckets=buckets)
        token = store.create_token(3600, NOW_MS)
        key_id = store.enroll(node_id, token, chain.signer.public_key().spki_der, "software", NOW_MS)
        assert key_id == chain.key_id
        return chain

    return _enroll


@pytest.fixture
def new_chain() -> type[NodeChain]:
    """NodeChain itself: new_chain(node_id, gpus=8) -> a node whose key is not enrolled anywhere."""
    return NodeChain


@pytest.fixture
def ingestor(store: SqliteStore) -> Ingestor:
    return Ingestor(store, clock_ms=lambda: NOW_MS)
