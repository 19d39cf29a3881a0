"""The configured store (SQLite, or PostgreSQL for ``db_url``), opened for a command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from attestation.exitcodes import unavailable
from core.errors import ConfigError

if TYPE_CHECKING:
    from collector.config import CollectorConfig
    from collector.store.base import Store


def open_store(cfg: CollectorConfig, *, create: bool = False) -> Store:
    """The configured store. Only ``serve`` and ``token create`` may create a SQLite file: a
    command that reads (findings, export, report, ...) given a wrong path says so instead of
    leaving an empty database behind."""
    if cfg.db_url is not None:
        # Imported only here: a SQLite collector runs without psycopg installed.
        try:
            from collector.store.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(f"db_url needs psycopg: pip install 'gpuaudit[postgres]' ({exc})") from exc
        return PostgresStore(cfg.db_url)
    from collector.store.sqlite import SqliteStore

    if not create and not Path(cfg.db).exists():
        raise unavailable(f"no store at {cfg.db}: give the collector's --db (or --config)")
    return SqliteStore(cfg.db)
