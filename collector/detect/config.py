"""The detector's thresholds: one frozen dataclass, built once and passed down.

Every threshold the detector uses lives here, with its unit and why it has its value.
Nothing in the detector keys on tenant, workload or node names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from collector.detect.enduse import EndUseConfig
from collector.detect.opacity import OpacityConfig


@dataclass(frozen=True)
class DetectConfig:
    # --- event time -------------------------------------------------------------------
    allowed_lateness_s: int = 300
    """A window closes at the latest when the newest event time seen is this far past its end."""
    active_node_windows: int = 3
    """A window also closes once every node seen in this many preceding windows reported it."""
    straggler_grace_s: int = 60
    """A window also closes once event time is this far past its end and the nodes that have
    not reported it are few (``straggler_max_share`` of those expected, one node at least) and
    silent (nothing heard from them for two windows and this long): an agent that is down (a
    restart, a crash loop) writes no statement for those minutes, waiting ``allowed_lateness_s``
    for it would hold every window of the site, and a large fleet always has an agent
    restarting somewhere. A node that is only behind keeps sending and is waited for; more
    nodes missing than that share (a rack's network, the collector's own intake) wait for the
    lateness too."""
    straggler_max_share: float = 0.05

    # --- what makes a finding -----------------------------------------------------------
    min_gpus: int = 64
    """GPUs occupied by one group's training workloads at once for a ``large_training`` finding."""
    min_duration_s: int = 600
    """How long the run must have held ``min_gpus`` (its span at size, pauses included) before
    it is raised."""
    min_duty_cycle: float = 0.3
    """Share of the span at size in which the run actually held ``min_gpus`` (training phases of
    a run that alternates rollouts and training, or pauses for checkpoints)."""
    size_alone_gpus: int = 256
    """Only where coupling could not be measured at all (every series flat or too short:
    unknown, not evidence either way) and InfiniBand, where reported, is not idle: a run of this
    many strong training-shaped GPUs is raised on size. Where coupling was measured it must
    fire, so a steady 300-GPU inference fleet or many independent one-node jobs raise nothing."""
    shared_workload_min_nodes: int = 2
    """Where coupling is unknown, one workload id (an opaque identity: one Slurm job, one pod
    group) on at least this many nodes holding ``min_gpus`` GPUs is job evidence."""
    run_floor_gpus: int = 16
    """A run starts (``started_at``) when a group first has this many training GPUs."""
    run_gap_s: int = 1200
    """A run survives this long without a window at ``run_floor_gpus`` (checkpoint pauses, a
    restart on other nodes after a failure, the rollout phases of RL post-training): one run,
    one finding, one ``started_at``."""
    workload_memory_s: int = 1200
    """A workload seen training-shaped counts as the run's for this long: its GPUs count while
    it occupies them, also in windows where they dip below the training thresholds."""
    max_gap_windows: int = 2
    """Kept for configuration files written before ``run_gap_s``; not used by the detector."""
    unreported_carry_s: int = 600
    """A node of a run that sends no statement for a window (its agent is down) or whose GPUs
    go unread in it (no sample) still holds, for this long after it was last seen in the run,
    the GPUs it held then: they count towards the run's size (``min_gpus``, ``size_alone_gpus``),
    never towards its GPU-seconds or FLOP, and a finding reports them apart
    (``gpus_unreported_last_window``). Without it a run of exactly ``min_gpus`` falls below its
    size whenever one agent restarts."""

    # --- one GPU in one window: training-shaped? (permille of 0..1) ----------------------
    strong_util_permille: int = 700
    """Mean utilization of a clearly training-shaped GPU (training runs at 90-100%)."""
    strong_power_permille: int = 450
    """Mean power / power limit of a clearly training-shaped GPU (H100 training: 55-90%)."""
    weak_util_permille: int = 350
    """Floor for a throttled or input-bound training GPU; it counts only where its group is coupled."""
    weak_power_permille: int = 250
    """Power floor for such a GPU (an idle H100 draws about 10% of its limit)."""
    steady_bucket_fraction_permille: int = 600
    """Share of the window's buckets whose utilization is at least half the window's mean."""
    min_sm_active_permille: int = 200
    """Where SM activity is reported, a training GPU keeps its SMs busier than this."""

    # --- coupling across a group's nodes (collector/detect/coupling.py) -------------------
    sync_min_gpus: int = 24
    """Coupling is measured only for groups with at least this many GPUs (three nodes)."""
    sync_sample_nodes: int = 24
    """Nodes sampled (stably, by hash of node id) per group; all pairs among them are used."""
    sync_history_windows: int = 10
    """Within windows: windows of per-bucket node series pooled (each window's mean removed)."""
    sync_min_points: int = 24
    """Within windows: buckets a node needs over that history to count (four windows of 10 s
    buckets: enough episodes that the strongest can be left out)."""
    sync_min_corr: float = 0.30
    """Within windows: median pair correlation, without each pair's strongest windows, for coupling."""
    coupling_history_windows: int = 30
    """Across windows: window means pooled per node (any sample interval has them)."""
    coupling_min_windows: int = 12
    """Across windows: windows a node needs over that history to count (four episodes)."""
    coupling_early_min_windows: int = 9
    """Across windows, with fewer than ``coupling_min_windows`` points: a test on this many
    (episodes of two windows, so four or more, two left out) counts only where it is strong
    (``coupling_strong_corr`` at twice ``coupling_min_z``); a weaker one is still pending. One
    job's nodes at 0.7-0.97 are not made to wait minutes for points that can only confirm it."""
    coupling_episode_windows: int = 3
    """Across windows: consecutive windows that form one episode (left out together)."""
    coupling_min_corr: float = 0.08
    """Across windows: median pair correlation for coupling. Real MLPerf multi-node runs give
    0.15-0.24 at 30 s point samples in steady state, 0.7-0.99 at 2 s; independent nodes give
    0 +- 0.02 over 24 sampled nodes."""
    coupling_exact_min_corr: float = 0.3
    """Across windows, where most of the group's levels are exact window means (energy
    counters, two readings or more a window): the median pair correlation at which throttled
    (weak) GPUs count for the group's run. One synchronous job's nodes do the same steps in a
    window and agree closely; a serving fleet whose instances follow shared demand gave
    0.12-0.19 in the tests that counted its GPUs before this bar. The group's coupling keeps
    ``coupling_min_corr`` (a job among other work of one tenant has a low median), and so do
    windows of one reading (their means span windows up to a minute apart: real MLPerf nodes
    read once a minute agree at about 0.2). docs/detection.md."""
    coupling_min_z: float = 4.0
    """Standard errors from what independent nodes give, for coupling at either scale."""
    coupling_flat_change: float = 0.005
    """A test that finds no coupling where the typical point of its node series (median over
    nodes of the median window-to-window change across windows, of the distance from the
    window's mean within windows) moves less than this share of full scale had nothing to
    measure: the series are flat between a few excursions (utilisation pinned at 100%, which
    NVML reports in whole percent), as a job's and a fleet's pinned GPUs both are. It is
    *flat*, not evidence of independent nodes: counted as uncoupled for the run's votes, and
    as unknown for what else may say it is one job (one workload id, size)."""
    coupling_confirm_windows: int = 2
    """A run's coupling is job evidence once its tests found it coupled in this many more
    windows than uncoupled (a test runs every window: one that passes once by chance, or on
    one shared event, in a long quiet history is not a job)."""

    coupling_strong_corr: float = 0.5
    """A test that finds a group coupled at this median correlation and at twice
    ``coupling_min_z`` confirms on its own (one job's nodes give 0.85-0.97 across windows from
    the energy counters; a fleet that moves together on a shared event gives about 0.2)."""
    coupling_min_share: float = 1 / 3
    """Coupling is job evidence only while its tests found the group coupled in at least this
    share of the last ``coupling_history_windows`` windows they measured it in (a run with
    fewer tests than that is not held to it, so a new run is not delayed): a
    fleet that moved together only for a while (a ramp, a shared event) falls back to what size
    alone allows, and a run that turns coupled after a long uncoupled phase (a tenant's serving
    before its training) is a coupled run again within that many windows."""
    slurm_job_max_nodes: int = 2
    """A group whose GPUs are Slurm jobs (one job id on every node of a multi-node job) none of
    which spans more than this many nodes is independent jobs (a sweep, a fleet), not one:
    jobs of one node raise nothing unless the fabric is busy, jobs of two are at most what the
    end-use axis allows."""
    # --- linking tenant accounts that run one job ---------------------------------------
    link_min_gpus: int = 8
    """A tenant needs this many GPUs in a window to be compared with others (one HGX node), or
    every GPU of a node with fewer (a GB200 NVL72 tray holds four)."""
    link_history_windows: int = 20
    """Within windows: windows of tenant-level series pooled for a link test."""
    link_min_points: int = 24
    """Points both sides must have before a correlation is tested."""
    link_min_corr: float = 0.25
    """Within windows: median correlation of node pairs that straddle two accounts (without the
    episodes of strongest agreement) for a link. One job's nodes show 0.3-0.9 at 10 s buckets
    whichever account leases them."""
    link_coarse_min_corr: float = 0.08
    """Across windows: the same, on window-to-window changes (as ``coupling_min_corr``)."""
    link_coarse_history_windows: int = 60
    """Across windows: windows of node changes pooled for a link test. Longer than a group's
    ``coupling_history_windows``: an account of one node read once a minute has one series
    to offer, and thirty points of it are little evidence however coupled it is."""
    link_min_ratio: float = 0.5
    """... and at least this share of the coupling within each account's own nodes: unrelated
    jobs are coupled within and not across; one job's accounts are coupled both ways."""
    link_screen_corr: float = 0.4
    """Tenant-level correlation below which a pair is not tested at node level (cost bound)."""
    link_sample_nodes: int = 8
    """Nodes sampled (stably) on each side of a link test: 64 straddling pairs."""
    link_max_tests_per_tenant: int = 3
    """Clusters (those that screen best) a tenant is tested against at node level per window."""
    link_min_z: float = 4.5
    """Standard errors of the straddling pairs' median from what unrelated nodes give: 4.5 keeps
    chance links below ~1e-5 per test even with many busy tenants on a site."""
    link_confirm_windows: int = 3
    """Windows two tenants must test as one job, net of windows they do not, before they are linked."""
    link_ttl_s: int = 3600
    """A link not re-confirmed for this long lapses (unless a run of its group is still going)."""
    link_max_tenants: int = 200
    """At most this many tenants (the largest) are compared per window, and serve as the
    reference for the common component: bounds the cost on a site with thousands of accounts."""

    # --- other evidence, each optional --------------------------------------------------
    ib_busy_bytes_per_s: float = 1e9
    """Median east-west traffic per node (InfiniBand/RoCE and Ethernet, tx + rx) above which a
    group's nodes talk to each other."""
    ib_idle_bytes_per_s: float = 2e7
    """... and below which they do not: where most of a group's nodes report the fabric and its
    median is below this, the group is single-node work (a fleet, a sweep, batch inference)
    and raises nothing, however its nodes move together."""
    material_share: float = 0.10
    """A member tenant holding at least this share of a run's GPU-seconds sets its severity."""

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
    """Below this opacity a tenant is transparent: a run whose material members are all
    transparent is at most ``low``."""
    opaque_opacity_min: float = 0.6
    """At or above this opacity a tenant is opaque: severity is raised one step."""
    large_gpus: int = 1024
    """Run size that on its own is of the highest size class."""
    update_gpu_hours_fraction: float = 0.25
    """A finding is re-emitted when its GPU-hours grew by this fraction since last emitted."""
    update_gpus_fraction: float = 0.10
    """... or when its peak GPUs changed by this fraction."""

    opacity: OpacityConfig = field(default_factory=OpacityConfig)
    end_use: EndUseConfig = field(default_factory=EndUseConfig)
    """End-use risk: countries of concern, screening, floors (collector/detect/enduse.py)."""
