"""``log checkpoint|inclusion|consistency|audit|public-key``: the transparency log in the
store, read directly (collector/log.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from attestation.exitcodes import unavailable, usage
from collector.cli.settings import add_store_flags, load
from collector.cli.store_factory import open_store


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lg = sub.add_parser("log", help="the transparency log: signed checkpoint, inclusion and consistency proofs")
    lgsub = lg.add_subparsers(dest="log_cmd", required=True)
    lc = lgsub.add_parser("checkpoint", help="print the latest signed checkpoint (a C2SP signed note)")
    add_store_flags(lc)
    lc.add_argument("--sign", action="store_true", help="sign a checkpoint of the log as it is now first")
    lc.set_defaults(func=_cmd_log)
    li = lgsub.add_parser("inclusion", help="inclusion proof of one statement (JSON, base64 hashes)")
    add_store_flags(li)
    leaf = li.add_mutually_exclusive_group(required=True)
    leaf.add_argument("--leaf-index", type=int, help="the leaf's index in the log")
    leaf.add_argument("--key", help="the statement's signing key id (with --seq)")
    li.add_argument("--seq", type=int, help="the statement's seq in its key's chain")
    li.add_argument("--tree-size", type=int, help="tree size (default: the latest signed checkpoint's)")
    li.set_defaults(func=_cmd_log)
    lp = lgsub.add_parser(
        "public-key", help="print the log's public key (PEM) for vendors to pin with gpuaudit-verify --log-key"
    )
    add_store_flags(lp)
    lp.set_defaults(func=_cmd_log_public_key)
    lk = lgsub.add_parser("consistency", help="consistency proof between two tree sizes (JSON)")
    add_store_flags(lk)
    lk.add_argument("--from", dest="from_size", type=int, required=True, help="the earlier tree size")
    lk.add_argument("--to", dest="to_size", type=int, help="the later tree size (default: latest signed)")
    lk.set_defaults(func=_cmd_log)
    la = lgsub.add_parser(
        "audit",
        help="recompute the log from its leaves: stored tile roots and the latest checkpoint "
        "(JSON; exit 1 if either does not match)",
    )
    add_store_flags(la)
    la.set_defaults(func=_cmd_log)


def _cmd_log_public_key(ns: argparse.Namespace) -> int:
    """``log public-key``: the log's public key (PEM) for vendors to pin (``gpuaudit-verify --log-key``)."""
    from cryptography.hazmat.primitives import serialization

    from attestation.errors import KeyFileError
    from attestation.keys import load_key_file

    cfg, _ = load(ns)
    path = cfg.log_key_path()
    if not path.exists():
        raise unavailable(
            f"no log key at {path} yet: it is created when the collector first starts (or give its --config)"
        )
    try:
        public = load_key_file(path).public_key()
    except KeyFileError as exc:
        raise usage(f"the log key {path}: {exc}") from exc
    pem = serialization.load_der_public_key(public.spki_der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sys.stdout.write(pem.decode("ascii"))
    print(f"log {cfg.log_origin or '(log_origin not set)'}, key {public.key_id}", file=sys.stderr)
    return 0


def _cmd_log(ns: argparse.Namespace) -> int:
    """``log checkpoint|inclusion|consistency|audit``: read the store's log directly (JSON out)."""
    import base64
    import dataclasses
    import time

    from collector.log import Log

    def b64(h: bytes) -> str:
        return base64.b64encode(h).decode("ascii")

    cfg, _ = load(ns)
    store = open_store(cfg)
    try:
        log = Log.open(cfg, store)
        if ns.log_cmd == "audit":
            audit = log.audit()
            print(json.dumps({**dataclasses.asdict(audit), "ok": audit.ok}, indent=2))
            return 0 if audit.ok else 1
        log.sync()
        latest = store.latest_checkpoint()
        if ns.log_cmd == "checkpoint":
            if ns.sign or latest is None:
                note = log.checkpoint(time.time_ns() // 1_000_000).note
            else:
                note = latest.note
            sys.stdout.write(note)
            return 0
        signed_size = latest.tree_size if latest is not None else 0
        if ns.log_cmd == "inclusion":
            size = ns.tree_size if ns.tree_size is not None else signed_size
            if ns.leaf_index is not None:
                index = ns.leaf_index
            else:
                if ns.seq is None:
                    print("error: --key needs --seq", file=sys.stderr)
                    return 2
                found = log.leaf_index(ns.key, ns.seq)
                if found is None:
                    print(f"error: statement {ns.key}/{ns.seq} is not in the log", file=sys.stderr)
                    return 1
                index = found
            if not 0 <= index < size <= log.size:
                print(
                    f"error: leaf {index} is not in a signed tree of size {size} (log has {log.size})", file=sys.stderr
                )
                return 1
            doc: dict[str, Any] = {
                "leaf_index": index,
                "tree_size": size,
                "leaf_hash": b64(log.leaf_hash(index)),
                "proof": [b64(h) for h in log.inclusion_proof(index, size)],
            }
        else:
            to_size = ns.to_size if ns.to_size is not None else signed_size
            if not 0 <= ns.from_size <= to_size <= log.size:
                print(
                    f"error: sizes {ns.from_size}..{to_size} are not within the log (size {log.size})", file=sys.stderr
                )
                return 1
            doc = {
                "from_size": ns.from_size,
                "to_size": to_size,
                "proof": [b64(h) for h in log.consistency_proof(ns.from_size, to_size)],
            }
    finally:
        store.close()
    print(json.dumps(doc, indent=2))
    return 0
