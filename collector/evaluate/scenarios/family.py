"""The scenario family: which sites to build, along which axes, and what is held out.

Each scenario is a small site (60-120 min) with a few positives and a few negatives side by
side on disjoint nodes, so that a site-wide shock hits several tenants at once. Every
scenario records its axis values:

* ``interval``: the trace's sample spacing, 1, 10, 20, 30 or 60 s (each node at its own
  phase, with jitter). 1-s sites are few and small: windowing costs ~20x more per minute.
  Since the tenth state also 15 and 45 s (``ODD_QUICK``, ``ODD_FULL``): a Prometheus scrape
  every 15 s, and an interval that does not divide the window, so that windows hold one
  reading or two. Those sites are drawn from streams of their own after the others.
* ``fields``: the telemetry delivered (``masks.MASKS``), applied to the windows; every site
  is scored with ``all`` and with two (quick) or three (full) other masks in rotation (the
  same trace under each mask, so the comparison is paired).
* ``model``: A100, H100, H200, B200 (eight GPUs a node) or GB200 (four: an NVL72 tray)
  (``physics.MODELS``), one per site.
* ``shock``: none, storage_stall, power_cap, aligned_checkpoints, fabric (``shocks``).
* ``loss``: none or outages: agents down for minutes, GPUs left unread (``loss``), applied
  after the field mask. Drawn from a stream of its own, so adding it moved no other draw.
* ``shape``: the job's shape family (``training.SHAPES`` for positives,
  ``negatives.NEGATIVES`` for negatives).

HELD OUT (do not look at these results while tuning the detector): the shape families
``rl`` (RL post-training) and ``moe`` (mixture of experts) appear only in sites with
``HELD_OUT_SEEDS``; those sites (every job on them, every shape) are reported apart as
``held_out``. Tuning sites use ``TUNING_SEEDS`` and never contain a held-out family.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from collector.evaluate.data import PublicData
from collector.evaluate.scenarios import negatives as neg
from collector.evaluate.scenarios.loss import LOSSES
from collector.evaluate.scenarios.masks import MASKS
from collector.evaluate.scenarios.physics import MODEL_KEYS, MODELS, make_node
from collector.evaluate.scenarios.shocks import SHOCKS, make_shocks
from collector.evaluate.scenarios.site import NamePool, Site, rid, tenant_entry
from collector.evaluate.scenarios.training import SHAPES, TrainingRun, job_minutes

HELD_OUT_FAMILIES: tuple[str, ...] = ("rl", "moe")
TUNING_SEEDS = range(1, 1000)
HELD_OUT_SEEDS = range(1001, 2000)
INTERVALS: tuple[int, ...] = (1, 10, 15, 20, 30, 45, 60)
AXES: tuple[str, ...] = ("interval", "fields", "model", "shock", "loss", "shape")
SITE_EPOCH = 1_772_409_600  # 2026-03-02T00:00:00Z


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    interval_s: int
    model: str
    shock: str
    minutes: int
    positives: tuple[tuple[str, int, str], ...]  # (shape, GPUs, tenancy: opaque | absent | transparent)
    negatives: tuple[tuple[str, int], ...]  # (kind, GPUs)
    masks: tuple[str, ...] = MASKS
    held_out: bool = False
    loss: str = "none"
    axes: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def node_minutes(self) -> int:
        gpn = MODELS[self.model].gpus_per_node
        nodes = sum(g // gpn + (max(1, g // (4 * gpn)) if s == "restarts" else 0) for s, g, _ in self.positives)
        nodes += sum(g // gpn for _, g in self.negatives)
        return nodes * self.minutes


def _cycle(rng: random.Random, values: tuple[str, ...] | tuple[int, ...], n: int) -> list[object]:
    out: list[object] = []
    while len(out) < n:
        block = list(values)
        rng.shuffle(block)
        out += block
    return out[:n]


@dataclass(frozen=True)
class Tier:
    interval_s: int
    tuning: int
    held_out: int
    minutes: int
    max_gpus: int
    positives: int
    negatives: int
    masks: int = 2  # masks besides "all"


QUICK: tuple[Tier, ...] = (
    Tier(1, 1, 0, 60, 64, 2, 1),
    Tier(10, 2, 1, 60, 256, 3, 2),
    Tier(20, 2, 1, 75, 512, 3, 2),
    Tier(30, 2, 1, 75, 512, 3, 2),
    Tier(60, 2, 1, 75, 512, 3, 2),
)
ODD_QUICK: tuple[Tier, ...] = (
    Tier(15, 1, 0, 75, 512, 3, 2),
    Tier(45, 1, 0, 75, 512, 3, 2),
)
FULL: tuple[Tier, ...] = (
    Tier(1, 2, 1, 60, 128, 2, 1, 3),
    Tier(10, 5, 2, 75, 512, 3, 3, 3),
    Tier(20, 5, 2, 105, 1024, 4, 3, 3),
    Tier(30, 5, 2, 105, 1024, 4, 3, 3),
    Tier(60, 5, 2, 105, 1024, 4, 3, 3),
)
ODD_FULL: tuple[Tier, ...] = (
    Tier(15, 2, 1, 105, 1024, 4, 3, 3),
    Tier(45, 2, 1, 105, 1024, 4, 3, 3),
)
_NEG_NODES = {
    "inference_multi": (10, 24),
    "fleet_random": (8, 20),
    "fleet_same_minute": (8, 20),
    "fleet_back_to_back": (8, 16),
    "hp_sweep": (10, 20),
    "batch_inference": (38, 42),
    "itp_small": (6, 12),
}


def plan(quick: bool) -> list[Scenario]:
    """The scenarios of the quick or the full evaluation (deterministic)."""
    rng_seed = 20260302 if quick else 20260303
    seeds = {False: iter(TUNING_SEEDS), True: iter(HELD_OUT_SEEDS)}
    out = _plan_tiers(QUICK if quick else FULL, random.Random(rng_seed), random.Random(rng_seed + 1), seeds)
    # Sample intervals that do not divide the window came later: their sites are drawn from
    # streams of their own, after the others, so that adding them moved no other draw.
    out += _plan_tiers(
        ODD_QUICK if quick else ODD_FULL, random.Random(rng_seed + 2), random.Random(rng_seed + 3), seeds
    )
    return out


def _plan_tiers(
    tiers: tuple[Tier, ...],
    rng: random.Random,
    loss_rng: random.Random,
    seeds: dict[bool, Iterator[int]],
) -> list[Scenario]:
    slots = [(t, h) for t in tiers for h in [False] * t.tuning + [True] * t.held_out]
    n = len(slots)
    models = _cycle(rng, MODEL_KEYS, n)
    shocks = _cycle(rng, SHOCKS, n)
    tune_shapes = tuple(s for s in SHAPES if s not in HELD_OUT_FAMILIES)
    pos_t = _cycle(rng, tune_shapes, sum(t.positives for t, h in slots if not h))
    pos_h = list(HELD_OUT_FAMILIES) * 2 + _cycle(rng, SHAPES, sum(t.positives for t, h in slots if h))
    neg_kinds = _cycle(rng, tuple(neg.NEGATIVES), sum(t.negatives for t, _ in slots))
    other_masks = _cycle(rng, MASKS[1:], sum(t.masks for t, _ in slots) + len(MASKS))
    # A stream of its own: the loss axis came later, and drawing it from ``rng`` would have
    # moved every draw after it (comparisons with earlier runs would not be paired).
    losses = _cycle(loss_rng, LOSSES, n)
    out: list[Scenario] = []
    pi = 0
    for c, (tier, held) in enumerate(slots):
        seed = next(seeds[held])
        positives = []
        for x in range(tier.positives):
            shape = str((pos_h if held else pos_t).pop(0))
            sizes = [g for g in (64, 128, 256, 512) if g <= tier.max_gpus]
            gpus = sizes[(c + x) % len(sizes)]
            if shape == "low_slow":
                gpus = 128
            if tier.max_gpus >= 1024 and x == 0 and c % 4 == 0:
                gpus = 1024
            pi += 1
            tenancy = "transparent" if pi % 6 == 0 and shape != "multi_account" else ("opaque", "absent")[pi % 2]
            positives.append((shape, gpus, tenancy))
        negs = []
        for _ in range(tier.negatives):
            kind = str(neg_kinds.pop(0))
            if tier.interval_s == 1 and kind == "batch_inference":
                kind = "fleet_same_minute"
            lo, hi = _NEG_NODES[kind]
            if tier.interval_s == 1:
                lo, hi = 4, 6
            negs.append((kind, rng.randint(lo, hi) * MODELS[str(models[c])].gpus_per_node))
        masks: list[str] = ["all"]
        while len(masks) < 1 + tier.masks:
            m = str(other_masks.pop(0))
            if m in masks:
                other_masks.append(m)
            else:
                masks.append(m)
        sc = Scenario(
            name=f"{'h' if held else 't'}{seed:04d}-{tier.interval_s}s",
            seed=seed,
            interval_s=tier.interval_s,
            model=str(models[c]),
            shock=str(shocks[c]),
            minutes=tier.minutes,
            positives=tuple(positives),
            negatives=tuple(negs),
            masks=tuple(masks),
            held_out=held,
            loss=str(losses[c]),
        )
        out.append(sc)
    return out


def build(sc: Scenario, data: PublicData) -> Site:
    """The site of a scenario: nodes, components, shocks, truth and tenants file."""
    rng = random.Random(sc.seed * 1_000_003 + sc.interval_s)
    model = MODELS[sc.model]
    start = float(SITE_EPOCH + rng.randrange(0, 24 * 60) * 60 + rng.randrange(60))
    dur = sc.minutes * 60
    shocks = make_shocks(rng, sc.shock, start, dur)
    pool = NamePool(rng, rid(rng, "", 16))
    site = Site(
        sc.name,
        sc.seed,
        start,
        dur,
        float(sc.interval_s),
        model,
        shocks,
        axes={"interval": f"{sc.interval_s}s", "model": sc.model, "shock": sc.shock, "loss": sc.loss},
    )

    def nodes(count: int) -> list:  # type: ignore[type-arg]
        return [make_node(rng, name, model, sc.interval_s) for name in pool.take(count)]

    def tenant(kind: str) -> str:
        tid = rid(rng, "t-")
        site.tenants.append(tenant_entry(rng, tid, kind))
        return tid

    multi = data.multi_node_sources()
    for shape, gpus, tenancy in sc.positives:
        n = gpus // model.gpus_per_node
        extra = max(1, n // 4) if shape == "restarts" else 0
        k = rng.randint(2, min(8, n)) if shape == "multi_account" else 1
        accounts = [tenant(tenancy) for _ in range(k)]
        a, b = job_minutes(rng, sc.minutes)
        run = TrainingRun(
            rng,
            shape,
            nodes(n + extra),
            accounts,
            a,
            b,
            shocks,
            start,
            power=rng.choice(multi) if multi else None,
            transparent=tenancy == "transparent",
            gpus=gpus,
        )
        site.components.append(run)
    for kind, gpus in sc.negatives:
        n = gpus // model.gpus_per_node
        if kind == "inference_multi":
            comp = neg.inference_multi(rng, nodes(n), tenant("opaque"), dur, shocks, start)
        elif kind == "batch_inference":
            comp = neg.batch_inference(rng, nodes(n), tenant("opaque"), dur, shocks, start)
        elif kind == "itp_small":
            accts = [tenant(rng.choice(("opaque", "absent", "transparent"))) for _ in range(rng.randint(6, 14))]
            comp = neg.itp_small(rng, nodes(n), accts, dur, shocks, start, list(data.itp))
        else:
            comp = neg.fleet(
                rng,
                kind,
                nodes(n),
                tenant(rng.choice(("opaque", "absent"))),
                dur,
                shocks,
                start,
                [j for j in data.itp if j.gpus == model.gpus_per_node],
            )
        site.components.append(comp)
    rng.shuffle(site.components)  # no meaning in the order of nodes either
    return site
