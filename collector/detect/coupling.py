"""Coupling: do several series move as one, for reasons a shared shock cannot explain?

Nodes of one synchronous training job move together: every rank runs the same steps, so a
straggler, a congested fabric, an evaluation or a checkpoint slows all of them at once, and
a job's start, pauses and restarts happen on all of its nodes in the same minute. Independent
jobs move alone. Two things make that comparison fragile, and this module answers both:

* **Common shocks.** A storage stall, facility power capping, wall-clock checkpoints or a
  fabric event moves every tenant of a site in the same minute, and one such excursion
  dominates a Pearson correlation. The *common component* is the median, per time point, of
  the deviations of the site's other tenants (what most tenants share); the time points at
  which it makes an excursion of its own (``COMMON_MASK_SD`` robust standard deviations)
  are left out for every unit. Points are masked rather than the component subtracted:
  a median of a few tenants carries their own fluctuations too, and subtracting it from
  every node of a group would give all of them the same signal, which is coupling made up.
  The share of points masked is reported.
* **One excursion is not agreement.** Residuals are winsorised at ``WINSOR`` robust standard
  deviations (1.4826 x MAD), and the time points are cut into *episodes* (consecutive
  windows). The statistic is the median pair correlation computed with every episode and
  with each episode left out in turn, and the smallest of these counts: agreement has to
  hold without any single episode. The median over pairs (not the mean) asks whether the
  *typical* pair of units is coupled, so several small clusters that each move together
  (multi-node inference instances) do not pass for one job.

The same code serves two time scales (``engine`` decides which series it passes):
*within windows* (per-bucket series, each window's mean removed: needs buckets, i.e. samples
10 s apart or closer) and *across windows* (one point per window: the window means, which
every statement carries at any sample interval). Pure Python, no numpy: the costs are a few
dot products per pair, bounded by the number of units the engine samples.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WINSOR = 2.5
"""Residuals are clipped at this many robust standard deviations."""
LEAVE_OUT = 2
"""Episodes of strongest agreement left out of the robust statistic: one per four episodes,
at most this many (leaving out the best of few episodes biases the rest low)."""
COMMON_MASK_SD = 3.0
"""A time point whose common component is this many robust SDs from its median is masked."""
MIN_COMMON_TENANTS = 3
"""A common component needs this many other tenants: with fewer, a "median" is one of them."""
_TINY = 1e-12
_MAD_TO_SD = 1.4826
_MEDIAN_EFFICIENCY = 1.57
"""Variance of a median over that of a mean, for near-normal values (pi / 2)."""


@dataclass(frozen=True)
class Coupling:
    """What one coupling test saw: the statistic, its support, and what was removed first."""

    scale: str
    """"within_windows" (per-bucket series) or "across_windows" (window means)."""
    corr: float
    """Median pair correlation without the ``LEAVE_OUT`` episodes of strongest agreement (robust)."""
    corr_all_episodes: float
    """Median pair correlation with every episode in."""
    z: float
    """How far ``corr`` is from what independent units give (standard errors)."""
    points: int
    """Time points per unit (the fewest any unit had)."""
    units: int
    pairs: int
    episodes: int
    common_removed: float | None
    """Share of the time points masked as excursions of the common component (None: no
    common component, fewer than ``MIN_COMMON_TENANTS`` other tenants)."""

    def fired(self, min_corr: float, min_z: float) -> bool:
        return self.corr >= min_corr and self.z >= min_z

    def to_json(self) -> dict[str, object]:
        return {
            "scale": self.scale,
            "corr": round(self.corr, 3),
            "corr_all_episodes": round(self.corr_all_episodes, 3),
            "z": round(self.z, 2),
            "points": self.points,
            "units": self.units,
            "pairs": self.pairs,
            "episodes": self.episodes,
            "common_share_removed": None if self.common_removed is None else round(self.common_removed, 3),
        }


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        raise ValueError("median of nothing")
    m = n // 2
    return s[m] if n % 2 else (s[m - 1] + s[m]) / 2


def deviations(xs: Sequence[float | None]) -> list[float | None]:
    """``xs`` less its own median over the points present (a unit's level is not evidence)."""
    present = [x for x in xs if x is not None]
    if not present:
        return list(xs)
    m = median(present)
    return [None if x is None else x - m for x in xs]


def common_component(series: Sequence[Sequence[float | None]], length: int) -> list[float | None] | None:
    """Per time point, the median of the given (already centred) series present there.

    None when fewer than ``MIN_COMMON_TENANTS`` series are given; a point where fewer than
    ``MIN_COMMON_TENANTS`` have a value is None (nothing is removed there).
    """
    if len(series) < MIN_COMMON_TENANTS:
        return None
    out: list[float | None] = []
    for i in range(length):
        vals = [s[i] for s in series if i < len(s) and s[i] is not None]
        out.append(median(vals) if len(vals) >= MIN_COMMON_TENANTS else None)  # type: ignore[arg-type]
    return out


def common_mask(c: Sequence[float | None]) -> list[bool]:
    """True at the points where the common component makes an excursion of its own."""
    present = [v for v in c if v is not None]
    if len(present) < 3:
        return [False] * len(c)
    med = median(present)
    scale = _MAD_TO_SD * median([abs(v - med) for v in present])
    if scale <= _TINY:
        mean = sum(present) / len(present)
        scale = math.sqrt(sum((v - mean) ** 2 for v in present) / len(present))
    if scale <= _TINY:
        return [False] * len(c)
    return [v is not None and abs(v - med) > COMMON_MASK_SD * scale for v in c]


def _winsorised(x: list[float | None]) -> list[float | None] | None:
    """Centre on the mean, clip at ``WINSOR`` robust SDs; None when the series is flat."""
    present = [v for v in x if v is not None]
    if len(present) < 3:
        return None
    med = median(present)
    mad = median([abs(v - med) for v in present])
    scale = _MAD_TO_SD * mad
    if scale <= _TINY:
        mean = sum(present) / len(present)
        scale = math.sqrt(sum((v - mean) ** 2 for v in present) / len(present))
        if scale <= _TINY:
            return None
    lo, hi = med - WINSOR * scale, med + WINSOR * scale
    clipped = [None if v is None else min(hi, max(lo, v)) for v in x]
    cp = [v for v in clipped if v is not None]
    mean = sum(cp) / len(cp)
    return [None if v is None else v - mean for v in clipped]


def measure(
    units: Mapping[str, Sequence[float | None]],
    episodes: Sequence[int],
    *,
    scale: str,
    min_points: int,
    common: Sequence[float | None] | None = None,
) -> Coupling | None:
    """The coupling of ``units`` (unit -> series over the same time points).

    ``episodes[i]`` names the episode of time point ``i`` (consecutive windows share one).
    ``common``: the common component over the same points, already centred (or None).
    Units with fewer than ``min_points`` values, or flat ones, are left out; None when fewer
    than two units remain.
    """
    length = len(episodes)
    mask = [False] * length if common is None else common_mask(list(common[:length]))
    prepared: list[list[float | None]] = []
    points = length
    for xs in units.values():
        row = list(xs[:length]) + [None] * (length - len(xs))
        x = deviations([None if m else v for v, m in zip(row, mask, strict=True)])
        n = sum(1 for v in x if v is not None)
        if n < min_points:
            continue
        w = _winsorised(x)
        if w is None:
            continue
        prepared.append(w)
        points = min(points, n)
    k = len(prepared)
    if k < 2:
        return None
    removed = None if common is None else sum(mask) / max(1, length)

    # Per unit and episode: sum of squares; per pair and episode: cross products. The robust
    # pair correlation leaves out the ``LEAVE_OUT`` episodes of strongest agreement: it must
    # hold over the other episodes, so one or two shared excursions (a stall, an aligned
    # checkpoint) cannot make it. The centring is that of all
    # points: a small bias that only makes a left-out statistic more conservative.
    ep_ids = sorted(set(episodes))
    ep_index = {e: i for i, e in enumerate(ep_ids)}
    idx = [ep_index[e] for e in episodes]
    n_ep = len(ep_ids)
    # Dense rows (a missing point is the unit's mean, zero: it adds nothing to a cross product
    # or a sum of squares), so each pair costs two dot products in C.
    dense = [[0.0 if v is None else v for v in x] for x in prepared]
    occ = [False] * n_ep
    for x in prepared:
        for i, v in enumerate(x):
            if v is not None and v != 0.0:
                occ[idx[i]] = True
    occupied = [e for e in range(n_ep) if occ[e]]
    used_eps = len(occupied)
    leave = min(LEAVE_OUT, used_eps // 4)
    # The episodes left out are the group's, not each pair's: those in which the units agree
    # most in total (the sum over pairs of their cross products). Choosing per pair would leave
    # each pair's luckiest episodes out and bias every weak but real coupling below zero.
    agreement = [0.0] * n_ep
    for i, column in enumerate(zip(*dense, strict=True)):
        tot = sum(column)
        agreement[idx[i]] += tot * tot - sum(map(operator.mul, column, column))
    top = set(sorted((e for e in occupied if agreement[e] > 0), key=lambda e: -agreement[e])[:leave])
    keep = [idx[i] not in top for i in range(length)]
    rest = [[v if k_ else 0.0 for v, k_ in zip(x, keep, strict=True)] for x in dense] if top else dense
    totals = [sum(map(operator.mul, x, x)) for x in dense]
    rest_totals = [sum(map(operator.mul, x, x)) for x in rest] if top else totals
    full: list[float] = []
    robust_pairs: list[float] = []
    for a in range(k):
        xa, ra = dense[a], rest[a]
        for b in range(a + 1, k):
            c = sum(map(operator.mul, xa, dense[b]))
            den = math.sqrt(totals[a] * totals[b])
            r_full = c / den if den > _TINY else 0.0
            full.append(r_full)
            if not top:
                robust_pairs.append(r_full if used_eps >= 2 else min(r_full, 0.0))
                continue
            d = math.sqrt(rest_totals[a] * rest_totals[b])
            robust_pairs.append(sum(map(operator.mul, ra, rest[b])) / d if d > _TINY else 0.0)
    pairs = len(full)
    med_all = median(full)
    robust = min(med_all, median(robust_pairs))
    # Points left after the episodes left out (what the statistic stands on).
    support = max(0, points - (points * leave) // max(used_eps, 1))
    if pairs == 1:
        r = min(max(robust, -0.999999), 0.999999)
        z = math.atanh(r) * math.sqrt(max(support - 3, 0))
    else:
        z = robust * math.sqrt(pairs * max(support - 1, 0) / _MEDIAN_EFFICIENCY)
    return Coupling(
        scale=scale,
        corr=robust,
        corr_all_episodes=med_all,
        z=z,
        points=points,
        units=k,
        pairs=pairs,
        episodes=used_eps,
        common_removed=removed,
    )


__all__ = ["Coupling", "LEAVE_OUT", "MIN_COMMON_TENANTS", "common_component", "deviations", "measure", "median"]
