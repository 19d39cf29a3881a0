"""``export``: a vendor bundle (envelopes, enrollment, signed checkpoint, proofs) for
gpuaudit-verify."""

from __future__ import annotations

import argparse
from pathlib import Path

from attestation.exitcodes import usage
from collector.cli.directory import site_tenants, tenants
from collector.cli.settings import add_store_flags, check_out, load, rfc3339_ms
from collector.cli.store_factory import open_store


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ex = sub.add_parser(
        "export",
        help="write a vendor bundle (envelopes, enrollment, signed checkpoint, proofs) for gpuaudit-verify",
        description="Export the statements naming some GPU serials or a tenant (or all) as a self-contained "
        "bundle a chip vendor verifies offline with gpuaudit-verify (docs/vendor-guide.md).",
    )
    add_store_flags(ex)
    what = ex.add_mutually_exclusive_group(required=True)
    what.add_argument("--serial", nargs="+", metavar="S", help="statements naming these GPU serials")
    what.add_argument("--tenant", metavar="T", help="statements naming this tenant")
    what.add_argument("--node", nargs="+", metavar="N", help="statements of these nodes (node ids)")
    what.add_argument("--all", action="store_true", help="every statement")
    ex.add_argument("--since", type=rfc3339_ms, help="windows ending after this RFC 3339 time")
    ex.add_argument("--until", type=rfc3339_ms, help="windows starting before this RFC 3339 time")
    ex.add_argument("--out", type=Path, required=True, help="bundle file to write")
    ex.add_argument(
        "--previous-checkpoint",
        type=Path,
        help="the vendor's earlier checkpoint (note or bundle): add a consistency proof",
    )
    ex.set_defaults(func=_cmd_export)


def _cmd_export(ns: argparse.Namespace) -> int:
    import time

    from attestation.errors import CheckpointError
    from collector.export import Selection, export_bundle, read_checkpoint_file
    from collector.log import Log

    cfg, _ = load(ns)
    # What it was given, checked before it opens the store and signs a checkpoint there.
    check_out(ns.out)
    sel = Selection(
        serials=tuple(ns.serial or ()),
        tenant=ns.tenant,
        all=ns.all,
        since_ms=ns.since,
        until_ms=ns.until,
        nodes=tuple(ns.node or ()),
    )
    previous = read_checkpoint_file(ns.previous_checkpoint) if ns.previous_checkpoint else None
    directory = tenants(cfg.tenants)
    store = open_store(cfg)
    try:
        log = Log.open(cfg, store)
        if previous is not None:
            try:
                log.verify_own(previous)
            except CheckpointError as exc:
                raise usage(
                    f"--previous-checkpoint {ns.previous_checkpoint} was not signed by this log ({log.origin}): {exc}"
                ) from exc
        # Streamed to the file (collector/export.py): memory stays bounded whatever the selection.
        summary = export_bundle(
            ns.out,
            store,
            log,
            sel,
            time.time_ns() // 1_000_000,
            previous,
            tenants=site_tenants(cfg, directory),
        )
    finally:
        store.close()
    print(
        f"wrote {summary.entries} envelopes from {summary.keys} keys to {ns.out} "
        f"(checkpoint {summary.origin}, size {summary.tree_size})"
    )
    return 0
