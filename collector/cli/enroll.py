"""Enrolling nodes: ``token create`` (join tokens), ``key list|revoke`` (enrolled node keys),
``ca init|issue`` (the operator CA for mTLS between agents and the collector)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from attestation.exitcodes import usage
from collector.cli.settings import add_store_flags, check_out, load
from collector.cli.store_factory import open_store

_logger = logging.getLogger(__name__)


def add_token_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tk = sub.add_parser("token", help="join tokens for enrolling nodes")
    tksub = tk.add_subparsers(dest="token_cmd", required=True)
    tc = tksub.add_parser("create", help="create one-time join tokens (printed once; only their hash is kept)")
    add_store_flags(tc)
    tc.add_argument("--count", type=int, default=1, help="how many tokens (one per node)")
    tc.add_argument(
        "--nodes",
        type=Path,
        metavar="FILE",
        help="one token per node id listed in FILE (one a line, # comments), written to --out-dir",
    )
    tc.add_argument(
        "--out-dir", type=Path, help="with --nodes: DIR/<node>/join-token (0600), to copy to /etc/gpuaudit/join-token"
    )
    tc.add_argument("--ttl-s", type=int, help="seconds until the tokens expire (default from config: 86400)")
    tc.add_argument("--out", help="write the tokens to this file (mode 0600) instead of stdout")
    tc.set_defaults(func=_cmd_token)


def add_key_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ky = sub.add_parser("key", help="enrolled node keys: list, revoke")
    kysub = ky.add_subparsers(dest="key_cmd", required=True)
    kl = kysub.add_parser("list", help="list enrolled keys and whether they are revoked")
    add_store_flags(kl)
    kl.add_argument("--json", action="store_true", help="JSON array")
    kl.set_defaults(func=_cmd_key)
    kr = kysub.add_parser(
        "revoke",
        help="revoke a node key: the collector refuses what it signs from now on, and verifiers "
        "reject its statements signed after the revocation time",
    )
    add_store_flags(kr)
    kr.add_argument("key_id", help="the key id (sha256:...) as `key list` shows it")
    kr.add_argument("--reason", help="why (written to the log)")
    kr.set_defaults(func=_cmd_key)


def add_ca_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = sub.add_parser("ca", help="the operator CA for mTLS between agents and the collector")
    casub = ca.add_subparsers(dest="ca_cmd", required=True)
    ci = casub.add_parser("init", help="create a CA (ECDSA P-256) in DIR")
    ci.add_argument("--dir", type=Path, required=True, help="where ca.crt and ca.key (0600) go")
    ci.add_argument("--name", default="gpuaudit operator CA", help="the CA's common name")
    ci.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    ci.set_defaults(func=_cmd_ca_init)
    cs = casub.add_parser("issue", help="issue a server certificate, or a client certificate for one node")
    cs.add_argument("--dir", type=Path, required=True, help="the CA's directory")
    who = cs.add_mutually_exclusive_group(required=True)
    who.add_argument("--name", help="common name: the collector's host name, or the node id")
    who.add_argument(
        "--nodes",
        type=Path,
        metavar="FILE",
        help="client certificates for every node id in FILE (one a line): --out DIR/<node>/tls/{ca.crt,node.crt,"
        "node.key}, the paths deploy/config/agent.toml names under /etc/gpuaudit",
    )
    role = cs.add_mutually_exclusive_group(required=True)
    role.add_argument("--server", action="store_true", help="a certificate for the collector")
    role.add_argument("--client", action="store_true", help="a certificate for the agent of node NAME")
    cs.add_argument("--host", action="append", help="server: a DNS name or IP agents dial (repeat)")
    cs.add_argument("--days", type=int, default=397, help="validity in days (default 397)")
    cs.add_argument("--out", type=Path, help="where NAME.crt and NAME.key go (default: the CA's directory)")
    cs.set_defaults(func=_cmd_ca_issue)


def _cmd_token(ns: argparse.Namespace) -> int:
    import time

    nodes: list[str] = []
    if ns.nodes is not None:
        from collector.ca import read_node_list

        if ns.out:
            raise usage("--nodes writes one join-token file per node: give --out-dir DIR, not --out")
        if ns.out_dir is None:
            raise usage("--nodes needs --out-dir DIR (DIR/<node>/join-token, as /etc/gpuaudit/join-token)")
        nodes = read_node_list(ns.nodes)
        taken = [ns.out_dir / n / "join-token" for n in nodes if (ns.out_dir / n / "join-token").exists()]
        if taken:
            raise usage(f"{taken[0]} already exists ({len(taken)} node(s) have a token file): move them away first")
    elif ns.out_dir is not None:
        raise usage("--out-dir goes with --nodes FILE (one node id a line)")
    cfg, _ = load(ns)
    if ns.out:
        check_out(Path(ns.out))
    store = open_store(cfg, create=True)
    try:
        ttl = ns.ttl_s if ns.ttl_s is not None else cfg.token_ttl_s
        now = time.time_ns() // 1_000_000
        tokens = [store.create_token(ttl, now) for _ in range(len(nodes) or ns.count)]
    finally:
        store.close()
    if nodes:
        out_dir = Path(str(ns.out_dir))
        for node, token in zip(nodes, tokens, strict=True):
            (out_dir / node).mkdir(parents=True, exist_ok=True)
            fd = os.open(out_dir / node / "join-token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
        print(f"{len(nodes)} join tokens in {ns.out_dir}/<node>/join-token (mode 0600), valid {ttl} s")
        return 0
    out = "\n".join(tokens) + "\n"
    if ns.out:
        fd = os.open(ns.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(out)
    else:
        sys.stdout.write(out)
    return 0


def _cmd_key(ns: argparse.Namespace) -> int:
    """``key list`` and ``key revoke KEY_ID``."""
    import time

    cfg, _ = load(ns)
    store = open_store(cfg)
    try:
        if ns.key_cmd == "revoke":
            if store.key(ns.key_id) is None:
                print(f"error: key {ns.key_id} is not enrolled", file=sys.stderr)
                return 1
            now = time.time_ns() // 1_000_000
            if not store.revoke_key(ns.key_id, now):
                print(f"key {ns.key_id} was already revoked")
                return 0
            _logger.warning("operator revoked key %s (reason: %s)", ns.key_id, ns.reason or "none given")
            print(f"revoked key {ns.key_id} at {now} ms; statements it signs from now on are refused")
            return 0
        keys = store.keys()
    finally:
        store.close()
    if ns.json:
        print(
            json.dumps(
                [
                    {
                        "key_id": k.key_id,
                        "node_id": k.node_id,
                        "algorithm": k.algorithm,
                        "assurance": k.assurance,
                        "enrolled_ms": k.enrolled_ms,
                        "revoked_ms": k.revoked_ms,
                    }
                    for k in keys
                ],
                indent=2,
            )
        )
    else:
        for k in keys:
            state = f"revoked at {k.revoked_ms}" if k.revoked_ms is not None else "active"
            print(f"{k.key_id}  {k.node_id}  {k.algorithm}/{k.assurance}  enrolled {k.enrolled_ms}  {state}")
        if not keys:
            print("no keys enrolled")
    return 0


def _cmd_ca_init(ns: argparse.Namespace) -> int:
    from collector.ca import init_ca

    cert = init_ca(ns.dir, ns.name, ns.days)
    print(f"CA certificate {cert} (its key stays in {ns.dir}, mode 0600)")
    return 0


def _cmd_ca_issue(ns: argparse.Namespace) -> int:
    from collector.ca import issue, issue_nodes, read_node_list

    if ns.nodes is not None:
        if not ns.client or ns.out is None:
            raise usage("--nodes issues client certificates: give --client and --out DIR (DIR/<node>/tls/)")
        done = issue_nodes(ns.dir, read_node_list(ns.nodes), ns.out, days=ns.days)
        until = min(i.not_after for i in done)
        print(
            f"{len(done)} client certificates in {ns.out}/<node>/tls/ (ca.crt, node.crt, node.key 0600), "
            f"valid until {until:%Y-%m-%d}"
        )
        return 0
    issued = issue(ns.dir, ns.name, server=ns.server, hosts=tuple(ns.host or ()), days=ns.days, out=ns.out)
    kind = "server" if ns.server else "client"
    print(f"{kind} certificate {issued.cert}, key {issued.key}, valid until {issued.not_after:%Y-%m-%d}")
    return 0
