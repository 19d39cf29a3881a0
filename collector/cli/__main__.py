"""``python -m collector.cli``: the same as ``gpuaudit-collector``."""

import sys

from collector.cli.app import main

sys.exit(main())
