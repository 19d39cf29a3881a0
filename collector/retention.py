"""Retention: statements older than a cutoff age into per-tenant, per-GPU hourly aggregates.

What is dropped: a statement's payload and signatures. What stays: its row (key, seq,
node, window, digest), so the chain and duplicate detection are unaffected, and its log
leaf (SHA-256 of the PAE), so the Merkle tree, every signed checkpoint and the inclusion
proofs of the remaining statements stay valid. A vendor can no longer be shown an aged
statement itself, only the aggregate and the leaf; export the statements a vendor needs
before they age.

Each chunk is aggregated from the verified bytes it drops and written in one transaction
with them (``Store.prune_statements``), so an aggregate is never counted twice, even when
a run is interrupted or two runs overlap.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from attestation.errors import SchemaError
from attestation.statement import UsageWindow, parse_statement
from collector.errors import StoreConflictError
from collector.store.base import StatementRecord, Store, UsageAggregate

_logger = logging.getLogger(__name__)

HOUR_MS = 3_600_000
DEFAULT_CHUNK = 1000
_RETRIES = 3


@dataclass(frozen=True)
class RetentionReport:
    statements: int  # payloads dropped
    aggregate_rows: int  # (hour, GPU, tenant) rows added to or updated in a chunk


def aggregate(windows: Iterable[UsageWindow]) -> list[UsageAggregate]:
    """Hourly per-GPU, per-tenant sums of ``windows`` (see UsageAggregate)."""
    acc: dict[tuple[int, str, str], list[int]] = {}
    nodes: dict[tuple[int, str, str], str] = {}
    for w in windows:
        hour = w.start_ms - w.start_ms % HOUR_MS
        window_ms = w.end_ms - w.start_ms
        for g in w.gpus:
            energy = (
                g.energy_end_mj - g.energy_start_mj
                if g.energy_start_mj is not None and g.energy_end_mj is not None
                else 0
            )
            util = g.util_mean_permille or 0
            shares = [(wl.tenant, wl.share_permille) for wl in g.workloads] or [("", 1000)]
            idle = 1000 - sum(s for _, s in shares)
            if idle > 0:  # split_method mig_slices: the slices no workload used are idle time
                shares.append(("", idle))
            total = sum(s for _, s in shares) or 1
            for tenant, share in shares:
                key = (hour, g.uuid, tenant)
                row = acc.setdefault(key, [0, 0, 0, 0])
                nodes[key] = w.node_id
                row[0] += 1
                row[1] += window_ms * share // total
                row[2] += max(energy, 0) * share // total
                row[3] += util * window_ms * share // total
    return [UsageAggregate(h, nodes[(h, u, t)], u, t, *v) for (h, u, t), v in sorted(acc.items())]


def _window(rec: StatementRecord) -> UsageWindow | None:
    try:
        return parse_statement(rec.payload)
    except (SchemaError, ValueError, RecursionError) as exc:  # stored bytes were verified at ingest
        _logger.error(
            "statement %s/%d cannot be parsed (%s); its payload is dropped unaggregated", rec.key_id, rec.seq, exc
        )
        return None


def age_statements(store: Store, older_than_ms: int, now_ms: int, *, chunk: int = DEFAULT_CHUNK) -> RetentionReport:
    """Drop the payloads of statements whose window ended at or before ``older_than_ms``,
    folding them into ``store.usage_hourly()``."""
    done = 0
    rows = 0
    conflicts = 0
    while True:
        batch: list[StatementRecord] = []
        for rec in store.iter_statements(window_to_ms=older_than_ms):
            if rec.end_ms <= older_than_ms:
                batch.append(rec)
                if len(batch) >= chunk:
                    break
        if not batch:
            return RetentionReport(done, rows)
        aggregates = aggregate(w for w in map(_window, batch) if w is not None)
        try:
            done += store.prune_statements([(r.key_id, r.seq) for r in batch], aggregates, now_ms)
        except StoreConflictError:
            # Another retention run pruned some of them first: read the chunk again.
            conflicts += 1
            if conflicts > _RETRIES:
                raise
            _logger.warning("another retention run overlapped; reading the chunk again")
            continue
        conflicts = 0
        rows += len(aggregates)
        _logger.info("retention: %d statement payloads aged into hourly aggregates so far", done)
