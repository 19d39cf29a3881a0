"""Telemetry loss: statements and readings that never reach the detector.

A real fleet does not deliver every window of every node. The agent spools what it could not
send (a collector outage or a network partition delays statements, it does not lose them),
but nothing is written while the agent itself is down, and a GPU that NVML cannot read in a
window has no readings for it. The ``loss`` axis applies that to the windows the agents made,
after the field mask, the same for every mask of a site (so the comparison stays paired):

* ``none``: every window arrives.
* ``outages``: each node's agent is down now and then: a restart or an upgrade (1-3 windows),
  now and then a crash loop or an OOM kill that takes longer (5-15 windows), at about one
  outage per node every 90 minutes; no statement exists for those windows, while the node's
  GPUs go on with their work. And single GPUs go unread: a failed NVML call in one window
  (0.5% of GPU-windows), or a GPU that stops answering for 5-20 windows (about once per
  100 GPU-hours).
  A GPU without a reading looks as the agent writes it (``core.window``): no sample, no
  readings, no workloads, ``unavailable["readings"]`` saying why.

The draws come from the site's seed and the node's name only, so a site loses the same
windows whatever else changes.
"""

from __future__ import annotations

import random
import zlib

import msgspec

from attestation.statement import GpuWindow, UsageWindow

LOSSES: tuple[str, ...] = ("none", "outages")
_OUTAGE_PER_MIN = 1 / 90
"""Agent outages per node-minute."""
_LONG_SHARE = 0.15
"""Of those, the share that last 5-15 windows (a crash loop); the rest last 1-3."""
_GPU_MISS = 0.005
"""GPU-windows whose readings fail on their own."""
_GPU_STUCK_PER_MIN = 1 / 6000
"""GPUs (per GPU-minute) that stop answering for 5-20 windows."""
LOST_READING = "nvml_error_in_window"


def no_reading(g: GpuWindow) -> GpuWindow:
    """``g`` as the agent writes a GPU it could not read in the window (core/window.py): the
    energy counter at both ends is the last reading before the window, carried over."""
    return msgspec.structs.replace(
        g,
        samples=0,
        energy_end_mj=g.energy_start_mj,
        power_mean_mw=None,
        power_max_mw=None,
        util_mean_permille=None,
        mem_used_max_bytes=None,
        sm_active_mean_permille=None,
        tensor_active_mean_permille=None,
        nvlink_tx_bytes=None,
        nvlink_rx_bytes=None,
        pcie_tx_bytes=None,
        pcie_rx_bytes=None,
        series=None,
        workloads=(),
        unavailable={**g.unavailable, "readings": LOST_READING},
    )


class _NodeLoss:
    """One node's outages and stuck GPUs, drawn in time order as its windows come."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.down_until = -1  # window index (minutes) the agent is down until (exclusive)
        self.stuck: dict[int, int] = {}  # GPU index -> window index it answers again

    def window(self, w: UsageWindow) -> UsageWindow | None:
        k = w.start_ms // 60_000
        rng = self.rng
        if k < self.down_until:
            return None
        if rng.random() < _OUTAGE_PER_MIN:
            long = rng.random() < _LONG_SHARE
            self.down_until = k + (rng.randint(5, 15) if long else rng.randint(1, 3))
            return None
        gpus = list(w.gpus)
        changed = False
        for i, g in enumerate(gpus):
            until = self.stuck.get(g.index)
            if until is not None and k >= until:
                del self.stuck[g.index]
                until = None
            if until is None and rng.random() < _GPU_STUCK_PER_MIN:
                until = self.stuck[g.index] = k + rng.randint(5, 20)
            if until is not None or rng.random() < _GPU_MISS:
                gpus[i] = no_reading(g)
                changed = True
        return msgspec.structs.replace(w, gpus=tuple(gpus)) if changed else w


class Loss:
    """The windows a site loses (``kind`` one of ``LOSSES``); stateful, feed windows in time order."""

    def __init__(self, kind: str, seed: int) -> None:
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}: one of {', '.join(LOSSES)}")
        self.kind = kind
        self.seed = seed
        self._nodes: dict[str, _NodeLoss] = {}

    def window(self, w: UsageWindow) -> UsageWindow | None:
        """``w`` as it arrives, or None where it never does."""
        if self.kind == "none":
            return w
        node = self._nodes.get(w.node_id)
        if node is None:
            node = self._nodes[w.node_id] = _NodeLoss(random.Random(self.seed * 7919 + zlib.crc32(w.node_id.encode())))
        return node.window(w)


__all__ = ["LOSSES", "LOST_READING", "Loss", "no_reading"]
