"""The parser of every command, and ``main``: run the command given, turning whatever error
escapes it into one ``error:`` line and an exit code (attestation/exitcodes.py)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from attestation import exitcodes
from attestation.exitcodes import CliError, unavailable, usage
from collector.cli import demo, detect, enroll, export, findings, log, maintenance, report, serve, tenant
from core import __version__
from core.errors import ConfigError


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpuaudit-collector", description="gpuaudit collector")
    ap.add_argument("--version", action="version", version=f"gpuaudit-collector {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging; the traceback of an unexpected error")
    ap.add_argument("-q", "--quiet", action="store_true", help="errors only")
    sub = ap.add_subparsers(dest="cmd", required=True)
    # In the order `gpuaudit-collector --help` lists them.
    serve.add_parser(sub)
    enroll.add_token_parser(sub)
    findings.add_parser(sub)
    detect.add_parser(sub)
    export.add_parser(sub)
    log.add_parser(sub)
    tenant.add_parser(sub)
    enroll.add_key_parser(sub)
    enroll.add_ca_parser(sub)
    report.add_parser(sub)
    maintenance.add_retention_parser(sub)
    maintenance.add_backup_parsers(sub)
    demo.add_parser(sub)
    exitcodes.add_epilogs(ap, exitcodes.epilog())
    return ap


def classify_error(exc: BaseException) -> CliError | None:
    """The exit code and line of an error a command let through (attestation/exitcodes.py)."""
    from collector.ca import CaError
    from collector.errors import StoreError
    from collector.log import LogIdentityError
    from collector.prometheus.client import PrometheusError
    from collector.pseudonyms import PseudonymKeyError
    from collector.screening import ScreeningError
    from collector.server import InsecureRefusedError
    from collector.tenants import TenantsError

    missing = isinstance(exc.__cause__, OSError)
    if isinstance(exc, ConfigError):  # a config file that is not there is missing, not wrong
        return CliError(exitcodes.UNAVAILABLE if missing else exitcodes.USAGE, f"configuration: {exc}")
    if isinstance(exc, TenantsError):
        # Offline commands read the file once: nothing to restart, only to fix and run again.
        return CliError(
            exitcodes.UNAVAILABLE if missing else exitcodes.USAGE,
            f"tenants file: {exc}" + ("" if missing else "; fix the file (format: Tenants v1.1, docs/formats.md)"),
        )
    if isinstance(exc, ScreeningError):
        return CliError(exitcodes.UNAVAILABLE if missing else exitcodes.USAGE, exc.diagnostics())
    if isinstance(exc, (InsecureRefusedError, LogIdentityError, PseudonymKeyError, CaError)):
        return usage(exc.diagnostics())
    if isinstance(exc, (StoreError, PrometheusError)):
        return unavailable(exc.diagnostics())
    if isinstance(exc, RuntimeError) and "Failed to bind to address" in str(exc):  # gRPC's port in use
        return unavailable(f"{str(exc).split(';')[0]}: the port is in use by another process; choose another")
    diag = getattr(exc, "diagnostics", None)
    if callable(diag):  # the collector's own errors: a command that failed on its merits
        return CliError(exitcodes.UNAVAILABLE if missing else exitcodes.FAILED, str(diag()))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    # The demo prints its own story; library INFO lines would only clutter it.
    _setup_logging(ns.verbose, ns.quiet or (ns.cmd == "demo" and not ns.verbose))
    return exitcodes.run_command(lambda: ns.func(ns), verbose=ns.verbose, classify=classify_error)
