"""Looking after the store: ``retention`` (age old statements into aggregates), ``backup`` and
``restore`` (the store and its keys, checked against a manifest)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attestation.exitcodes import unavailable, usage
from collector.cli.settings import add_store_flags, load
from collector.cli.store_factory import open_store


def add_retention_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rt = sub.add_parser(
        "retention",
        help="age old statements into hourly per-GPU, per-tenant aggregates (log and proofs stay valid)",
        description="Drop the payloads and signatures of statements whose window ended more than DAYS ago, "
        "keeping per-tenant, per-GPU hourly aggregates, each statement's digest and its log leaf, so the "
        "Merkle root, signed checkpoints and proofs of the remaining statements stay valid. Export what a "
        "vendor may need first: aged statements can no longer be exported.",
    )
    add_store_flags(rt)
    rt.add_argument("--older-than", type=float, required=True, metavar="DAYS", help="age in days (may be fractional)")
    rt.set_defaults(func=_cmd_retention)


def add_backup_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``backup`` and ``restore``."""
    bk = sub.add_parser(
        "backup",
        help="copy the store and the log and pseudonym keys into a new folder, with a checked manifest",
        description="Back up the store (SQLite: the online backup API, safe while the collector runs; PostgreSQL: "
        "pg_dump of one snapshot) and the keys beside it (log key, pseudonym key) into a new folder, with a "
        "manifest of each file's SHA-256 and the log's size and latest checkpoint. The folder holds the log's "
        "private key. Restore with `gpuaudit-collector restore` (docs/operator-guide.md, 'Backup and restore').",
    )
    add_store_flags(bk)
    bk.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new (or empty) folder")
    bk.set_defaults(func=_cmd_backup)
    rs = sub.add_parser(
        "restore",
        help="restore a backup into a new store and key paths, then check its log",
        description="Restore a `gpuaudit-collector backup` folder into the configured store, which must not exist "
        "(SQLite) or be an empty database (PostgreSQL: pg_restore), and the configured key paths. Every file is "
        "checked against the manifest first; afterwards the log is audited from its leaves, its latest checkpoint "
        "must verify under the restored log key, and its size and checkpoint must be the backup's (exit 1 if not).",
    )
    add_store_flags(rs)
    rs.add_argument("--from", dest="src", type=Path, required=True, metavar="DIR", help="the backup folder")
    rs.set_defaults(func=_cmd_restore)


def _cmd_retention(ns: argparse.Namespace) -> int:
    import time

    from collector.retention import age_statements

    if ns.older_than < 0:
        print("error: --older-than must be 0 or more days", file=sys.stderr)
        return 2
    cfg, _ = load(ns)
    store = open_store(cfg)
    now = time.time_ns() // 1_000_000
    try:
        report = age_statements(store, now - int(ns.older_than * 86_400_000), now)
    finally:
        store.close()
    print(
        f"aged {report.statements} statement payloads into hourly per-GPU, per-tenant aggregates "
        f"({report.aggregate_rows} aggregate rows written); log leaves and checkpoints unchanged"
    )
    return 0


def _cmd_backup(ns: argparse.Namespace) -> int:
    from collector.backup import backup

    cfg, _ = load(ns)
    if cfg.db_url is None and not Path(cfg.db).exists():
        raise unavailable(f"no store at {cfg.db}: give the collector's --db (or --config)")
    if ns.out.exists() and (not ns.out.is_dir() or any(ns.out.iterdir())):
        raise usage(f"--out {ns.out} exists and is not an empty folder: give a new folder for each backup")
    manifest = backup(cfg, ns.out)
    log = manifest["log"]
    print(
        f"backed up the {manifest['backend']} store ({log['statements']} statements, log size {log['log_size']}, "
        f"latest checkpoint at size {log['checkpoint_size']}) and {len(manifest['files']) - 1} key file(s) to "
        f"{ns.out}; it holds the log's private key: keep it as safe as the collector's state"
    )
    return 0


def _cmd_restore(ns: argparse.Namespace) -> int:
    from collector.backup import restore

    cfg, _ = load(ns)
    if not ns.src.is_dir():
        raise unavailable(f"--from {ns.src}: no such folder")
    if cfg.db_url is None and Path(cfg.db).exists():
        raise usage(f"a store exists at {cfg.db}: restore into a new path (or move that store away first)")
    report = restore(cfg, ns.src)
    print(
        f"restored {', '.join(report.files)}: {report.state.statements} statements, log size "
        f"{report.state.log_size}; {report.leaves_audited} leaves audited against the stored tile roots and the "
        f"latest checkpoint (size {report.state.checkpoint_size}), which the log key verifies"
    )
    return 0
