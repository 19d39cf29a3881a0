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
    """At or above this many GPUs size alone is evidence enough; below it synchrony must fire."""
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
