"""Site-wide common shocks: events that hit every tenant of a site at once.

They are what makes "these nodes moved together" weak evidence on its own: on a real site
many unrelated jobs dip in the same minutes for reasons outside any tenant.

* ``storage_stall``: the shared file system hangs (a metadata server fails over, a burst of
  checkpoints saturates it). Every job that reads or writes it, training, inference and
  small jobs alike, starves: GPUs fall to near idle for 1-3 minutes, a few times a site.
* ``power_cap``: the facility caps every GPU to ~60% of its limit for 10-20 minutes (a
  cooling or utility event; demand response). Power falls, utilisation does not: clocks
  drop, so steps get slower (``physics.cap_progress``).
* ``aligned_checkpoints``: independent jobs all checkpoint on the wall clock (cron-like
  ``:00``/``:30`` schedules, or a site convention): each job pauses for its own 1-3 minutes
  starting the same minute. Inference does not checkpoint.
* ``fabric``: the InfiniBand fabric stalls (a spine switch reboots, a subnet-manager sweep):
  every job that talks across nodes blocks in its collectives for 1-2 minutes together.
  Kernels spin while blocked, so utilisation stays high while power falls to near idle.
  Single-node jobs do not notice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

SHOCKS: tuple[str, ...] = ("none", "storage_stall", "power_cap", "aligned_checkpoints", "fabric")


@dataclass
class Shocks:
    """The shock schedule of one site, in seconds from the site's start (``k``)."""

    kind: str
    duration_s: int
    stalls: list[tuple[int, int]] = field(default_factory=list)
    caps: list[tuple[int, int, float]] = field(default_factory=list)  # (from, to, fraction of limit)
    fabric: list[tuple[int, int]] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)  # wall-clock checkpoint starts

    def __post_init__(self) -> None:
        n = self.duration_s + 120
        self._stall = bytearray(n)
        self._fabric = bytearray(n)
        self._cap: dict[int, float] = {}
        self._ckpts = frozenset(self.checkpoints)
        for a, b in self.stalls:
            for k in range(max(0, a), min(n, b)):
                self._stall[k] = 1
        for a, b in self.fabric:
            for k in range(max(0, a), min(n, b)):
                self._fabric[k] = 1
        for a, b, f in self.caps:
            for k in range(max(0, a), min(n, b)):
                self._cap[k] = f

    def stalled(self, k: int) -> bool:
        return 0 <= k < len(self._stall) and self._stall[k] == 1

    def fabric_down(self, k: int) -> bool:
        return 0 <= k < len(self._fabric) and self._fabric[k] == 1

    def cap_fraction(self, k: int) -> float | None:
        return self._cap.get(k)

    def checkpoint_started(self, k: int) -> bool:
        return k in self._ckpts


def make_shocks(rng: random.Random, kind: str, start_s: float, duration_s: int) -> Shocks:
    """A schedule of ``kind`` for a site starting at Unix time ``start_s``."""
    sh = Shocks(kind, duration_s)
    if kind == "none":
        pass
    elif kind == "storage_stall":
        count = rng.randint(2, 4)
        for a in sorted(rng.sample(range(600, max(601, duration_s - 300), 60), count)):
            sh.stalls.append((a, a + rng.randint(60, 180)))
    elif kind == "power_cap":
        count = 1 if duration_s < 5400 else 2
        slots = sorted(rng.sample(range(900, max(901, duration_s - 1300), 300), count))
        for a in slots:
            sh.caps.append((a, a + rng.randint(600, 1200), rng.uniform(0.55, 0.65)))
    elif kind == "aligned_checkpoints":
        # Wall-clock :00 and :30 (Unix time is UTC-aligned, so minutes are the site's).
        first = int((-start_s) % 1800)
        sh.checkpoints = list(range(first, duration_s, 1800))
    elif kind == "fabric":
        count = rng.randint(2, 3)
        for a in sorted(rng.sample(range(600, max(601, duration_s - 300), 60), count)):
            sh.fabric.append((a, a + rng.randint(60, 120)))
    else:
        raise ValueError(f"unknown shock {kind!r}")
    sh.__post_init__()
    return sh
