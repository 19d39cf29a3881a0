"""What a node's GPUs read: frozen dataclasses that every stage after the source shares.

The agent's sources (``agent/sources/``) produce them, attribution fills in who ran what,
windowing (``core.window``) aggregates them and the trace format (``core.trace``) writes and
reads them, so the NVML source, the simulated source and the test fakes are interchangeable.

Units are in the field names. A reading that could not be taken is ``None``, and the reason
is in the sample's ``unavailable`` map under the field's name: "0" and "not measured" are
never the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeviceInfo:
    """What does not change while the agent runs (re-read after a driver reload)."""

    index: int
    uuid: str
    serial: str | None
    model: str
    mem_total_bytes: int | None
    power_limit_mw: int | None
    unavailable: dict[str, str] = field(default_factory=dict)
    # Further identity, as text, by key: pci_bus_id, board_part_number, vbios_version,
    # driver_version, cuda_driver_version, architecture, mig_mode, cc_mode. A key that could
    # not be read is absent here and named in ``unavailable`` (``identity.<key>``).
    identity: dict[str, str] = field(default_factory=dict)
    mem_reserved_bytes: int | None = None


@dataclass(frozen=True)
class Attribution:
    """Who a process belongs to. ``tenant`` is "unattributed" when no rule matched."""

    tenant: str
    kind: str  # one of attestation.statement.WORKLOAD_KINDS
    workload: str


@dataclass(frozen=True)
class ProcessSample:
    """One process seen on one GPU. ``pid`` is the host PID; (pid, start_time) identifies it.

    ``attribution`` is set by sources that already know the tenant (the simulated source);
    for the NVML source it is None and ``agent.attribution`` resolves it from /proc.
    """

    pid: int
    mem_bytes: int | None
    sm_pct: float | None = None
    start_time_ticks: int | None = None
    attribution: Attribution | None = None
    # How NVML saw the process: "compute" (the process list), "mps" (an MPS client) or
    # "accounting" (accounting-mode stats only: it lived between two samples).
    via: str = "compute"
    # MIG: the GPU instance the process runs in (None: not a MIG GPU, or not reported).
    gpu_instance_id: int | None = None
    # Why this process cannot be trusted to be who /proc says (e.g. "pid_not_in_host_proc",
    # the HAMi-core #112 host/container PID mix-up, or "kernel_thread": the PID is a kernel
    # thread on the host); such a process is never attributed.
    suspect: str | None = None
    # MIG: the compute instance inside ``gpu_instance_id`` (None: not a MIG GPU, or not reported).
    compute_instance_id: int | None = None


@dataclass(frozen=True)
class MigInstanceSample:
    """One MIG device (a compute instance inside a GPU instance) of a MIG-enabled GPU.

    ``slices`` is the GPU instance's slice count (``gpuInstanceSliceCount``); compute
    instances of one GPU instance share it. ``sm_active_pct`` and ``tensor_active_pct`` are
    the GPU instance's GPM readings (Hopper and newer); NVML's utilisation rates are not
    supported on MIG devices, so there is no ``util_pct``. ``pids`` are the host PIDs NVML
    lists on this MIG device. A reading that could not be taken is None and named in
    ``unavailable``.
    """

    gpu_instance_id: int
    compute_instance_id: int | None
    uuid: str | None
    slices: int | None
    mem_total_bytes: int | None
    mem_used_bytes: int | None
    sm_active_pct: float | None = None
    tensor_active_pct: float | None = None
    pids: tuple[int, ...] = ()
    unavailable: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MigSample:
    """The MIG layout and per-instance readings of a MIG-enabled GPU at one instant.

    ``slices_total`` is the GPU's slice count (that of its largest GPU instance profile: 7 on
    A100 and H100, 4 on A30), the denominator of each instance's share of the GPU. A GPU with
    MIG on and no instance created has ``instances == ()``. Why the layout or
    ``slices_total`` could not be read is in ``unavailable`` (``slices_total``,
    ``instances``, ``instance[<k>]``).
    """

    slices_total: int | None
    instances: tuple[MigInstanceSample, ...] = ()
    unavailable: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GpuSample:
    index: int
    util_pct: float | None
    mem_used_bytes: int | None
    power_mw: int | None
    energy_mj: int | None
    procs: tuple[ProcessSample, ...] = ()
    sm_active_pct: float | None = None
    tensor_active_pct: float | None = None
    nvlink_tx_bytes_per_s: float | None = None
    nvlink_rx_bytes_per_s: float | None = None
    pcie_tx_bytes_per_s: float | None = None
    pcie_rx_bytes_per_s: float | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    # Health and clocks at this instant, integers by key with the unit in the name
    # (temp_gpu_c, sm_clock_mhz, throttle_reasons_mask, ecc_volatile_uncorrected, ...);
    # counters that could not be read are absent and named in ``unavailable``.
    health: dict[str, int] = field(default_factory=dict)
    # Things that happened on this GPU, as (kind, detail): Xid errors, allocation mismatches.
    # ``detail`` must not change from sample to sample for the same cause (windows dedupe).
    events: tuple[tuple[str, str], ...] = ()
    # MIG mode on: the instances and their readings (None: MIG off, or not a MIG-capable GPU).
    mig: MigSample | None = None


@dataclass(frozen=True)
class NodeIoSample:
    """Node I/O rates beside the GPUs (bytes per second). None: not measured."""

    ib_tx_bytes_per_s: float | None = None
    ib_rx_bytes_per_s: float | None = None
    net_tx_bytes_per_s: float | None = None
    net_rx_bytes_per_s: float | None = None
    disk_read_bytes_per_s: float | None = None
    disk_write_bytes_per_s: float | None = None


@dataclass(frozen=True)
class NodeSample:
    """Everything read from one node at one instant ``t`` (Unix seconds).

    A GPU missing from ``gpus`` was not read at that instant (lost, or the read failed);
    its reason is in ``unavailable`` under ``gpu[<index>]``.
    """

    t: float
    gpus: tuple[GpuSample, ...]
    node_io: NodeIoSample | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
