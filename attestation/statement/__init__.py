"""The usage-window statement: an in-toto Statement v1 with gpuaudit's predicate.

One statement per node per window says which tenant used which GPU how much. Everything
signed is an integer with its unit in its name, a string, a list or an object: there are
no floats. A reading the node could not take is ``null`` and its reason is recorded in the
``unavailable`` map beside it, so that "0" and "not measured" are never confused.

Schema (predicate type ``https://gpuaudit.dev/usage-window/v1``; docs/formats.md)::

    {"node": {"id", "boot_id", "agent_version"},
     "window": {"start_ms", "end_ms", "sample_interval_ms"},
     "chain": {"key_id", "seq", "prev"},          # prev: hex SHA-256 of the previous PAE, null at seq 0
     "gpus": [GpuWindow...],
     "node_io": NodeIo | null,
     "unavailable": {field: reason},             # node-level blind spots
     "events": [{"kind", "detail"}],
     "log_checkpoint": {"origin", "size", "root_sha256"},  # optional: latest log checkpoint seen
     "key_assurance": "software" | "tpm" | "hsm"}          # optional: where the signing key lives

A GPU may carry ``sharing`` (``exclusive``, ``time_slice``, ``mps``, ``mig``) and, with MIG
mode on, ``mig``: ``{"slices_total", "instances": [...], "unavailable"}``; its
``split_method`` is then ``mig_slices`` when every process could be placed in an instance
of known size (docs/formats.md).

Readers MUST ignore unknown fields (additions within v1 are additive) and MUST reject a
known field of the wrong type.

The package, by concern:

- ``records``: the schema's constants and its records (``UsageWindow``, ``GpuWindow``, ...);
- ``encode``: a record as the Statement bytes that get signed (``statement_bytes``);
- ``parse``: the reference parser (``parse_statement``), behind the fast path
  (attestation.statement_fast);
- ``gpu``: the reference parser's checks of a GPU and its workloads, series and MIG
  instances;
- ``fields``: typed, path-naming accessors over decoded JSON and the integer field tables.
"""

from __future__ import annotations

from attestation.statement.encode import predicate_json, statement_bytes, subject_for
from attestation.statement.parse import parse_statement
from attestation.statement.records import (
    PREDICATE_TYPE,
    SHARING_MODES,
    SPLIT_METHODS,
    STATEMENT_TYPE,
    UNATTRIBUTED,
    WORKLOAD_KINDS,
    Chain,
    Count,
    Dropped,
    Event,
    GpuWindow,
    LogCheckpointRef,
    Mig,
    MigInstance,
    NodeIo,
    Permille,
    Positive,
    Rotation,
    Series,
    UsageWindow,
    Workload,
)

__all__ = [
    "PREDICATE_TYPE",
    "SHARING_MODES",
    "SPLIT_METHODS",
    "STATEMENT_TYPE",
    "UNATTRIBUTED",
    "WORKLOAD_KINDS",
    "Chain",
    "Count",
    "Dropped",
    "Event",
    "GpuWindow",
    "LogCheckpointRef",
    "Mig",
    "MigInstance",
    "NodeIo",
    "Permille",
    "Positive",
    "Rotation",
    "Series",
    "UsageWindow",
    "Workload",
    "parse_statement",
    "predicate_json",
    "statement_bytes",
    "subject_for",
]
