"""gpuaudit-agent: the node agent's command line.

Exit codes (attestation/exitcodes.py, the same for every gpuaudit command): 0 ok; 1 the
collector refused a replay's statements; 2 usage or configuration (a config key, a TLS file that is
not what it should be, a certificate for another node, a join token the collector
refuses); 3 environment (a file missing, the collector unreachable, no NVIDIA driver); 4
unexpected error; 130 interrupted (a replay says what it left unsent). Every error is one
``error:`` line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from attestation import exitcodes
from attestation.exitcodes import CliError, unavailable, usage
from core import __version__
from core.errors import ConfigError

if TYPE_CHECKING:
    import grpc

    from agent.replay import Channels, ReplayStats

_logger = logging.getLogger(__name__)

_CLIENT_CERT_HINT = "`gpuaudit-collector ca issue --client --name NODE`"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _check_certificate_names(
    names: tuple[str, ...], node_id: str, cert: Path, setting: str, remedy: str = "or correct node_id"
) -> None:
    """Under mTLS the collector takes a node only from a client certificate naming it."""
    if node_id not in names:
        raise usage(
            f"{setting} {cert} is for node {', '.join(names) or '(no common name)'}, not {node_id}: issue this "
            f"node's certificate with {_CLIENT_CERT_HINT.replace('NODE', node_id)}, {remedy}"
        )


def _cmd_run(ns: argparse.Namespace) -> int:
    from agent.node import run_agent
    from core.agentconfig import load_agent_config

    cfg = load_agent_config(ns.config, os.environ, {"insecure": True if ns.insecure else None})
    ns.collector = cfg.collector  # for the error line
    if cfg.tls_cert is None and not cfg.insecure:
        raise usage(
            f"no TLS settings: give tls_ca, tls_cert and tls_key (from {_CLIENT_CERT_HINT}), "
            "or --insecure for development on loopback"
        )
    if cfg.tls_ca is not None and cfg.tls_cert is not None and cfg.tls_key is not None:
        # Before anything is created or sent: files that cannot be read, a key that is not
        # the certificate's, a certificate for another node.
        tls = exitcodes.read_tls_files(("tls_ca", cfg.tls_ca), ("tls_cert", cfg.tls_cert), ("tls_key", cfg.tls_key))
        _check_certificate_names(tls.common_names, cfg.resolved_node_id(), cfg.tls_cert, "tls_cert")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_agent(cfg, stop=stop)

    asyncio.run(main())
    return 0


def _replay_channels(ns: argparse.Namespace, nodes_hint: str) -> Channels:
    """The replay's channels from its TLS flags (the agent's tls_* settings): plaintext
    without them; one client certificate for a one-node trace; one per node from a folder."""
    from agent.replay import Channels
    from agent.stream import insecure_channel, tls_channel

    address = ns.collector
    if ns.tls_ca is None:
        if ns.tls_cert or ns.tls_key or ns.tls_cert_dir or ns.tls_server_name:
            raise usage("--tls-cert, --tls-key, --tls-cert-dir and --tls-server-name need --tls-ca (the CA's ca.crt)")
        return Channels(address, lambda _node: insecure_channel(address), per_node=False)
    if ns.tls_cert_dir is not None:
        if ns.tls_cert or ns.tls_key:
            raise usage("give either --tls-cert-dir or --tls-cert with --tls-key, not both")
        if not ns.tls_cert_dir.is_dir():
            raise unavailable(f"--tls-cert-dir {ns.tls_cert_dir}: no such folder")
        folder: Path = ns.tls_cert_dir

        def per_node(node_id: str) -> grpc.aio.Channel:
            cert, key = folder / f"{node_id}.crt", folder / f"{node_id}.key"
            tls = exitcodes.read_tls_files(("--tls-ca", ns.tls_ca), ("the certificate", cert), ("the key", key))
            _check_certificate_names(tls.common_names, node_id, cert, "the certificate", f"--out {folder}")
            return tls_channel(address, tls.ca_pem, tls.cert_pem, tls.key_pem, ns.tls_server_name)

        return Channels(address, per_node, per_node=True)
    if ns.tls_cert is None or ns.tls_key is None:
        raise usage(f"--tls-ca needs --tls-cert and --tls-key (one node), or --tls-cert-dir ({nodes_hint})")
    tls = exitcodes.read_tls_files(("--tls-ca", ns.tls_ca), ("--tls-cert", ns.tls_cert), ("--tls-key", ns.tls_key))

    def shared(node_id: str) -> grpc.aio.Channel:
        return tls_channel(address, tls.ca_pem, tls.cert_pem, tls.key_pem, ns.tls_server_name)

    class OneCertificate(Channels):
        async def for_node(self, node_id: str) -> grpc.aio.Channel:
            _check_certificate_names(
                tls.common_names, node_id, ns.tls_cert, "--tls-cert", "and give --tls-cert-dir (one per node)"
            )
            return await super().for_node(node_id)

    return OneCertificate(address, shared, per_node=False)


def _time(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cmd_replay(ns: argparse.Namespace) -> int:
    from agent.replay import ReplayStats, replay_trace

    tokens = list(ns.join_token or [])
    if ns.join_token_file:
        try:
            text = Path(ns.join_token_file).read_text()
        except OSError as exc:
            raise unavailable(f"cannot read --join-token-file {ns.join_token_file}: {exc.strerror or exc}") from exc
        tokens += [t.strip() for t in text.splitlines() if t.strip()]
    if not tokens:
        raise usage("give --join-token T (one per node) or --join-token-file FILE")
    if not ns.trace.is_file():
        raise unavailable(f"cannot read the trace {ns.trace}: {'a folder' if ns.trace.is_dir() else 'no such file'}")
    channels = _replay_channels(ns, "DIR/NODE.crt and DIR/NODE.key for each node")

    def progress(s: ReplayStats) -> None:
        span_h = ((s.event_end_ms or 0) - (s.event_start_ms or 0)) / 3_600_000
        print(
            f"  replay: {s.nodes} nodes, {s.signed} statements signed, {s.acked} acknowledged, "
            f"{span_h:.1f} h of event time, {s.seconds:.0f} s",
            flush=True,
        )

    stats = ReplayStats()

    async def main() -> bool:
        """True when the replay ran to its end, False when a signal stopped it."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        run = asyncio.create_task(
            replay_trace(
                ns.trace,
                ns.collector,
                tokens,
                window_s=ns.window_s,
                progress=None if ns.quiet else progress,
                channels=channels,
                stats=stats,
            )
        )
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not run.done():
            run.cancel()
            try:
                await run
            except asyncio.CancelledError:
                pass
            return False
        run.result()
        return True

    try:
        finished = asyncio.run(main())
    except Exception as exc:
        if not stats.signed:
            raise
        known = exc if isinstance(exc, CliError) else _known_agent_error(exc, ns.collector)
        if known is None:
            raise
        # The replay failed part-way: the line also says what never reached the collector.
        raise CliError(known.code, f"{known}; {_unsent(stats)}") from exc
    if not finished:
        raise CliError(exitcodes.INTERRUPTED, f"replay interrupted: {_unsent(stats)}")
    if stats.rejected:
        raise CliError(
            exitcodes.FAILED,
            f"the collector refused statements of {len(stats.rejected)} node(s): {'; '.join(stats.rejected[:3])}"
            + (f" and {len(stats.rejected) - 3} more" if len(stats.rejected) > 3 else "")
            + f"; {_unsent(stats)}",
        )
    return 0


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _unsent(stats: ReplayStats) -> str:
    left = stats.unsent_count()
    text = (
        f"{_n(stats.signed, 'statement')} of {_n(stats.nodes, 'node')} signed, {stats.signed - left} acknowledged "
        f"by the collector, {left} left unsent"
    )
    if left:
        text += f" ({stats.unsent_text()})"
    text += f"; the trace after {_time(stats.event_end_ms)} was not replayed" if stats.event_end_ms else ""
    if left:
        text += (
            "; the replay's keys lived in memory, so what is unsent cannot be resent: replay the whole trace into "
            "a fresh store to have all of it"
        )
    return text


