"""``detect --prometheus`` aggregates each window straight from the chunk's rows
(collector/prometheus/sites.py) and gives it to the engine whole (``observe_site``). That
must be what the detector makes of the records: ``usage.aggregate`` over the windows
``WindowBuilder.assemble`` gives, value for value (floats to the bit), in the same order,
and the same findings in the end."""

from __future__ import annotations

import dataclasses
import pickle
import random
from typing import Any

import pytest

from bench.bench_prometheus import STEP_MS, T0_MS
from bench.bench_prometheus import _chunk_results as bench_results
from bench.bench_prometheus import _site as bench_site
from collector.detect.config import DetectConfig
from collector.detect.engine import DetectorEngine
from collector.detect.signals import node_series, stable_sample
from collector.detect.usage import SiteWindow, TenantWindow, WorkloadUse, aggregate
from collector.prometheus.client import Chunk, plan_chunks
from collector.prometheus.sites import aggregate_rows
from collector.prometheus.windows import WindowBuilder
from collector.tenants import TenantDirectory
from core.tenantrules import TenantRules
from tests.unit.collector.prometheus.test_windows_equivalence import RULES, SLURM, T0
from tests.unit.collector.prometheus.test_windows_equivalence import _chunk_results as realistic_results
from tests.unit.collector.prometheus.test_windows_equivalence import _site as realistic_site

BENCH_RULES = TenantRules(namespaces={f"ns-t-{x}": f"t-{x}" for x in ("opaque", "inf-0", "inf-1", "inf-2", "inf-3")})
# Small enough that the synthetic site's 96-GPU training run is a finding.
CONFIG = DetectConfig(size_alone_gpus=64)


def _tenant(tw: TenantWindow, k: int) -> tuple[Any, ...]:
    """Everything the detector reads of a tenant's window, with every dict's order."""
    sample = set(stable_sample(tw.by_node, k))
    # Every field of ``WorkloadUse`` by name (dicts with their order): a field added to the
    # detector's aggregate and not to the Prometheus path's shows here.
    names = [f.name for f in dataclasses.fields(WorkloadUse)]
    workloads = [
        (wl, [list(v.items()) if isinstance(v := getattr(u, n), dict) else v for n in names])
        for wl, u in tw.workloads.items()
    ]
    nodes = [
        (n, tw.node_level_exact(n), node_series(tw.by_node[n]), len(tw.by_node[n])) for n in tw.by_node if n in sample
    ]
    return (workloads, tw.strong, tw.weak, tw.occupied, tw.window_s, tw.whole_node_gpus, nodes)


def _site(site: SiteWindow, k: int) -> tuple[Any, ...]:
    tenants = [(t, _tenant(tw, k)) for t, tw in site.tenants.items()]
    return (tenants, list(site.ib_bytes_per_s.items()), site.gpus_seen)


def _compare(builder: WindowBuilder, twin: WindowBuilder, chunk: Chunk, results: Any, cfg: DetectConfig) -> int:
    """The chunk through records + ``aggregate`` and through rows + ``aggregate_rows``; windows compared."""
    records = builder.build(chunk, results)
    rows = pickle.loads(pickle.dumps(twin.compute(chunk, results, cfg)))
    sites = aggregate_rows(rows, cfg, twin.window_ms, twin.coverage)
    by_start: dict[int, dict[str, Any]] = {}
    for w in records:
        by_start.setdefault(w.start_ms, {})[w.node_id] = w
    assert [s.start_ms for s in sites] == sorted(by_start), "not the same windows"
    for at in sites:
        ws = by_start[at.start_ms]
        assert at.nodes == tuple(sorted(ws)), f"window {at.start_ms}: not the same nodes"
        assert at.end_ms == max(w.end_ms for w in ws.values())
        want = aggregate([ws[n] for n in sorted(ws)], cfg)
        got = pickle.loads(pickle.dumps(at.site))  # as the detector's process receives it
        # repr: floats to the bit (0.0 and -0.0 differ there), dicts in their order.
        assert repr(_site(got, cfg.sync_sample_nodes)) == repr(_site(want, cfg.sync_sample_nodes)), (
            f"window {at.start_ms}: the aggregate from rows differs from usage.aggregate of the records"
        )
    assert twin.coverage.host_windows == builder.coverage.host_windows
    assert twin.coverage.gpu_windows == builder.coverage.gpu_windows
    return len(sites)


