"""``python -m demo``: the demo site; ``gpuaudit-collector demo`` runs this with its arguments."""

from __future__ import annotations

import argparse
import logging
import sys

from attestation import exitcodes


def build_parser() -> argparse.ArgumentParser:
    from collector.cli.demo import HELP, add_arguments

    ap = argparse.ArgumentParser(prog="gpuaudit-collector demo", description=HELP)
    add_arguments(ap)
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
