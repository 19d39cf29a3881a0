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
  windows). The statistic is the smaller of the median pair correlation over every episode
  and the one without the ``LEAVE_OUT`` episodes in which the units agree most (the
  group's, or in a test between two sets of units the cross pairs'): agreement has to hold
  without its strongest episodes. The median over pairs (not the mean) asks whether the
  *typical* pair of units is coupled, so several small clusters that each move together
  (multi-node inference instances) do not pass for one job.
* **Clusters are not independent units.** Where units fall into tight clusters
  (``CLUSTER_CORR``) none of which holds half of them, the pairs inside a cluster say
  nothing about the rest, and the pairs between two clusters are near-copies of one
  another. ``Coupling.between_clusters`` is then the same test over the pairs *between*
  clusters, its standard error counting one pair per two clusters. A serving fleet of
  2-4-node instances reads as fourteen independent nodes agreeing a little (0.16-0.29 over
  91 pairs, "z" 4-9) when it is five instances; but one job's nodes can fall into tight
  groups too (nodes that share a switch or a pipeline stage) and still agree across them.
  The engine holds throttled (weak) GPUs to the test between clusters, busy ones to the
  test over every pair (``history.group_coupling``).

The same code serves two time scales (``engine`` decides which series it passes):
*within windows* (per-bucket series, each window's mean removed: needs buckets, i.e. samples
10 s apart or closer) and *across windows* (one point per window: the window means, which
every statement carries at any sample interval). Pure Python, no numpy: the costs are a few
dot products per pair, bounded by the number of units the engine samples.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

WINSOR = 2.5
"""Residuals are clipped at this many robust standard deviations."""
LEAVE_OUT = 2
"""Episodes of strongest agreement left out of the robust statistic: two wherever there are at
least four episodes (one with two or three). Leaving out one per four episodes left a single
shared excursion in a short history (jobs started together, one stall the mask missed) and
raised coupling there; the bias of leaving out the best of few episodes only delays weak real
coupling. A test between two accounts (``measure_between``) leaves out as many."""
COMMON_MASK_SD = 3.0
"""A time point whose common component is this many robust SDs from its median is masked."""
MIN_COMMON_TENANTS = 3
"""A common component needs this many other tenants: with fewer, a "median" is one of them."""
CLUSTER_CORR = 0.7
"""Units whose pair correlation over every episode is at least this are one cluster (joined
transitively). Nodes of one multi-node serving instance agree at 0.64-0.98 across windows
read once a minute; nodes of one job read that coarsely agree at 0.15-0.25, and a pair of
them reaches 0.7 by chance in 0.3% of pairs over 20 points (2% over 12), so a job's typical
coupling is not split into clusters. A job read finely agrees above it everywhere: one
cluster of all its units, which is then the job (``_clusters``)."""
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
    clusters: int | None = None
    """Set on a test over the pairs between clusters of units (``between_clusters``): how
    many clusters (singletons included); ``z`` counts one pair per two of them."""
    between_clusters: Coupling | None = None
    """Where the units fell into tight clusters none of which holds half of them: the test
    over the pairs between clusters only. None: no such clusters."""
    weak_min_corr: float | None = None
    """Where the caller recorded it: the correlation at which this test lets throttled (weak)
    GPUs count for a run (across windows it depends on what the points are: exact window
    means or point readings)."""

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
            **({} if self.clusters is None else {"clusters": self.clusters}),
            **({} if self.between_clusters is None else {"between_clusters": self.between_clusters.to_json()}),
            **({} if self.weak_min_corr is None else {"weak_min_corr": round(self.weak_min_corr, 3)}),
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


def typical_move(units: Mapping[str, Sequence[float | None]]) -> float | None:
    """How far a typical point of the units moves from zero: the median over units of each
    unit's median absolute value (window-to-window changes across windows, distances from the
    window's mean within them); None where no unit has a point. A median, so that a few
    excursions (checkpoints, a start) do not make a series that is flat between them move."""
    per = [median([abs(v) for v in row if v is not None]) for row in units.values() if any(v is not None for v in row)]
    return median(per) if per else None


def changes(xs: Sequence[float | None]) -> list[float | None]:
    """Window-to-window changes (None where either side is missing; the first is None).

    The across-windows scale correlates changes, not levels: a level shift that lasts (power
    capping, a slow diurnal drift, a job's ramp) becomes one or two excursions, which the
    winsorising and the episodes left out then bound, while the shared step-rate fluctuations
    of a synchronous job survive differencing unchanged.
    """
    if not xs:
        return []
    out: list[float | None] = [None]
    out += [None if a is None or b is None else b - a for a, b in zip(xs, xs[1:], strict=False)]
    return out


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


