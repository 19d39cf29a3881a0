"""Linking tenant accounts that run one job.

Per window, the tenants with at least ``link_min_gpus`` training-shaped GPUs (or a whole node
of fewer: ``TenantWindow.sizeable``), the largest ``link_max_tenants`` of them, are clustered
greedily, largest first: a tenant joins the cluster whose mean series it is coupled with
(collector/detect/coupling.py, two units: the tenant and the cluster's mean) at either time
scale, without the episodes in which they agree most. Each
member of a cluster is then tested again against the rest of it with the common component
of the tenants *outside* the cluster removed: what the other tenants of the site share in
those minutes is not evidence of one job. A pair that clusters in ``link_confirm_windows``
more windows than it does not is linked; a group is a connected set of linked tenants. A
link not re-confirmed for ``link_ttl_s`` lapses unless a run of its group is still going.
Nothing keys on names.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.detect.config import DetectConfig
from collector.detect.coupling import Between, RowCache, changes, measure_between
from collector.detect.history import SCALE_ACROSS, SCALE_WITHIN, History
from collector.detect.signals import stable_sample
from collector.detect.usage import TenantWindow

_logger = logging.getLogger(__name__)
_MS = 1000


def group_of(tenant: str, parent: dict[str, str]) -> str:
    """The representative of ``tenant``'s linked group (union-find root, path-halving)."""
    while True:
        p = parent.get(tenant, tenant)
        if p == tenant:
            return tenant
        gp = parent.get(p, p)
        parent[tenant] = gp
        tenant = gp


def _unit(vec: Sequence[float | None]) -> list[float] | None:
    present = [v for v in vec if v is not None]
    if len(present) < 3:
        return None
    m = sum(present) / len(present)
    xs = [0.0 if v is None else v - m for v in vec]
    ss = sum(x * x for x in xs)
    if ss <= 1e-12:
        return None
    k = 1.0 / math.sqrt(ss)
    return [x * k for x in xs]


@dataclass
class _Scale:
    name: str
    starts: list[int]
    episodes: list[int]
    min_points: int
    min_corr: float
    common: Callable[[set[str]], Sequence[float | None] | None]


@dataclass
class _Cluster:
    members: list[str]
    sums: dict[str, list[float]] = field(default_factory=dict)  # scale -> per-point sums
    counts: dict[str, list[int]] = field(default_factory=dict)
    units: dict[str, list[float] | None] = field(default_factory=dict)

    def add(self, scale: str, vec: Sequence[float | None]) -> None:
        sums = self.sums.setdefault(scale, [0.0] * len(vec))
        counts = self.counts.setdefault(scale, [0] * len(vec))
        for i, v in enumerate(vec):
            if v is not None:
                sums[i] += v
                counts[i] += 1
        self.units[scale] = _unit(self.mean(scale))

    def mean(self, scale: str) -> list[float | None]:
        return [s / c if c else None for s, c in zip(self.sums[scale], self.counts[scale], strict=True)]


