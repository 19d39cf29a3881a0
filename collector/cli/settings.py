"""The configuration a command runs with: the collector config (``--config``, ``GPUAUDIT_*``,
its flags) and the detector's, and the checks and argument types several commands share."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attestation.exitcodes import unavailable, usage

if TYPE_CHECKING:
    from collector.config import CollectorConfig
    from collector.detect.config import DetectConfig


def add_store_flags(p: argparse.ArgumentParser) -> None:
    """``--config`` and ``--db``, which every command reading the store takes."""
    p.add_argument("--config", type=Path, help="collector TOML config (docs/operator-guide.md)")
    p.add_argument("--db", help="SQLite file, or a postgresql:// URL (overrides the config's db / db_url)")


def detect_config_from_table(table: dict[str, Any]) -> DetectConfig:
    """DetectConfig from the config file's ``[detect]`` table (``[detect.opacity]`` and
    ``[detect.end_use]`` nested), through the one config coercer (core.config)."""
    from collector.detect.config import DetectConfig
    from core.config import from_table

    return from_table(DetectConfig, table, "detect")


def load(ns: argparse.Namespace) -> tuple[CollectorConfig, DetectConfig]:
    """The collector config and the detector's, from ``--config``, the environment and the flags."""
    from collector.config import load_collector_config

    keys = ("listen", "db", "metrics_listen", "tenants", "collector_id", "screening_list")
    overrides = {k: getattr(ns, k, None) for k in keys}
    db = overrides.get("db")
    if isinstance(db, str):  # --db takes a SQLite path or a PostgreSQL URL
        if db.startswith(("postgresql://", "postgres://")):
            overrides["db"], overrides["db_url"] = None, db
        else:
            overrides["db"] = Path(db)
    if getattr(ns, "insecure", False):
        overrides["insecure"] = True
    cfg, detect_table = load_collector_config(getattr(ns, "config", None), os.environ, overrides)
    if isinstance(overrides.get("db"), Path):  # the flag's SQLite path beats a configured db_url
        cfg = dataclasses.replace(cfg, db_url=None)
    return cfg, detect_config_from_table(detect_table)


def check_out(path: Path, flag: str = "--out") -> None:
    """Before a command reads or writes anything: the file ``path`` can be written."""
    folder = path.parent
    if path.is_dir():
        raise usage(f"{flag} {path} is a folder: give a file name in it")
    if not folder.is_dir():
        raise unavailable(f"{flag} {path}: the folder {folder} does not exist; create it first (mkdir -p {folder})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise unavailable(f"{flag} {path}: cannot write in {folder} (permission denied)")


def rfc3339_ms(text: str) -> int:
    """Milliseconds since the epoch of an RFC 3339 time with an offset (argparse type)."""
    from datetime import datetime

    try:
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time (e.g. 2025-01-31T00:00:00Z)") from exc
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset; add Z or +HH:MM")
    return int(t.timestamp() * 1000)
