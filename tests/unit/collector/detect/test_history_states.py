"""What ``History.group_coupling`` says: "unknown" where the data cannot tell (size or one
workload id may then stand in for coupling), and whether throttled GPUs may count, which
depends on what the points are (exact window means or point readings)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from collector.detect.config import DetectConfig
from collector.detect.history import History
from collector.detect.usage import TenantWindow

WINDOW_MS = 60_000


@dataclass
class _Gpu:
    """What ``TenantWindow.node_level_exact`` and ``sample_lag`` read of a GPU window: utilisation only."""

    util_mean_permille: int
    samples: int = 6
    power_limit_mw: int | None = None
    power_mean_mw: int | None = None
    energy_start_mj: int | None = None
    energy_end_mj: int | None = None
    series: None = None


def _tenant(levels: dict[str, int]) -> TenantWindow:
    tw = TenantWindow(window_s=60.0)
    for node, u in levels.items():
        tw.by_node[node] = [_Gpu(u) for _ in range(8)]
    tw.occupied = tw.strong = 8.0 * len(levels)
    return tw


def _flat_site(windows: int) -> tuple[History, int]:
    """A four-node group pinned at one level (a job at its power cap) beside three other tenants."""
    rng = random.Random(7)
    hist = History(DetectConfig())
    s = 0
    for k in range(windows):
        s = k * WINDOW_MS
        tws = {"group": _tenant({f"g{j}": 900 for j in range(4)})}
        for o in range(3):
            tws[f"other{o}"] = _tenant({f"o{o}n{j}": 900 + rng.randrange(20) for j in range(2)})
        hist.record(s, tws)
    return hist, s


def test_flat_series_over_a_long_history_are_unknown() -> None:
    cfg = DetectConfig()
    hist, s = _flat_site(cfg.coupling_min_windows + 4)
    c = hist.group_coupling(s, ["group"], {"group"})
    assert c.across is None and c.state == "unknown"


@dataclass
class _PowerGpu:
    """A GPU window with power readings, and the energy counter where ``exact``."""

    power_mean_mw: int
    exact: bool
    samples: int = 6
    power_limit_mw: int = 1_000_000
    util_mean_permille: int | None = 900
    series: None = None

    @property
    def energy_start_mj(self) -> int | None:
        return 0 if self.exact else None

    @property
    def energy_end_mj(self) -> int | None:
        return self.power_mean_mw * 60 if self.exact else None


def _weakly_coupled(exact: bool) -> History:
    """24 nodes of one tenant whose window-to-window changes share a small common part (about
    0.2 of their variance: shared demand), beside three unrelated tenants."""
    rng = random.Random(3)
    hist = History(DetectConfig())
    for k in range(DetectConfig().coupling_history_windows):
        shared = rng.gauss(0.0, 1.0)
        tw = TenantWindow(window_s=60.0)
        for j in range(24):
            mw = int(600_000 + 10_000 * (0.5 * shared + rng.gauss(0.0, 1.0)) * (1 + k % 2))
            tw.by_node[f"g{j}"] = [_PowerGpu(mw, exact) for _ in range(8)]
        tw.occupied = tw.strong = 8.0 * 24
        tws = {"fleet": tw}
        for o in range(3):
            tws[f"other{o}"] = _tenant({f"o{o}n{j}": 900 + rng.randrange(20) for j in range(2)})
        hist.record(k * WINDOW_MS, tws)
    return hist


def test_weak_agreement_of_exact_window_means_does_not_count_weak_gpus_weak_agreement_of_readings_does() -> None:
    """Exact window means (energy counters) of one synchronous job's nodes agree closely; a weak
    agreement of them is shared demand, and throttled GPUs do not count for a run on it. Point
    readings alias the step, so there a weak agreement is what one job gives. Either way the
    group tests coupled at the low bar (strong GPUs of a job beside other work keep it)."""
    cfg = DetectConfig()
    for exact in (False, True):
        hist = _weakly_coupled(exact)
        s = hist.starts[-1]
        assert hist.exact_share(["fleet"]) == (1.0 if exact else 0.0)
        c = hist.group_coupling(s, ["fleet"], {"fleet"})
        assert c.across is not None and cfg.coupling_min_corr <= c.across.corr < cfg.coupling_exact_min_corr, c.across
        assert c.across.z >= cfg.coupling_min_z
        assert c.state == "coupled"
        assert c.weak_ok is (not exact), (exact, c.across)
        bar = cfg.coupling_exact_min_corr if exact else cfg.coupling_min_corr
        assert c.across.to_json()["weak_min_corr"] == bar
