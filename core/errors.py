"""Errors of gpuaudit's neutral layer (``core``): one root, :class:`Error`.

Each is also a ``ValueError``, as it was before these modules moved into ``core``: a caller
that catches ``ValueError`` around a config or a trace still catches them.
"""

from __future__ import annotations


class Error(Exception):
    """Root of the errors ``core`` raises."""

    def diagnostics(self) -> str:
        """What went wrong, for a person (the message names the key, file or line)."""
        return str(self)


class ConfigError(Error, ValueError):
    """A configuration key is unknown or its value cannot be used."""


class TraceError(Error, ValueError):
    """A trace line is malformed. The message starts with ``<file>:<line>:``."""


class TraceUnreadableError(TraceError):
    """The trace file cannot be read at all (missing, a folder, no permission)."""
