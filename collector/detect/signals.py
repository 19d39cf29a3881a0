"""Per-GPU and per-group signals: training shape of one GPU window, and node synchrony.

Kept cheap on purpose: ``classify`` is called for every GPU of every window (100,000 GPUs
per window on a large site), so it is a handful of integer comparisons and, only for GPUs
that pass the level checks, one pass over the window's few utilisation buckets.
"""

from __future__ import annotations

import heapq
import logging
import math
import operator
import zlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from attestation.statement import GpuWindow
from collector.detect.config import DetectConfig

if TYPE_CHECKING:
    from collector.detect.usage import GpuLoad

_logger = logging.getLogger(__name__)

# Classes of one GPU in one window.
NOT_TRAINING = 0
WEAK = 1  # throttled-training shape: counts only when the group's nodes are in sync
STRONG = 2  # training shape on its own

# Pooled variance below this (power fraction squared) is a flat line: no correlation.
_MIN_VARIANCE = 1e-8


def classify(g: GpuWindow, cfg: DetectConfig) -> int:
    """NOT_TRAINING, WEAK or STRONG from the signals present; absent signals are unknown."""
    s = g.series
    return classify_values(
        g.util_mean_permille,
        g.power_mean_mw,
        g.power_limit_mw,
        g.sm_active_mean_permille,
        None if s is None else s.util_permille,
        cfg,
    )


def classify_values(
    u: int | None,
    p: int | None,
    lim: int | None,
    sm: int | None,
    util_buckets: Sequence[int | None] | None,
    cfg: DetectConfig,
) -> int:
    """``classify`` on a GPU window's values: mean utilisation, mean power, power limit, mean
    SM activity and the per-bucket utilisation (None: no series)."""
    strong = True
    known = False
    if u is not None:
        if u < cfg.weak_util_permille:
            return NOT_TRAINING
        known = True
        if u < cfg.strong_util_permille:
            strong = False
    if p is not None and lim:
        pf = p * 1000 // lim
        if pf < cfg.weak_power_permille:
            return NOT_TRAINING
        known = True
        if pf < cfg.strong_power_permille:
            strong = False
    if not known:
        return NOT_TRAINING
    if sm is not None and sm < cfg.min_sm_active_permille:
        return NOT_TRAINING
    if util_buckets is not None and u is not None and u > 0:
        half = u // 2
        n = busy = 0
        for b in util_buckets:
            if b is not None:
                n += 1
                if b >= half:
                    busy += 1
        if n >= 3 and busy * 1000 < cfg.steady_bucket_fraction_permille * n:
            return NOT_TRAINING
    return STRONG if strong else WEAK


def node_series(gpus: Sequence[GpuLoad]) -> list[float | None] | None:
    """One node's per-bucket load for a group, mean-removed within the window.

    Load is power / power limit where both are known (the signal the MLPerf logs show moving
    together across a job's nodes), else utilisation. None when no GPU has a series.
    """
    sums: list[float] = []
    counts: list[int] = []
    for g in gpus:
        s = g.series
        if s is None:
            continue
        lim = g.power_limit_mw
        vals: Sequence[int | None] = s.power_mw
        # "Any power reading?" as count() (in C): any() over a generator costs more per GPU.
        if lim and vals.count(None) < len(vals):
            scale = 1.0 / lim
        else:
            vals, scale = s.util_permille, 1.0 / 1000
        if len(sums) < len(vals):
            sums.extend([0.0] * (len(vals) - len(sums)))
            counts.extend([0] * (len(vals) - len(counts)))
        for i, v in enumerate(vals):
            if v is not None:
                sums[i] += v * scale
                counts[i] += 1
    if not sums:
        return None
    means: list[float | None] = [sums[i] / counts[i] if counts[i] else None for i in range(len(sums))]
    present = [m for m in means if m is not None]
    if len(present) < 2:
        return None
    centre = sum(present) / len(present)
    return [None if m is None else m - centre for m in means]