def _cmd_keygen(ns: argparse.Namespace) -> int:
    from attestation.errors import Error
    from attestation.keys import open_signer

    try:
        signer = open_signer(ns.key, create=True)
    except Error as exc:
        raise usage(exc.diagnostics()) from exc
    print(signer.key_id)
    return 0


def _cmd_rotate_key(ns: argparse.Namespace) -> int:
    from agent.rotation import request_rotation
    from attestation.errors import Error

    try:
        new = request_rotation(ns.key)
    except Error as exc:
        raise usage(exc.diagnostics()) from exc
    except ValueError as exc:
        raise usage(str(exc)) from exc
    print(
        f"{new.key_id}\nThe running agent hands over to this key at its next window: the current key signs "
        "that statement as its last, and the collector enrolls the new key from it (no join token)."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpuaudit-agent", description="gpuaudit node agent")
    ap.add_argument("--version", action="version", version=f"gpuaudit-agent {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging; the traceback of an unexpected error")
    sub = ap.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="sample the node's GPUs and stream signed statements")
    run.add_argument("--config", type=Path, required=True, help="agent TOML config (docs/operator-guide.md)")
    run.add_argument("--insecure", action="store_true", help="plaintext gRPC (development only)")
    run.set_defaults(func=_cmd_run)

    rp = sub.add_parser(
        "replay",
        help="stream a trace v1 file through real agent code to a collector",
        description="Stream a trace v1 file through real agent code to a collector: each node of the trace gets "
        "its own key (enrolled with one join token), chain and stream. Plaintext without --tls-ca; with it, mTLS "
        "as the agent speaks it (its tls_ca, tls_cert, tls_key and tls_server_name settings). Under mTLS the "
        "collector takes a node only from a client certificate naming it: --tls-cert for a one-node trace, "
        "--tls-cert-dir for one certificate per node. Stopped (Ctrl-C, SIGTERM) or failing part-way, it says "
        "which statements it left unsent.",
    )
    rp.add_argument("trace", type=Path, help="trace v1 (.jsonl or .jsonl.gz)")
    rp.add_argument("--collector", required=True, help="collector address HOST:PORT")
    rp.add_argument("--join-token", action="append", help="one-time join token (repeat: one per node)")
    rp.add_argument("--join-token-file", help="file with one join token per line")
    rp.add_argument("--window-s", type=int, default=60, help="statement window in seconds (default 60)")
    rp.add_argument("--quiet", action="store_true", help="no progress lines")
    tls = rp.add_argument_group("mTLS (the agent's tls_* settings)")
    tls.add_argument("--tls-ca", type=Path, metavar="FILE", help="the operator CA's certificate (ca.crt)")
    tls.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="client certificate; its common name must be the trace's node"
    )
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="the client certificate's key")
    tls.add_argument(
        "--tls-cert-dir",
        type=Path,
        metavar="DIR",
        help="one client certificate per node: DIR/NODE.crt and DIR/NODE.key, as "
        "`gpuaudit-collector ca issue --client --name NODE --out DIR` writes them",
    )
    tls.add_argument(
        "--tls-server-name", metavar="NAME", help="the name in the collector's certificate, if not the host dialled"
    )
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
    exitcodes.add_epilogs(ap, exitcodes.epilog())
    return ap


