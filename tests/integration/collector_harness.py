"""A real collector on 127.0.0.1:0 for integration tests: gRPC, SQLite, detector, metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from collector.config import CollectorConfig
from collector.detect.config import DetectConfig
from collector.detect.engine import DetectorEngine
from collector.server import RunningCollector, start_collector
from collector.store.sqlite import SqliteStore
from collector.tenants import TenantDirectory


@dataclass
class Harness:
    store: SqliteStore
    running: RunningCollector

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def tokens(self, n: int) -> list[str]:
        now = time.time_ns() // 1_000_000
        return [self.store.create_token(600, now) for _ in range(n)]


@asynccontextmanager
async def collector(tmp: Path, tenants: TenantDirectory | None = None) -> AsyncIterator[Harness]:
    store = SqliteStore(tmp / "collector.db")
    cfg = CollectorConfig(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0", insecure=True, db=tmp / "collector.db")
    running = await start_collector(cfg, store, DetectorEngine(DetectConfig(), tenants or TenantDirectory()))
    try:
        yield Harness(store, running)
    finally:
        await running.stop(0.5)
        store.close()
