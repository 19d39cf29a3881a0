"""``python -m demo``: the demo site; ``gpuaudit-collector demo`` runs this with its arguments."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from attestation import exitcodes


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="gpuaudit-collector demo",
        description="the demo site: opaque 2,400-GPU training run among ordinary tenants",
    )
    ap.add_argument("--hours", type=float, default=2.0, help="hours of event time to replay (default 2)")
    ap.add_argument(
        "--workdir",
        type=Path,
        help="keep the demo's store and files here (default: $XDG_CACHE_HOME/gpuaudit/demo, i.e. "
        "~/.cache/gpuaudit/demo); they stay after the demo, and the next run in the same folder replaces them",
    )
    ap.add_argument("--keep", action="store_true", help="leave the collector running at the end (Ctrl-C stops)")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging; the traceback of an unexpected error")
    return ap


def main(argv: list[str] | None = None) -> int:
    from collector.cli import classify_error
    from demo.site import run_demo

    ns = build_parser().parse_args(argv)
    # The demo prints its own story; library INFO lines would only clutter it.
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return exitcodes.run_command(
        lambda: run_demo(hours=ns.hours, workdir=ns.workdir, keep=ns.keep),
        verbose=ns.verbose,
        classify=classify_error,
    )


if __name__ == "__main__":
    sys.exit(main())