def _present_bits(w: Sequence[float | None], n: int) -> int:
    """The points ``w`` has a value at, as bits (bit i: point i); ``n`` of them."""
    if n == len(w):
        return (1 << n) - 1
    return sum(itertools.compress(_pow2(len(w)), map(operator.is_not, w, itertools.repeat(None))))


@functools.cache
def _pow2(length: int) -> tuple[int, ...]:
    """1, 2, 4, ... (``length`` of them): immutable per length, so safe to share between threads."""
    return tuple(1 << i for i in range(length))


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
    clipped = [lo if v < lo else hi if v > hi else v for v in present]
    mean = sum(clipped) / len(clipped)
    if len(present) == len(x):
        return [v - mean for v in clipped]
    it = iter(clipped)
    return [None if v is None else next(it) - mean for v in x]


@dataclass
class _Prepared:
    """Units ready for pair correlations: dense rows with and without the episodes left out."""

    names: list[str]
    dense: list[list[float]]
    rest: list[list[float]]
    totals: list[float]
    rest_totals: list[float]
    points: int
    used_eps: int
    leave: int
    removed: float | None
    present: list[int]
    """Per unit, the time points it has a value at (bit i: point i)."""
    min_overlap: int
    """Points two units must share for their pair to say anything (``measurable``)."""
    aligned: bool = False
    """Every unit has its values at the same points (each has ``min_points`` or more): every
    pair is measurable, and no pair needs checking."""

    def measurable(self, a: int, b: int) -> bool:
        """Do units a and b share enough time points? Nodes read every 20 s at their own phases
        fill different 10-s buckets: such a pair's correlation is no evidence either way (not 0)."""
        return self.aligned or (self.present[a] & self.present[b]).bit_count() >= self.min_overlap

    def pair(self, a: int, b: int) -> tuple[float, float]:
        """(correlation with every episode, without the episodes left out) of units a and b."""
        den = math.sqrt(self.totals[a] * self.totals[b])
        r_full = sum(map(operator.mul, self.dense[a], self.dense[b])) / den if den > _TINY else 0.0
        if self.rest is self.dense:
            return r_full, (r_full if self.used_eps >= 2 else min(r_full, 0.0))
        d = math.sqrt(self.rest_totals[a] * self.rest_totals[b])
        r_rest = sum(map(operator.mul, self.rest[a], self.rest[b])) / d if d > _TINY else 0.0
        return r_full, r_rest

    def all_pairs(self) -> tuple[list[float], list[float]]:
        """``pair`` of every two units, in (a, b) order with a < b: (full, robust) lists."""
        dense, rest, totals, rest_totals = self.dense, self.rest, self.totals, self.rest_totals
        present, need = self.present, self.min_overlap
        check = not self.aligned
        same = rest is dense
        few_eps = self.used_eps < 2
        sqrt, mul = math.sqrt, operator.mul
        full: list[float] = []
        robust: list[float] = []
        k = len(dense)
        for a in range(k):
            da, ra, ta, rta, pa = dense[a], rest[a], totals[a], rest_totals[a], present[a]
            for b in range(a + 1, k):
                if check and (pa & present[b]).bit_count() < need:  # ``measurable``, inlined
                    continue
                den = sqrt(ta * totals[b])
                r_full = sum(map(mul, da, dense[b])) / den if den > _TINY else 0.0
                full.append(r_full)
                if same:
                    robust.append(min(r_full, 0.0) if few_eps else r_full)
                    continue
                d = sqrt(rta * rest_totals[b])
                robust.append(sum(map(mul, ra, rest[b])) / d if d > _TINY else 0.0)
        return full, robust

    def pair_index(self) -> list[tuple[int, int]]:
        """The (a, b) of each pair ``all_pairs`` gives, in its order."""
        k = len(self.dense)
        return [(a, b) for a in range(k) for b in range(a + 1, k) if self.measurable(a, b)]

    def result(
        self,
        scale: str,
        full: list[float],
        robust_pairs: list[float],
        units: int,
        clusters: int | None = None,
    ) -> Coupling | None:
        """The statistic over the pairs given; None where no pair was measurable. ``clusters``:
        the pairs are those between that many clusters of units (``z`` counts one per two)."""
        pairs = len(full)
        if not pairs:
            return None
        med_all = median(full)
        robust = min(med_all, median(robust_pairs))
        # Points left after the episodes left out (what the statistic stands on).
        support = max(0, self.points - (self.points * self.leave) // max(self.used_eps, 1))
        independent = pairs if clusters is None else min(pairs, clusters * (clusters - 1) // 2)
        if independent == 1:
            r = min(max(robust, -0.999999), 0.999999)
            z = math.atanh(r) * math.sqrt(max(support - 3, 0))
        else:
            z = robust * math.sqrt(independent * max(support - 1, 0) / _MEDIAN_EFFICIENCY)
        return Coupling(
            scale=scale,
            corr=robust,
            corr_all_episodes=med_all,
            z=z,
            points=self.points,
            units=units,
            pairs=pairs,
            episodes=self.used_eps,
            common_removed=self.removed,
            clusters=clusters,
        )


RowCache = dict[int, tuple[list[float | None] | None, int, int]]
"""Prepared rows by the id of their series (valid while those series live, and only where no
common component is masked): the linker tests one tenant's nodes against several clusters."""


def _prepare(
    units: Mapping[str, Sequence[float | None]],
    episodes: Sequence[int],
    min_points: int,
    common: Sequence[float | None] | None,
    leave_out: int = LEAVE_OUT,
    cache: RowCache | None = None,
    side_a: Callable[[str], bool] | None = None,
) -> _Prepared | None:
    length = len(episodes)
    mask = [False] * length if common is None else common_mask(list(common[:length]))
    use_cache = cache is not None and common is None
    masked = any(mask)
    prepared: list[list[float | None]] = []
    names: list[str] = []
    points = length
    present: list[int] = []
    for name, xs in units.items():
        hit = cache.get(id(xs)) if use_cache and cache is not None else None
        if hit is None:
            row = list(xs[:length]) + [None] * (length - len(xs))
            x = deviations([None if m else v for v, m in zip(row, mask, strict=True)] if masked else row)
            n = sum(1 for v in x if v is not None)
            w = _winsorised(x) if n >= min_points else None
            bits = 0 if w is None else _present_bits(w, n)
            if use_cache and cache is not None:
                cache[id(xs)] = (w, n, bits)
        else:
            w, n, bits = hit
        if w is None:
            continue
        prepared.append(w)
        names.append(name)
        present.append(bits)
        points = min(points, n)
    if len(prepared) < 2:
        return None
    removed = None if common is None else sum(mask) / max(1, length)
    # The robust pair correlation leaves out the ``LEAVE_OUT`` episodes of strongest agreement:
    # it must hold over the other episodes, so one or two shared excursions (a stall, an
    # aligned checkpoint) cannot make it.
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
    leave = min(leave_out, used_eps // 2)
    # The episodes left out are the group's, not each pair's: those in which the units agree
    # most in total (the sum over pairs of their cross products). Choosing per pair would leave
    # each pair's luckiest episodes out and bias every weak but real coupling below zero.
    # Between two sets of units (``side_a`` names one), only the cross pairs are tested, so the
    # agreement is theirs: an episode in which one side moved together on its own (B's nodes
    # are one job) says nothing about A, and leaving it out would leave the cross pairs with
    # the episodes of A's noise against B's quiet, a bias below zero.
    # Each unit weighs the same in it (its row scaled to unit length, as a correlation scales
    # it): otherwise the unit that moves most chooses the episodes, and a shared excursion of
    # units that are otherwise quiet (a fleet's common start) stays in.
    scaled: list[list[float]] = []
    for vals in dense:
        norm = math.sqrt(sum(map(operator.mul, vals, vals)))
        scaled.append([v / norm for v in vals] if norm > _TINY else vals)
    agreement = [0.0] * n_ep
    if side_a is not None:
        in_a = [side_a(n) for n in names]
        rows_a = [x for x, a in zip(scaled, in_a, strict=True) if a]
        rows_b = [x for x, a in zip(scaled, in_a, strict=True) if not a]
        if rows_a and rows_b:
            for i, (col_a, col_b) in enumerate(zip(zip(*rows_a, strict=True), zip(*rows_b, strict=True), strict=True)):
                agreement[idx[i]] += sum(col_a) * sum(col_b)
    else:
        for i, column in enumerate(zip(*scaled, strict=True)):
            tot = sum(column)
            agreement[idx[i]] += tot * tot - sum(map(operator.mul, column, column))
    top = set(sorted((e for e in occupied if agreement[e] > 0), key=lambda e: -agreement[e])[:leave])
    keep = [idx[i] not in top for i in range(length)]
    rest = dense
    if top:
        # Centred again on the points kept: a unit flat outside the episodes left out is then
        # zero there (no information), not a constant offset that every such unit shares.
        rest = []
        for x in prepared:
            kept = [v for v, k_ in zip(x, keep, strict=True) if k_ and v is not None]
            m = sum(kept) / len(kept) if kept else 0.0
            rest.append([v - m if k_ and v is not None else 0.0 for v, k_ in zip(x, keep, strict=True)])
    totals = [sum(map(operator.mul, x, x)) for x in dense]
    rest_totals = [sum(map(operator.mul, x, x)) for x in rest] if top else totals
    if top:
        # A unit that moved only in the episodes left out says nothing about the rest of the
        # history (a job at its power limit is flat between its checkpoints): it is left out,
        # and with fewer than two units left the data cannot tell (None), which is not zero.
        keep_units = [i for i, t in enumerate(rest_totals) if t > _TINY]
        if len(keep_units) < 2:
            return None
        if len(keep_units) < len(names):
            names = [names[i] for i in keep_units]
            dense = [dense[i] for i in keep_units]
            rest = [rest[i] for i in keep_units]
            totals = [totals[i] for i in keep_units]
            rest_totals = [rest_totals[i] for i in keep_units]
            present = [present[i] for i in keep_units]
    min_overlap = max(3, min_points // 2)
    aligned = all(b == present[0] for b in present)
    return _Prepared(
        names, dense, rest, totals, rest_totals, points, used_eps, leave, removed, present, min_overlap, aligned
    )


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
    p = _prepare(units, episodes, min_points, common)
    if p is None:
        return None
    full, robust_pairs = p.all_pairs()
    k = len(p.names)
    res = p.result(scale, full, robust_pairs, k)
    if res is not None and k >= 3 and any(r >= CLUSTER_CORR for r in full):
        index = p.pair_index()
        cluster = _clusters(k, index, full)
        if cluster is not None:
            count = len(set(cluster))
            cross = [i for i, (a, b) in enumerate(index) if cluster[a] != cluster[b]]
            apart = p.result(scale, [full[i] for i in cross], [robust_pairs[i] for i in cross], k, clusters=count)
            res = replace(res, between_clusters=apart)
    return res


def _clusters(k: int, index: Sequence[tuple[int, int]], full: Sequence[float]) -> list[int] | None:
    """Cluster of each of ``k`` units, joining pairs at ``CLUSTER_CORR`` or more; None where
    one cluster holds half the units or more (the group's typical unit is in one job: its
    pairs are the evidence) or where no pair joined."""
    parent = list(range(k))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    joined = False
    for (a, b), r in zip(index, full, strict=True):
        if r >= CLUSTER_CORR:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[ra] = rb
                joined = True
    if not joined:
        return None
    roots = [root(i) for i in range(k)]
    sizes: dict[int, int] = {}
    for r in roots:
        sizes[r] = sizes.get(r, 0) + 1
    if 2 * max(sizes.values()) >= k:
        return None
    return roots


@dataclass(frozen=True)
class Between:
    """Are two sets of units one job? The coupling across them, and within each for scale."""

    cross: Coupling
    within: float | None
    """Median robust pair correlation within the sides (pairs inside A and inside B), None
    when neither side has two units: what one job's units show among themselves."""

    def fired(self, min_corr: float, min_z: float, min_ratio: float) -> bool:
        """Coupled across, and about as much across as within (unrelated jobs are coupled
        within and not across; one job's accounts are coupled both ways)."""
        if not self.cross.fired(min_corr, min_z):
            return False
        return self.within is None or self.cross.corr >= min_ratio * self.within

    def to_json(self) -> dict[str, object]:
        return {**self.cross.to_json(), "within_corr": None if self.within is None else round(self.within, 3)}


def measure_between(
    a: Mapping[str, Sequence[float | None]],
    b: Mapping[str, Sequence[float | None]],
    episodes: Sequence[int],
    *,
    scale: str,
    min_points: int,
    common: Sequence[float | None] | None = None,
    cache: RowCache | None = None,
) -> Between | None:
    """Coupling of the node pairs that straddle ``a`` and ``b``."""
    units = {("a", n): v for n, v in a.items()} | {("b", n): v for n, v in b.items()}
    p = _prepare(
        {f"{s}:{n}": v for (s, n), v in units.items()},
        episodes,
        min_points,
        common,
        LEAVE_OUT,
        cache,
        side_a=lambda name: name.startswith("a:"),
    )
    if p is None:
        return None
    side = [n.split(":", 1)[0] for n in p.names]
    k = len(side)
    full: list[float] = []
    robust_pairs: list[float] = []
    within: list[float] = []
    check = not p.aligned
    for i in range(k):
        for j in range(i + 1, k):
            if check and not p.measurable(i, j):
                continue
            r_full, r_rest = p.pair(i, j)
            if side[i] == side[j]:
                within.append(min(r_full, r_rest))
            else:
                full.append(r_full)
                robust_pairs.append(r_rest)
    cross = p.result(scale, full, robust_pairs, k)
    if cross is None:
        return None
    return Between(cross, median(within) if within else None)


__all__ = [
    "CLUSTER_CORR",
    "Between",
    "Coupling",
    "LEAVE_OUT",
    "MIN_COMMON_TENANTS",
    "changes",
    "common_component",
    "deviations",
    "typical_move",
    "measure",
    "measure_between",
    "median",
]
