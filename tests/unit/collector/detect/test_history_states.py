"""What ``History.group_coupling`` says when it cannot measure: "pending" (wait) or "unknown"
(the data cannot tell, so size or one workload id may stand in for coupling)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from collector.detect.config import DetectConfig
from collector.detect.history import History
from collector.detect.usage import TenantWindow

WINDOW_MS = 60_000


@dataclass
class _Gpu:
    """What ``TenantWindow.node_level`` and ``sample_lag`` read of a GPU window: utilisation only."""

    util_mean_permille: int
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


def _site(windows: int, flat_group: bool, shocks: set[int]) -> tuple[History, int]:
    """A four-node group beside three other tenants; in the windows of ``shocks`` those three
    dip together (a site-wide stall)."""
    rng = random.Random(7)
    hist = History(DetectConfig())
    s = 0
    for k in range(windows):
        s = k * WINDOW_MS
        tws = {
            "group": _tenant({f"g{j}": 900 if flat_group else 850 + rng.randrange(100) for j in range(4)}),
        }
        for o in range(3):
            base = 500 if k in shocks else 900
            tws[f"other{o}"] = _tenant({f"o{o}n{j}": base + rng.randrange(20) for j in range(2)})
        hist.record(s, tws)
    return hist, s


def test_a_history_long_enough_only_with_the_points_a_site_wide_excursion_masks_is_pending() -> None:
    cfg = DetectConfig()
    n = cfg.coupling_min_windows + 2  # enough windows, but each shock masks two changes
    hist, s = _site(n, flat_group=False, shocks={3, 7})
    c = hist.group_coupling(s, ["group"], {"group"})
    assert c.across is None and c.within is None
    assert c.state == "pending", "points left out by the common mask are not there: wait, do not give up"
    # Without the shocks the same history is measured.
    hist, s = _site(n, flat_group=False, shocks=set())
    assert hist.group_coupling(s, ["group"], {"group"}).across is not None


def test_flat_series_over_a_long_history_are_unknown() -> None:
    cfg = DetectConfig()
    hist, s = _site(cfg.coupling_min_windows + 4, flat_group=True, shocks=set())
    c = hist.group_coupling(s, ["group"], {"group"})
    assert c.across is None and c.state == "unknown"