@pytest.mark.parametrize("step_ms", [15_000, 30_000, 60_000])
@pytest.mark.parametrize("seed", range(3))
def test_rows_aggregate_as_the_records_do_on_realistic_chunks(step_ms: int, seed: int) -> None:
    rng = random.Random(seed)
    site = realistic_site(rng, hosts=12)
    builder = WindowBuilder(RULES, step_ms=step_ms, slurm_accounts=SLURM)
    twin = WindowBuilder(RULES, step_ms=step_ms, slurm_accounts=SLURM)
    # Small samples too, so that nodes are left out of ``by_node``.
    cfg = DetectConfig(sync_sample_nodes=(3, 24, 0)[seed])
    t = T0
    for _ in range(3):
        chunk = Chunk(t, t + rng.choice((3, 10, 60)) * 60_000)
        t = chunk.end_ms
        assert _compare(builder, twin, chunk, realistic_results(rng, site, chunk, step_ms), cfg) > 0


def test_rows_aggregate_as_the_records_do_on_the_benchmark_site() -> None:
    site = bench_site(40, random.Random(3))
    builder, twin = WindowBuilder(BENCH_RULES, step_ms=STEP_MS), WindowBuilder(BENCH_RULES, step_ms=STEP_MS)
    for chunk in plan_chunks(T0_MS, T0_MS + 7_200_000, window_ms=60_000, step_ms=STEP_MS, chunk_ms=3_600_000):
        _compare(builder, twin, chunk, bench_results(site, chunk, T0_MS + 3_600_000), DetectConfig())


def test_whole_windows_give_the_findings_of_windows_node_by_node() -> None:
    site = bench_site(30, random.Random(3))
    builder, twin = WindowBuilder(BENCH_RULES, step_ms=STEP_MS), WindowBuilder(BENCH_RULES, step_ms=STEP_MS)
    by_node, whole = DetectorEngine(CONFIG, TenantDirectory()), DetectorEngine(CONFIG, TenantDirectory())
    raised_a, raised_b = [], []
    for chunk in plan_chunks(T0_MS, T0_MS + 3 * 3_600_000, window_ms=60_000, step_ms=STEP_MS, chunk_ms=3_600_000):
        results = bench_results(site, chunk, T0_MS + 3_600_000)
        for w in builder.build(chunk, results):
            raised_a += by_node.observe(w)
        for at in aggregate_rows(twin.compute(chunk, results, CONFIG), CONFIG, twin.window_ms, twin.coverage):
            raised_b += whole.observe_site(at.start_ms, at.end_ms, at.nodes, at.site)
    raised_a += by_node.finish()
    raised_b += whole.finish()
    a = [f.to_json() for f in by_node.findings()]
    assert a, "the synthetic site's training run must be found, or this test compares nothing"
    assert a == [f.to_json() for f in whole.findings()]
    assert [f.to_json() for f in raised_a] == [f.to_json() for f in raised_b], "raised or updated at other windows"
    assert by_node.stats == whole.stats


def test_the_structs_have_the_fields_the_detector_reads() -> None:
    """``WorkloadSums`` stands for ``usage.WorkloadUse``, ``GpuLoad`` for the ``GpuWindow`` fields
    the coupling tests read: a field added there must be added here."""
    from dataclasses import fields

    from collector.detect.usage import GpuLoad as GpuLoadProtocol
    from collector.prometheus.sites import GpuLoad, WorkloadSums

    assert WorkloadSums.__struct_fields__ == tuple(f.name for f in fields(WorkloadUse))
    assert WorkloadSums() == WorkloadSums(**{f.name: getattr(WorkloadUse(), f.name) for f in fields(WorkloadUse)})
    wanted = {n for n in vars(GpuLoadProtocol) if not n.startswith("_")}
    assert set(GpuLoad.__struct_fields__) == wanted


def test_rows_classified_for_another_configuration_are_refused() -> None:
    """The worker classifies each GPU window with the detector's configuration; rows made for
    another (or none) would give the wrong classes, so they are refused, not aggregated."""
    site = bench_site(2, random.Random(3))
    chunk = Chunk(T0_MS, T0_MS + 600_000)
    rows = WindowBuilder(BENCH_RULES, step_ms=STEP_MS).compute(chunk, bench_results(site, chunk, T0_MS), DetectConfig())
    with pytest.raises(ValueError, match="another detector configuration"):
        aggregate_rows(rows, CONFIG, 60_000)
