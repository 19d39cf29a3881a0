"""``python -m collector.evaluate`` (see ``collector.evaluate.run``)."""

from __future__ import annotations

import sys

from collector.evaluate.run import main

if __name__ == "__main__":
    sys.exit(main())
