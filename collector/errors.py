"""Errors of the collector.

Every error is an ``attestation.errors.Error``: it carries a stable ``reason`` (used in
gRPC status details, metrics and logs) and a ``diagnostics()`` text that tells a person
what to do. Refusals of statements are not errors: ``collector.ingest`` returns them as
results, because one bad statement must never stop the others.
"""

from __future__ import annotations

from typing import ClassVar

from attestation.errors import Error


class CollectorError(Error):
    """Root of the collector's errors."""

    reason = "collector"


class EnrollmentError(CollectorError):
    """A node could not be enrolled: its join token or its public key was refused."""

    reason = "bad_token"

    _REMEDIES: ClassVar[dict[str, str]] = {
        "bad_token": "The join token is unknown to this collector. Issue a new one with "
        "`gpuaudit-collector token create` on the collector the agent points at, and pass it to the agent.",
        "token_used": "Join tokens are one-time. Issue a new token with `gpuaudit-collector token create`; "
        "if you did not use this token yourself, someone else enrolled with it: check the node list.",
        "token_expired": "The join token expired before it was used. Issue a new one with "
        "`gpuaudit-collector token create` (and a longer --ttl if enrollment takes a while).",
        "key_exists": "This public key is already enrolled. An agent that already enrolled does not need "
        "to enroll again; to re-enroll a node, generate a new key with `gpuaudit-agent keygen`.",
        "bad_key": "The public key is not a DER SubjectPublicKeyInfo of an Ed25519 or ECDSA P-256 key. "
        "Regenerate the key with `gpuaudit-agent keygen`.",
        "bad_request": "The enrollment request is malformed (node id or key assurance). Check the agent's "
        "node_id setting: it must be a non-empty name of at most 253 characters.",
    }

    def diagnostics(self) -> str:
        remedy = self._REMEDIES.get(self.reason, "")
        return f"{self.reason}: {self}" + (f"\n{remedy}" if remedy else "")


class StoreError(CollectorError):
    """The store could not be opened, read or written. Nothing was acknowledged."""

    reason = "store"

    def diagnostics(self) -> str:
        return (
            f"{self.reason}: {self}\n"
            "Check that the collector's database path exists, is writable by the collector's user, "
            "and that the disk is not full. Agents keep unacknowledged statements and resend them."
        )


class SchemaVersionError(StoreError):
    """The database was written by a newer collector than this one."""

    reason = "schema_too_new"

    def diagnostics(self) -> str:
        return (
            f"{self.reason}: {self}\n"
            "This database was migrated by a newer gpuaudit-collector. Run that version (or newer), or "
            "restore the backup taken before the upgrade; an older collector never writes to a newer schema."
        )


class MigrationError(StoreError):
    """A schema migration failed; it was rolled back and the schema left at the previous version."""

    reason = "migration_failed"


class StoreConflictError(StoreError):
    """Another writer stored a statement with the same key and seq first (concurrent collectors)."""

    reason = "concurrent_write"


class FindingWorkflowError(CollectorError):
    """A finding action refused: the finding is not there, or the action does not fit its state."""

    reason = "finding_workflow"

    _REMEDIES: ClassVar[dict[str, str]] = {
        "unknown_finding": "List the recorded findings with `gpuaudit-collector findings`, naming the same "
        "--config or --db as the collector that recorded them.",
        "bad_transition": "See the finding's state and history with `gpuaudit-collector findings --json`.",
        "bad_action": "Name who acts (--by) and why (--reason); an assign names whom (--to).",
    }

    def diagnostics(self) -> str:
        remedy = self._REMEDIES.get(self.reason, "")
        return f"{self}" + (f"\n{remedy}" if remedy else "")
