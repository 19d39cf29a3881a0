"""The detector's thresholds: one frozen dataclass, built once and passed down.

Every threshold the detector uses lives here, with its unit and why it has its value.
Nothing in the detector keys on tenant, workload or node names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from collector.detect.opacity import OpacityConfig


@dataclass(frozen=True)
class DetectConfig:
    # --- event time -------------------------------------------------------------------
    allowed_lateness_s: int = 300
    """A window closes at the latest when the newest event time seen is this far past its end."""
    active_node_windows: int = 3
    """A window also closes once every node seen in this many preceding windows reported it."""

    # --- what makes a finding -----------------------------------------------------------
    min_gpus: int = 64
    """Concurrent training-shaped GPUs (one group of tenants) for a ``large_training`` finding."""
    min_duration_s: int = 600
    """How long the run must have held ``min_gpus`` before it is raised."""
    size_alone_gpus: int = 256
    """Only where synchrony could not be measured at all (no per-bucket series in the data, an
    unknown signal): a run of this many strong training-shaped GPUs is raised on size. Where
    synchrony was measured it must fire at every size, so a steady 300-GPU inference fleet or
    many independent one-node jobs of one tenant (measured, not in sync) raise nothing."""
    shared_workload_min_nodes: int = 2
    """Where synchrony is unknown, one workload id (an opaque identity: one Slurm job, one pod
    group) on at least this many nodes holding ``min_gpus`` training-shaped GPUs is job evidence."""
    run_floor_gpus: int = 16
    """A run starts (``started_at``) when a group first has this many training-shaped GPUs."""
    max_gap_windows: int = 2
    """Windows a run may miss (no data, or below the floor) without ending."""

    # --- one GPU in one window: training-shaped? (permille of 0..1) ----------------------
    strong_util_permille: int = 700
    """Mean utilization of a clearly training-shaped GPU (training runs at 90-100%)."""
    strong_power_permille: int = 450
    """Mean power / power limit of a clearly training-shaped GPU (H100 training: 55-90%)."""
    weak_util_permille: int = 350
    """Floor for a throttled training GPU; it counts only when its tenant's nodes are in sync."""
    weak_power_permille: int = 250
    """Power floor for a throttled training GPU (an idle H100 draws about 10% of its limit)."""
    steady_bucket_fraction_permille: int = 600
    """Share of the window's buckets whose utilization is at least half the window's mean."""
    min_sm_active_permille: int = 200
    """Where SM activity is reported, a training GPU keeps its SMs busier than this."""

    # --- synchronisation across a group's nodes ----------------------------------------
    sync_min_gpus: int = 24
    """Synchrony is computed only for groups with at least this many candidate GPUs."""
    sync_history_windows: int = 5
    """Windows of per-bucket node series pooled for the zero-lag correlation."""
    sync_sample_nodes: int = 24
    """Nodes sampled (stably, by hash of node id) per group; all pairs among them are used."""
    sync_min_points: int = 12
    """Buckets both nodes of a pair must have for the pair to count."""
    sync_min_corr: float = 0.30
    """Mean pair correlation that counts as synchrony evidence for a run below ``size_alone_gpus``."""
    weak_sync_corr: float = 0.45
    """Mean pair correlation above which throttled (weak) GPUs count towards a run."""

    # --- linking tenant accounts that run one job ---------------------------------------
    link_min_gpus: int = 8
    """A tenant needs this many candidate GPUs in a window to be compared with others (one node)."""
    link_history_windows: int = 20
    """Windows of tenant-level series pooled for a link test (20 min: 60+ points at 20 s samples)."""
    link_min_points: int = 24
    """Buckets both sides must have before a correlation is tested (each window's own mean is
    removed, so the test counts one point less per window as degrees of freedom)."""
    link_min_corr: float = 0.75
    """Zero-lag correlation of tenant-level series for a link. Accounts of one job, each a few
    nodes, correlate at 0.9-0.99 (their means share the job's step-by-step swings); unrelated
    training jobs on the same benchmark reach 0.55-0.65 by chance alignment of their periodic
    evaluation dips (seen on MLPerf shapes), so the bar sits well above that."""
    link_min_z: float = 4.5
    """Fisher z (atanh(r) * sqrt(n - 3)) for a link: unrelated tenants are ~N(0, 1), so 4.5 keeps
    chance links below ~1e-5 per pair test even with many busy tenants on a site."""
    link_confirm_windows: int = 3
    """Consecutive windows two tenants must test as one job before they are linked."""
    link_ttl_s: int = 3600
    """A link not re-confirmed for this long lapses (unless a run of its group is still going)."""
    link_max_tenants: int = 200
    """At most this many tenants (the largest by candidate GPUs) are compared per window: bounds
    the cost on a site with thousands of small accounts."""

    # --- FLOP accounting ----------------------------------------------------------------
    mfu_low: float = 0.25
    """Low end of model FLOP utilisation of a busy training GPU (Llama 3, MegaScale: 38-55%)."""
    mfu_high: float = 0.55
    """High end of model FLOP utilisation (the best published large-scale runs)."""
    flop_watch: float = 1e23
    flop_flag: float = 1e24
    flop_report: float = 1e25
    flop_report_high: float = 1e26
    projection_days: int = 30
    """Horizon of the projection of a run's total FLOP from its current rate."""

    # --- severity -----------------------------------------------------------------------
    transparent_opacity_max: float = 0.2
    """Below this opacity a tenant is transparent: its finding is at most ``low``."""
    opaque_opacity_min: float = 0.6
    """At or above this opacity a tenant is opaque: severity is raised one step."""
    large_gpus: int = 1024
    """Run size that on its own is of the highest size class."""
    update_gpu_hours_fraction: float = 0.25
    """A finding is re-emitted when its GPU-hours grew by this fraction since last emitted."""
    update_gpus_fraction: float = 0.10
    """... or when its peak GPUs changed by this fraction."""

    opacity: OpacityConfig = field(default_factory=OpacityConfig)
