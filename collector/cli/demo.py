"""``demo``: the demo site, which is not the collector's code (demo/): this process becomes
``python -m demo``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "the demo site: opaque 2,400-GPU training run among ordinary tenants"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The demo's options, here and in ``python -m demo`` (demo/__main__.py)."""
    ap.add_argument("--hours", type=float, default=2.0, help="hours of event time to replay (default 2)")
    ap.add_argument(
        "--workdir",
        type=Path,
        help="keep the demo's store and files here (default: $XDG_CACHE_HOME/gpuaudit/demo, i.e. "
        "~/.cache/gpuaudit/demo); they stay after the demo, and the next run in the same folder replaces them",
    )
    ap.add_argument("--keep", action="store_true", help="leave the collector running at the end (Ctrl-C stops)")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dm = sub.add_parser("demo", help=HELP)
    add_arguments(dm)
    dm.set_defaults(func=_cmd_demo)


def _cmd_demo(ns: argparse.Namespace) -> int:
    """The demo composes agents and a collector, so it is not the collector's code: this process
    becomes ``python -m demo`` (demo/__main__.py) with the same arguments."""
    # -P: a folder named demo in the current directory must not stand in for this one.
    argv = [sys.executable, "-P", "-m", "demo", "--hours", repr(ns.hours)]
    if ns.workdir is not None:
        argv += ["--workdir", str(ns.workdir)]
    argv += ["--keep"] * ns.keep + ["--verbose"] * ns.verbose
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
