"""``report``: a finding's evidence report, one self-contained HTML file (collector/report/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from collector.cli.directory import tenants
from collector.cli.settings import add_store_flags, check_out, load
from collector.cli.store_factory import open_store
from core import __version__


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rp = sub.add_parser(
        "report",
        help="write a finding's evidence report: one self-contained HTML file to read and forward",
        description="Write one HTML file (no scripts, nothing fetched) that explains a finding in plain words, "
        "charts the tenant's GPUs, utilization and compute against the thresholds, lists the signed statements "
        "behind it and how to verify them with gpuaudit-verify. FINDING_ID is from `gpuaudit-collector findings`.",
    )
    add_store_flags(rp)
    rp.add_argument("finding_id", metavar="FINDING_ID", help="the finding's id (f-...)")
    rp.add_argument("--out", type=Path, required=True, help="HTML file to write")
    rp.add_argument("--tenants", type=Path, help="tenants v1 TOML file (adds what it records about the tenant)")
    rp.set_defaults(func=_cmd_report)


def _cmd_report(ns: argparse.Namespace) -> int:
    import time

    from collector.report import (
        build_report,
        from_detect_config,
        log_key_fingerprint,
        store_args_for,
        tenant_facts,
        write_report,
    )

    cfg, dcfg = load(ns)
    check_out(ns.out)
    store_args = store_args_for(ns.db, ns.config)
    store = open_store(cfg)
    try:
        options = from_detect_config(
            dcfg, store_args, tenant_facts(tenants(cfg.tenants)), log_key_fingerprint(cfg.log_key_path())
        )
        now_ms = time.time_ns() // 1_000_000
        text, data = build_report(store, ns.finding_id, options, generated_ms=now_ms, version=__version__)
    finally:
        store.close()
    write_report(ns.out, text)
    print(f"wrote {ns.out}: finding {ns.finding_id}, {data.statements} statements from {len(data.keys)} node keys")
    return 0
