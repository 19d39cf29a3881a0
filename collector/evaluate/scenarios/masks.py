"""Field masks: which telemetry a site's agents deliver, applied to the windows the agent made.

A field a site does not deliver is ``None`` with ``"absent_in_trace"`` as its reason in the
``unavailable`` map beside it (GPU-level for GPU fields, node-level for ``node_io``), exactly
as the agent records a reading it could not take: never zero.

* ``all``: utilisation, power (mean, max), per-bucket series, GPM SM/tensor activity, IB
  bytes, the energy counter.
* ``util_only``: NVML utilisation only (window mean and the series' utilisation): no power,
  energy, GPM or IB (a site that exports nothing but "GPU utilisation").
* ``power_only``: power (mean, max, series) and the energy counter: no utilisation, GPM or IB
  (a facility-side feed).
* ``no_series``: window means only (``series`` is None).
* ``no_gpm``: no SM/tensor activity (pre-Hopper profiling off, or DCGM not running).
* ``no_ib``: no InfiniBand counters.
* ``no_energy``: no energy counter.
"""

from __future__ import annotations

import msgspec

from attestation.statement import GpuWindow, NodeIo, Series, UsageWindow

ABSENT = "absent_in_trace"
MASKS: tuple[str, ...] = ("all", "util_only", "power_only", "no_series", "no_gpm", "no_ib", "no_energy")

_POWER = ("power_mean_mw", "power_max_mw")
_ENERGY = ("energy_start_mj", "energy_end_mj")
_UTIL = ("util_mean_permille",)
_GPM = ("sm_active_mean_permille", "tensor_active_mean_permille")
_IB = ("ib_tx_bytes", "ib_rx_bytes")

# mask -> (GPU fields to drop, series part to drop: "all" | "util" | "power" | "", drop IB)
_SPEC: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "all": ((), "", False),
    "util_only": (_POWER + _ENERGY + _GPM, "power", True),
    "power_only": (_UTIL + _GPM, "util", True),
    "no_series": ((), "all", False),
    "no_gpm": (_GPM, "", False),
    "no_ib": ((), "", True),
    "no_energy": (_ENERGY, "", False),
}


def _gpu(g: GpuWindow, fields: tuple[str, ...], series: str) -> GpuWindow:
    changes: dict[str, object] = {f: None for f in fields}
    reasons = dict(g.unavailable)
    for f in fields:
        reasons[f] = ABSENT
    if series and g.series is not None:
        if series == "all":
            changes["series"] = None
            reasons["series"] = ABSENT
        else:
            s = g.series
            nones = tuple(None for _ in s.util_permille)
            if series == "util":
                changes["series"] = Series(bucket_ms=s.bucket_ms, util_permille=nones, power_mw=s.power_mw)
                reasons["series.util_permille"] = ABSENT
            else:
                changes["series"] = Series(bucket_ms=s.bucket_ms, util_permille=s.util_permille, power_mw=nones)
                reasons["series.power_mw"] = ABSENT
    changes["unavailable"] = reasons
    return msgspec.structs.replace(g, **changes)


def apply(w: UsageWindow, mask: str) -> UsageWindow:
    """``w`` as a site delivering only ``mask``'s fields would have sent it."""
    fields, series, drop_ib = _SPEC[mask]
    if not fields and not series and not drop_ib:
        return w
    changes: dict[str, object] = {}
    if fields or series:
        changes["gpus"] = tuple(_gpu(g, fields, series) for g in w.gpus)
    if drop_ib:
        io = w.node_io or NodeIo()
        changes["node_io"] = msgspec.structs.replace(io, ib_tx_bytes=None, ib_rx_bytes=None)
        changes["unavailable"] = {**w.unavailable, **{f: ABSENT for f in _IB}}
    return msgspec.structs.replace(w, **changes)
