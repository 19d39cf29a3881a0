"""``tenant pseudonym ID...`` (the pseudonyms for the agents' tenant rules) and ``tenant reveal
PSEUDONYM --reason TEXT`` (the tenant behind one, recorded in the store's reveal audit)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from collector.cli.directory import tenants
from collector.cli.settings import add_store_flags, load
from collector.cli.store_factory import open_store

if TYPE_CHECKING:
    from collector.config import CollectorConfig

_logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tn = sub.add_parser("tenant", help="tenant pseudonyms: derive them for agent configs, reveal one (audited)")
    tnsub = tn.add_subparsers(dest="tenant_cmd", required=True)
    tp = tnsub.add_parser(
        "pseudonym",
        help="print the pseudonym (tp-...) of each tenant id, for the agents' tenant rules",
    )
    add_store_flags(tp)
    tp.add_argument("tenant_id", nargs="+", help="tenant ids as in the tenants file")
    tp.set_defaults(func=_cmd_tenant)
    tr = tnsub.add_parser(
        "reveal",
        help="print the tenant id behind a pseudonym; recorded in the store's reveal audit and logged",
    )
    add_store_flags(tr)
    tr.add_argument("pseudonym", help="tp- followed by 16 hex digits")
    tr.add_argument("--reason", required=True, help="why the identity is needed (recorded)")
    tr.add_argument("--tenants", type=Path, help="tenants v1 TOML file (overrides the config)")
    tr.set_defaults(func=_cmd_tenant)


def _cmd_tenant(ns: argparse.Namespace) -> int:
    """``tenant pseudonym ID...`` and ``tenant reveal PSEUDONYM --reason TEXT``."""
    from collector.pseudonyms import key_path, load_or_create_key, pseudonym

    cfg, _ = load(ns)
    key = load_or_create_key(key_path(cfg.db))
    if ns.tenant_cmd == "pseudonym":
        for tenant_id in ns.tenant_id:
            print(f"{tenant_id}\t{pseudonym(key, tenant_id)}")
        return 0
    return _reveal(ns, cfg, key)


def _reveal(ns: argparse.Namespace, cfg: CollectorConfig, key: bytes) -> int:
    """The tenant behind ``ns.pseudonym``, looked up among the tenants file's; every attempt,
    found or not, is recorded in the store (who, when, why) and logged."""
    import getpass
    import time

    from collector.pseudonyms import is_pseudonym, reveal

    if not is_pseudonym(ns.pseudonym):
        print(f"error: {ns.pseudonym!r} is not a pseudonym (tp- and 16 hex digits)", file=sys.stderr)
        return 2
    if not ns.reason.strip():
        print("error: --reason must say why the identity is needed", file=sys.stderr)
        return 2
    candidates = [t.id for t in tenants(cfg.tenants)]
    found = reveal(key, ns.pseudonym, candidates)
    operator = os.environ.get("SUDO_USER") or getpass.getuser()
    store = open_store(cfg)
    try:
        store.record_reveal(time.time_ns() // 1_000_000, ns.pseudonym, found, operator, ns.reason)
    finally:
        store.close()
    _logger.warning(
        "operator %s revealed pseudonym %s (%s); reason: %s", operator, ns.pseudonym, found or "no match", ns.reason
    )
    if found is None:
        print(f"no tenant in the tenants file has pseudonym {ns.pseudonym} (the attempt is recorded)", file=sys.stderr)
        return 1
    print(found)
    return 0
