"""gpuaudit-agent: the node agent's command line.

Exit codes: 0 ok, 1 a run or replay failed (e.g. a statement refused), 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from agent import __version__
from agent.configfile import ConfigError

_logger = logging.getLogger(__name__)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _cmd_run(ns: argparse.Namespace) -> int:
    from agent.config import load_agent_config
    from agent.node import run_agent
    from agent.sources.base import SourceError
    from attestation.errors import Error

    cfg = load_agent_config(ns.config, os.environ, {"insecure": True if ns.insecure else None})
    if cfg.tls_cert is None and not cfg.insecure:
        print(
            "error: no TLS settings: give tls_ca, tls_cert and tls_key (from `gpuaudit-collector ca issue "
            "--client`), or --insecure for development on loopback",
            file=sys.stderr,
        )
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_agent(cfg, stop=stop)

    try:
        asyncio.run(main())
    except (SourceError, Error) as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 1
    return 0


def _cmd_replay(ns: argparse.Namespace) -> int:
    from agent.replay import ReplayStats, replay_trace
    from agent.trace import TraceError

    tokens = list(ns.join_token or [])
    if ns.join_token_file:
        tokens += [t.strip() for t in Path(ns.join_token_file).read_text().splitlines() if t.strip()]
    if not tokens:
        print("error: give --join-token T (one per node) or --join-token-file FILE", file=sys.stderr)
        return 2

    def progress(s: ReplayStats) -> None:
        span_h = ((s.event_end_ms or 0) - (s.event_start_ms or 0)) / 3_600_000
        print(
            f"  replay: {s.nodes} nodes, {s.signed} statements signed, {s.acked} acknowledged, "
            f"{span_h:.1f} h of event time, {s.seconds:.0f} s",
            flush=True,
        )

    try:
        stats = asyncio.run(
            replay_trace(ns.trace, ns.collector, tokens, window_s=ns.window_s, progress=None if ns.quiet else progress)
        )
    except TraceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if stats.rejected:
        for r in stats.rejected:
            print(f"error: {r}", file=sys.stderr)
        return 1
    return 0


def _cmd_keygen(ns: argparse.Namespace) -> int:
    from attestation.errors import Error
    from attestation.keys import open_signer

    try:
        signer = open_signer(ns.key, create=True)
    except Error as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 2
    print(signer.key_id)
    return 0


def _cmd_rotate_key(ns: argparse.Namespace) -> int:
    from agent.rotation import request_rotation
    from attestation.errors import Error

    try:
        new = request_rotation(ns.key)
    except (Error, ValueError) as exc:
        diag = getattr(exc, "diagnostics", None)
        print(f"error: {diag() if callable(diag) else exc}", file=sys.stderr)
        return 2
    print(
        f"{new.key_id}\nThe running agent hands over to this key at its next window: the current key signs "
        "that statement as its last, and the collector enrolls the new key from it (no join token)."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpuaudit-agent", description="gpuaudit node agent")
    ap.add_argument("--version", action="version", version=f"gpuaudit-agent {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="sample the node's GPUs and stream signed statements")
    run.add_argument("--config", type=Path, required=True, help="agent TOML config (docs/operator-guide.md)")
    run.add_argument("--insecure", action="store_true", help="plaintext gRPC (development only)")
    run.set_defaults(func=_cmd_run)

    rp = sub.add_parser("replay", help="stream a trace v1 file through real agent code to a collector")
    rp.add_argument("trace", type=Path, help="trace v1 (.jsonl or .jsonl.gz)")
    rp.add_argument("--collector", required=True, help="collector address HOST:PORT")
    rp.add_argument("--join-token", action="append", help="one-time join token (repeat: one per node)")
    rp.add_argument("--join-token-file", help="file with one join token per line")
    rp.add_argument("--window-s", type=int, default=60, help="statement window in seconds (default 60)")
    rp.add_argument("--quiet", action="store_true", help="no progress lines")
    rp.set_defaults(func=_cmd_replay)

    kg = sub.add_parser("keygen", help="create the node's signing key (0600) and print its key id")
    kg.add_argument("--key", required=True, help="key URI, e.g. file:/var/lib/gpuaudit/agent.key")
    kg.set_defaults(func=_cmd_keygen)
    rk = sub.add_parser(
        "rotate-key",
        help="create the next signing key (<key>.next, 0600); the running agent rotates to it",
    )
    rk.add_argument("--key", required=True, help="the agent's key URI, e.g. file:/var/lib/gpuaudit/agent.key")
    rk.set_defaults(func=_cmd_rotate_key)
    return ap


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    _setup_logging(ns.verbose)
    try:
        return int(ns.func(ns))
    except ConfigError as exc:
        print(f"error: configuration: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
