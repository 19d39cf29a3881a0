"""Errors of the agent: one root, :class:`AgentError`.

Every error class the agent defines derives from it (some also from the built-in class
callers caught before there was a root, such as ``RuntimeError``). The command line maps
the ones a person can act on to an exit code and one line (agent/cli.py).
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of the agent's errors."""

    def diagnostics(self) -> str:
        """What went wrong, for a person."""
        return str(self)