class Linker:
    def __init__(self, config: DetectConfig) -> None:
        self.config = config
        self.agree: dict[tuple[str, str], int] = {}
        self.links: dict[tuple[str, str], int] = {}  # pair -> last window start it was confirmed
        self.evidence: dict[tuple[str, str], dict[str, Any]] = {}  # pair -> the test that linked it
        self.cluster_of: dict[str, frozenset[str]] = {}  # this window: tenants that move together
        self.candidates: list[str] = []

    def _scales(self, hist: History) -> list[_Scale]:
        cfg = self.config
        across = hist.across_starts(cfg.link_coarse_history_windows)
        within = hist.within_starts(cfg.link_history_windows)
        lengths = [
            max((len(v) for per in hist.tseries.values() if (v := per.get(st)) is not None), default=0) for st in within
        ]
        eps_within = [i for i, n in enumerate(lengths) for _ in range(n)]
        out = [
            _Scale(
                SCALE_ACROSS,
                across,
                hist.episodes_across(across),
                cfg.coupling_min_windows,
                cfg.link_coarse_min_corr,
                lambda ex: hist.common_across(across, ex),
            )
        ]
        if eps_within:
            out.append(
                _Scale(
                    SCALE_WITHIN,
                    within,
                    eps_within,
                    cfg.link_min_points,
                    cfg.link_min_corr,
                    lambda ex: hist.common_within(within, lengths, ex),
                )
            )
        self._lengths = lengths
        return out

    def _vector(self, hist: History, t: str, sc: _Scale) -> list[float | None]:
        if sc.name == SCALE_ACROSS:
            return changes(hist.tenant_levels(t, sc.starts))
        return hist.tenant_buckets(t, sc.starts, self._lengths)

    def update(
        self, s: int, tws: dict[str, TenantWindow], hist: History, in_live_run: Callable[[str, str], bool]
    ) -> None:
        """Test which tenants move as one job this window; confirm links that keep testing so."""
        cfg = self.config
        self._hist, self._s = hist, s
        self._units: dict[tuple[str, str], dict[str, list[float | None]]] = {}
        self._rows: dict[str, RowCache] = {}  # prepared node rows per scale, this window
        cands = [
            t for t, tw in tws.items() if tw.candidate_gpus() >= tw.sizeable(cfg.link_min_gpus) and t in hist.tlevel
        ]
        cands.sort(key=lambda t: (-tws[t].candidate_gpus(), t))
        cands = cands[: max(0, cfg.link_max_tenants)]
        self.candidates = cands  # the tenants that could be linked this window (trail.py keeps them)
        together: set[tuple[str, str]] = set()
        self.cluster_of = {}
        if len(cands) >= 2:
            scales = self._scales(hist)
            vecs = {t: {sc.name: self._vector(hist, t, sc) for sc in scales} for t in cands}
            # Pass 1: who moves with whom, nothing removed (robust to a shared episode or two).
            clusters = self._cluster(cands, vecs, scales, None)
            for cl in clusters:
                for t in cl.members:
                    self.cluster_of[t] = frozenset(cl.members)
            # Pass 2: each member against the rest of its cluster, with the common component of
            # the tenants outside the cluster removed (a shock they share too is not one job).
            for cl in clusters:
                members = list(cl.members)
                if len(members) < 2:
                    continue
                kept = self._verify(members, vecs, scales)
                for i, a in enumerate(kept):
                    for b in kept[i + 1 :]:
                        together.add((a, b) if a < b else (b, a))
        # A pair's count goes up in a window that tests it as one job and down in one that does
        # not: a link needs ``link_confirm_windows`` more agreeing windows than disagreeing ones,
        # so a statistic near its bar does not reset the count every other window.
        for pair in list(self.agree):
            if pair not in together:
                self.agree[pair] -= 1
                if self.agree[pair] <= 0:
                    del self.agree[pair]
        for pair in together:
            k = self.agree[pair] = self.agree.get(pair, 0) + 1
            if k >= cfg.link_confirm_windows:
                if pair not in self.links:
                    e = self.evidence[pair]
                    _logger.info(
                        "linked tenants %s and %s: r=%.2f over %d points (z=%.1f, %s)",
                        *pair,
                        e["corr"],
                        e["points"],
                        e["z"],
                        e["scale"],
                    )
                self.links[pair] = s
        ttl_ms = cfg.link_ttl_s * _MS
        for pair, last in list(self.links.items()):
            if s - last > ttl_ms and not in_live_run(*pair):
                del self.links[pair]
                self.evidence.pop(pair, None)

    def _node_units(self, tenants: list[str], sc: _Scale) -> dict[str, list[float | None]]:
        """Node series of ``tenants`` at scale ``sc`` (a stable sample), built once per window each."""
        k = max(2, self.config.link_sample_nodes)
        merged: dict[str, list[float | None]] = {}
        for t in tenants:
            key = (t, sc.name)
            units = self._units.get(key)
            if units is None:
                nodes = self._hist.sample_nodes(self._s, [t], k)
                if sc.name == SCALE_ACROSS:
                    units = self._hist.node_changes([t], nodes, sc.starts)
                else:
                    units = self._hist.node_buckets([t], nodes, sc.starts, self._lengths)
                self._units[key] = units
            for n, v in units.items():
                merged.setdefault(n, v)
        if len(merged) <= k:
            return merged
        return {n: merged[n] for n in stable_sample(merged, k)}

    def _test(self, t: str, others: list[str], scales: list[_Scale], exclude: set[str] | None) -> Between | None:
        """The strongest scale at which ``t``'s nodes are coupled with the nodes of ``others``
        (about as much as within each side), or None."""
        cfg = self.config
        best: Between | None = None
        for sc in scales:
            ua = self._node_units([t], sc)
            ub = self._node_units(others, sc)
            if not ua or not ub:
                continue
            b = measure_between(
                ua,
                ub,
                sc.episodes,
                scale=sc.name,
                min_points=sc.min_points,
                common=None if exclude is None else sc.common(exclude),
                cache=self._rows.setdefault(sc.name, {}),
            )
            if b is None or not b.fired(sc.min_corr, cfg.link_min_z, cfg.link_min_ratio):
                continue
            if best is None or b.cross.z > best.cross.z:
                best = b
        return best

    def _cluster(
        self,
        cands: list[str],
        vecs: dict[str, dict[str, list[float | None]]],
        scales: list[_Scale],
        exclude: set[str] | None,
    ) -> list[_Cluster]:
        clusters: list[_Cluster] = []
        need = {sc.name: sc.min_points for sc in scales}
        for t in cands:
            # A scale where the tenant has too few points cannot link it: skip it in the screen.
            units = {
                name: (_unit(v) if sum(1 for x in v if x is not None) >= need[name] else None)
                for name, v in vecs[t].items()
            }
            best: tuple[float, _Cluster] | None = None
            # Screen with one dot product per scale (missing points as the mean); test exactly
            # only the clusters that screen best (a few per tenant: bounds the cost per window).
            screened: list[tuple[float, int, _Cluster]] = []
            for i, cl in enumerate(clusters):
                score = max(
                    (
                        sum(map(operator.mul, tu, cu))
                        for sc in scales
                        if (tu := units[sc.name]) is not None and (cu := cl.units.get(sc.name)) is not None
                    ),
                    default=-1.0,
                )
                if score >= self.config.link_screen_corr:
                    screened.append((score, i, cl))
            screened.sort(key=lambda x: (-x[0], x[1]))
            for _, _, cl in screened[: self.config.link_max_tests_per_tenant]:
                c = self._test(t, cl.members, scales, exclude)
                if c is not None and (best is None or c.cross.z > best[0]):
                    best = (c.cross.z, cl)
            if best is None:
                cl = _Cluster([t])
                clusters.append(cl)
            else:
                cl = best[1]
                cl.members.append(t)
            for sc in scales:
                cl.add(sc.name, vecs[t][sc.name])
        return clusters

    def _verify(
        self, members: list[str], vecs: dict[str, dict[str, list[float | None]]], scales: list[_Scale]
    ) -> list[str]:
        """Members still coupled with the rest of the cluster once the outside's common part is removed."""
        exclude = set(members)
        kept = list(members)
        changed = True
        while changed and len(kept) >= 2:
            changed = False
            for t in list(kept):
                rest = [m for m in kept if m != t]
                c = self._test(t, rest, scales, exclude)
                if c is None:
                    kept.remove(t)
                    changed = True
                    break
                windows = len(next(sc.starts for sc in scales if sc.name == c.cross.scale))
                for m in rest:
                    pair = (m, t) if m < t else (t, m)
                    self.evidence[pair] = {**c.to_json(), "windows": windows}
        return kept if len(kept) >= 2 else []

    def pending(self, tenants: Sequence[str]) -> set[str]:
        """The tenants outside ``tenants`` whose link with one of them is being confirmed
        (tested as one job, not yet linked)."""
        ts = set(tenants)
        out: set[str] = set()
        for a, b in self.agree:
            if (a in ts) != (b in ts) and (a, b) not in self.links:
                out.add(b if a in ts else a)
        return out

    def groups(self, tenants: Sequence[str]) -> dict[str, list[str]]:
        """Group key -> sorted members, for every tenant given (a lone tenant is its own group)."""
        parent: dict[str, str] = {}
        for a, b in self.links:
            ra, rb = group_of(a, parent), group_of(b, parent)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        members: dict[str, list[str]] = {}
        for t in set(parent) | set(tenants):
            members.setdefault(group_of(t, parent), []).append(t)
        out: dict[str, list[str]] = {}
        for t in sorted(tenants):
            ms = sorted(members[group_of(t, parent)])
            key = t if len(ms) == 1 else "+".join(ms)
            out.setdefault(key, ms)
        return out


__all__ = ["Linker", "group_of"]
