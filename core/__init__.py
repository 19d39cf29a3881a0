"""gpuaudit's neutral layer: what the agent and the collector both need.

The trace format, the sample dataclasses, windowing, config loading, the tenant-rules and
agent-config file formats, the simulated site and the version. It touches no hardware and
imports neither ``agent`` nor ``collector`` (tests/unit/test_layering.py holds it to that).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    # pyproject.toml holds the only literal version; an installed (or editable) gpuaudit has it.
    __version__ = version("gpuaudit")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