COARSE_MAX_SAMPLES = 1
"""A node whose window holds at most this many readings (samples a window apart) is aligned
on its sampling phase (``sample_lag``)."""


def sample_lag(gpus: Sequence[GpuLoad], window_s: float) -> float | None:
    """How far before the window's end a coarsely sampled node's window ends, in seconds: from
    the last bucket holding a sample of any of ``gpus`` to the last bucket of the window (0 up
    to a window less a bucket). 0 where the window holds more than ``COARSE_MAX_SAMPLES``
    readings; None where no GPU has a series with a sample.

    Each node's agent samples at its own phase of the interval, and a window's mean (or its
    energy counter's change, carried from the last reading of the window before) ends at that
    node's last reading. With one reading a window, two nodes' "same" window can be most of a
    window apart, and a shared fluctuation then gives their window-to-window changes a
    correlation near zero or below; ``History`` moves such points to the window's end. With
    two or more the offset is at most half a window: on real MLPerf power read every 30 s,
    moving the points changed nothing (docs/detection.md), and interpolating smooths.
    """
    last = -1
    length = 0
    for g in gpus:
        s = g.series
        if s is None:
            continue
        for vals in (s.power_mw, s.util_permille):
            length = max(length, len(vals))
            n = len(vals) - vals.count(None)
            if n > COARSE_MAX_SAMPLES:
                return 0.0  # read more often than that: not moved, whatever the other GPUs say
            if n == 0:
                continue
            for i in range(len(vals) - 1, last, -1):
                if vals[i] is not None:
                    last = i
                    break
    if last < 0 or not length:
        return None
    return (length - 1 - last) * window_s / length


_CRC: dict[str, tuple[int, str]] = {}


def _crc_key(n: str) -> tuple[int, str]:
    key = _CRC.get(n)
    if key is None:
        if len(_CRC) > 1_000_000:  # node ids are few; this only bounds a pathological stream
            _CRC.clear()
        key = _CRC[n] = (zlib.crc32(n.encode()), n)
    return key


def stable_sample(nodes: Iterable[str], k: int) -> list[str]:
    """The ``k`` nodes with the smallest CRC-32 of their id: the same nodes window after window."""
    return heapq.nsmallest(k, nodes, key=_crc_key)


def pooled_correlation(
    history: Sequence[dict[str, list[float | None]]], nodes: Sequence[str], min_points: int
) -> tuple[float | None, int]:
    """Mean zero-lag Pearson correlation over node pairs, pooling the windows in ``history``.

    Each window's series is already mean-removed, so slow drifts (diurnal load, ramp-up) do
    not pass for synchrony. A bucket a node lacks counts as its mean (zero), which shrinks a
    pair's correlation towards zero rather than inventing agreement. Each node's pooled
    vector is normalised once, so a pair costs one dot product. Returns (mean correlation,
    or None when no pair had ``min_points`` and variance; number of pairs that counted).
    """
    lengths = [max((len(v) for v in win.values()), default=0) for win in history]
    unit: list[list[float]] = []
    for n in nodes:
        vec: list[float] = []
        points = 0
        for win, length in zip(history, lengths, strict=True):
            xs = win.get(n)
            if xs is None:
                vec.extend([0.0] * length)
                continue
            for x in xs:
                if x is None:
                    vec.append(0.0)
                else:
                    vec.append(x)
                    points += 1
            vec.extend([0.0] * (length - len(xs)))
        ss = sum(x * x for x in vec)
        if points < min_points or ss < _MIN_VARIANCE * points:
            continue
        scale = 1.0 / math.sqrt(ss)
        unit.append([x * scale for x in vec])
    total = 0.0
    pairs = 0
    for i, a in enumerate(unit):
        for b in unit[i + 1 :]:
            total += sum(map(operator.mul, a, b))
            pairs += 1
    return (total / pairs if pairs else None), pairs
