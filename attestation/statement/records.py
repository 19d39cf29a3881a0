"""The statement's schema as types: its constants and its records (``UsageWindow`` and the
records inside it), immutable values that agent, collector and verifier share.

Integer bounds travel in the types (``Count``, ``Positive``, ``Permille``): the fast path
(attestation.statement_fast) decodes straight into these classes and msgspec checks the
bounds; the reference parser (attestation.statement.parse) checks the same ones by hand.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://gpuaudit.dev/usage-window/v1"
UNATTRIBUTED = "unattributed"


# Integer bounds of the schema, as the types carry them (attestation.statement_fast decodes
# straight into these classes and msgspec checks the bounds; the reference parser,
# attestation.statement.parse, checks the same ones by hand).
# No integer is above 2**53 - 1 (attestation.strictjson.MAX_SAFE_INTEGER): beyond it, JSON
# readers differ on the value (RFC 7493 §2.2), and the reference refuses the payload.
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
Positive = Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]
Permille = Annotated[int, msgspec.Meta(ge=0, le=1000)]


class _Record(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """The statement's records: immutable values, equal when their fields are.

    ``msgspec`` structs rather than frozen dataclasses: ingest parses one statement per
    node per window, and on the fast path (attestation.statement_fast) the decoder builds
    these records itself, in C; a GpuWindow built from keywords takes about 1 us against 5
    for a frozen dataclass, and the whole parse of an 8-GPU statement went from about 70 to
    about 35 us. They hold no reference cycles, so the cyclic garbage collector does not
    track them (``gc=False``). Copy with changes: ``msgspec.structs.replace(record, ...)``;
    field names: ``msgspec.structs.fields(cls)``. Only the fast path decodes into them, and
    it leaves a statement with a field it does not know to the reference parser
    (``forbid_unknown_fields``; attestation.statement_fast)."""


# Kinds of workload a GPU process can belong to.
WORKLOAD_KINDS = ("k8s_pod", "container", "slurm_job", "user", "lease", "process")
# How a GPU's use is split between the workloads on it. ``mig_slices`` (additive within v1):
# each workload's share is the slices of the MIG GPU instances it ran in over the GPU's
# slices, so the shares of a MIG GPU add up to the part of it in use (at most 1000).
SPLIT_METHODS = ("exclusive", "process_sm", "memory", "equal", "mig_slices")
# How the GPU was shared (optional ``sharing``, additive within v1): one workload, or several
# by time-slicing, through MPS, or in MIG instances.
SHARING_MODES = ("exclusive", "time_slice", "mps", "mig")


class Workload(_Record, frozen=True):
    tenant: str
    kind: str
    workload: str
    processes: Count
    mem_max_bytes: Count | None
    share_permille: Permille
    # GPU time attributed to this workload in the window (sum over samples of the sample
    # interval times the workload's fraction of the GPU in that sample).
    gpu_ms: Count


class Series(_Record, frozen=True):
    """Per-bucket means inside the window, for synchronisation analysis. None: no sample."""

    bucket_ms: Positive
    util_permille: tuple[Permille | None, ...]
    power_mw: tuple[Count | None, ...]


class Event(_Record, frozen=True):
    kind: str
    detail: str


class MigInstance(_Record, frozen=True):
    """One MIG device (compute instance ``compute_instance_id`` of GPU instance
    ``gpu_instance_id``) over the window. ``slices`` is its GPU instance's slice count;
    ``sm_active_mean_permille`` and ``tensor_active_mean_permille`` are the GPU instance's
    GPM activity (NVML has no utilisation rate for MIG devices). A null field has its
    reason in ``unavailable``."""

    gpu_instance_id: Count
    compute_instance_id: Count | None
    uuid: str | None
    slices: Positive | None  # at most the GPU's slices_total
    samples: Count  # samples in which the instance was seen
    mem_total_bytes: Count | None
    mem_used_max_bytes: Count | None
    sm_active_mean_permille: Permille | None
    tensor_active_mean_permille: Permille | None
    processes: Count  # distinct PIDs seen in the instance
    # (tenant, kind, workload) of each workload seen in the instance, as in ``workloads``.
    workloads: tuple[tuple[str, str, str], ...] = ()
    unavailable: dict[str, str] = msgspec.field(default_factory=dict)


class Mig(_Record, frozen=True):
    """A MIG-enabled GPU's instances over the window. ``slices_total`` is the GPU's slice
    count (null with ``unavailable["slices_total"]``)."""

    slices_total: Positive | None
    instances: tuple[MigInstance, ...] = ()
    unavailable: dict[str, str] = msgspec.field(default_factory=dict)


class GpuWindow(_Record, frozen=True, kw_only=True):
    index: Count
    uuid: str
    serial: str | None
    model: str
    mem_total_bytes: Count | None
    power_limit_mw: Count | None
    samples: Count
    energy_start_mj: Count | None
    energy_end_mj: Count | None
    power_mean_mw: Count | None
    power_max_mw: Count | None
    util_mean_permille: Permille | None
    mem_used_max_bytes: Count | None
    sm_active_mean_permille: Permille | None = None
    tensor_active_mean_permille: Permille | None = None
    nvlink_tx_bytes: Count | None = None
    nvlink_rx_bytes: Count | None = None
    pcie_tx_bytes: Count | None = None
    pcie_rx_bytes: Count | None = None
    series: Series | None = None
    split_method: str = "exclusive"
    workloads: tuple[Workload, ...]  # required, even when empty
    unavailable: dict[str, str] = msgspec.field(default_factory=dict)
    events: tuple[Event, ...] = ()
    # Optional, additive within v1 (omitted from the JSON when empty; docs/formats.md):
    # identity text by key (pci_bus_id, vbios_version, driver_version, ...), health integers
    # by key (maximum over the window's samples; bitwise OR for *_mask), reserved memory.
    identity: dict[str, str] = msgspec.field(default_factory=dict)
    health: dict[str, Count] = msgspec.field(default_factory=dict)
    mem_reserved_bytes: Count | None = None
    # Optional, additive within v1 (omitted when None): how the GPU was shared
    # (SHARING_MODES), and its MIG instances when MIG mode is on.
    sharing: str | None = None
    mig: Mig | None = None


class NodeIo(_Record, frozen=True):
    """Bytes moved during the window (totals, not rates). None: not measured."""

    ib_tx_bytes: Count | None = None
    ib_rx_bytes: Count | None = None
    net_tx_bytes: Count | None = None
    net_rx_bytes: Count | None = None
    disk_read_bytes: Count | None = None
    disk_write_bytes: Count | None = None


class Chain(_Record, frozen=True):
    key_id: str
    seq: int
    prev: str | None
    # Key epochs (optional, additive): a chain started by rotation names the key it
    # replaces and the digest of that key's last statement (the one carrying ``rotation``).
    epoch: int = 0
    prev_key_id: str | None = None
    prev_key_digest: str | None = None


class Rotation(_Record, frozen=True):
    """In a chain's last statement: the key that continues the node's record, signed by the old key."""

    new_key_id: str
    new_key_spki: bytes
    new_key_assurance: str = "software"


class Dropped(_Record, frozen=True):
    """Statements of this chain the agent had to drop before they were delivered.

    The agent's spool is bounded (agent/spool.py); when it must drop, the next statement it
    signs says which seqs (``from_seq``..``to_seq``, always ending right before the
    statement that carries this record), how many, why (``reason``: ``spool_size``,
    ``spool_age``) and the digest of the last one dropped, which is also the carrier's
    ``chain.prev``: the hash chain runs through the dropped statements, so a collector or
    verifier missing them sees a signed, explained gap instead of a silent hole.
    """

    from_seq: int
    to_seq: int
    count: int
    reason: str
    last_digest: str


class LogCheckpointRef(_Record, frozen=True):
    """The latest collector log checkpoint the node had received when it signed (origin,
    tree size, hex root hash): a rewritten log contradicts the nodes' own records."""

    origin: str
    size: Count
    root_sha256: str


class UsageWindow(_Record, frozen=True):
    """The predicate, as agent, collector and verifier see it."""

    node_id: str
    boot_id: str
    agent_version: str
    start_ms: Count
    end_ms: Count  # after start_ms
    sample_interval_ms: Count
    chain: Chain
    gpus: tuple[GpuWindow, ...]
    node_io: NodeIo | None = None
    unavailable: dict[str, str] = msgspec.field(default_factory=dict)
    events: tuple[Event, ...] = ()
    # Optional, additive within v1 (omitted from the JSON when None):
    log_checkpoint: LogCheckpointRef | None = None
    # Where the signing key lives: "software", "tpm" or "hsm" (attestation.keys.Signer.assurance).
    key_assurance: str | None = None
    # Optional, additive within v1 (omitted when None): statements the agent dropped unsent.
    dropped: Dropped | None = None
    # Optional, additive within v1 (omitted when None): this is the key's last statement;
    # the node's record continues under the new key (docs/formats.md, "Key rotation").
    rotation: Rotation | None = None
