"""Errors of the attestation protocol.

Every error carries a stable machine-readable ``reason`` (used in metrics, refusals and
verifier reports) and a ``diagnostics()`` text written for a person: what went wrong and
what to do about it.
"""

from __future__ import annotations


class Error(Exception):
    """Root of all gpuaudit protocol errors."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    def diagnostics(self) -> str:
        return f"{self.reason}: {self}"


class SchemaError(Error):
    """A payload does not match the statement schema."""

    reason = "bad_schema"


class VerificationError(Error):
    """A signature, key or chain check failed. Verification raises, never returns False."""

    reason = "bad_signature"


class ChainError(VerificationError):
    """A statement does not continue its key's chain (gap, replay, fork, overlap...)."""

    reason = "chain"


class KeyFileError(Error):
    """A key file is missing, malformed or unsafely readable."""

    reason = "bad_key"

    def diagnostics(self) -> str:
        return (
            f"{self.reason}: {self}\n"
            "Key files must be created by gpuaudit-agent keygen (mode 0600, owned by the "
            "agent's user); remove group/other permissions with chmod 600."
        )


class ProofError(VerificationError):
    """A Merkle inclusion or consistency proof does not verify (RFC 9162 §2.1.3.2, §2.1.4.2)."""

    reason = "bad_proof"


class CheckpointError(VerificationError):
    """A signed checkpoint is malformed, unsigned by the expected key, or its signature fails."""

    reason = "bad_checkpoint"