def _known_agent_error(exc: BaseException, collector: str | None) -> CliError | None:
    """The exit code and line of an error the agent's commands let through (attestation/exitcodes.py)."""
    import grpc

    from agent.replay import CollectorUnreachableError, EnrollmentRefusedError, TokensExhaustedError
    from agent.sources.base import SourceError
    from agent.stream import RejectedError
    from attestation.errors import Error, KeyFileError
    from core.errors import TraceError, TraceUnreadableError

    where = collector or "the configured address"
    reach = (
        "is it running and listening there? If it speaks mTLS, give the replay --tls-ca with --tls-cert and "
        "--tls-key (or --tls-cert-dir), as the agent's tls_* settings"
    )
    if isinstance(exc, ConfigError):  # a config file that is not there is missing, not wrong
        missing = isinstance(exc.__cause__, OSError)
        return CliError(exitcodes.UNAVAILABLE if missing else exitcodes.USAGE, f"configuration: {exc}")
    if isinstance(exc, TraceUnreadableError):
        return unavailable(str(exc))
    if isinstance(exc, TraceError):
        return usage(f"{exc} (trace v1: docs/formats.md)")
    if isinstance(exc, CollectorUnreachableError):
        return unavailable(f"{exc}; {reach}")
    if isinstance(exc, EnrollmentRefusedError):
        return usage(str(exc))
    if isinstance(exc, TokensExhaustedError):
        return usage(str(exc))
    if isinstance(exc, SourceError):
        return unavailable(exc.diagnostics())
    if isinstance(exc, KeyFileError):
        return usage(exc.diagnostics())
    if isinstance(exc, RejectedError):
        return CliError(exitcodes.FAILED, str(exc))
    if isinstance(exc, grpc.aio.AioRpcError):
        code, details = exc.code(), exc.details() or exc.code().name
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return unavailable(f"cannot reach the collector at {where}: {details}; is it running and listening there?")
        if code in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.ALREADY_EXISTS,
        ):
            return usage(f"the collector at {where} refused: {details}")
        return CliError(exitcodes.FAILED, f"the collector at {where} answered {code.name}: {details}")
    if isinstance(exc, Error):
        return CliError(exitcodes.FAILED, exc.diagnostics())
    return None


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    _setup_logging(ns.verbose)
    return exitcodes.run_command(
        lambda: ns.func(ns),
        verbose=ns.verbose,
        classify=lambda exc: _known_agent_error(exc, getattr(ns, "collector", None)),
    )


if __name__ == "__main__":
    sys.exit(main())
