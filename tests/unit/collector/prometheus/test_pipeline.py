"""The window pipeline (collector/prometheus/pipeline.py): a worker process reads and
windows the next chunk while the detector runs on this one. The detector must see exactly
what the sequential path gives it, in the same order, and errors must arrive with their
type and remedy."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from bench.bench_prometheus import STEP_MS, T0_MS, _chunk_results, _site
from collector.detect.config import DetectConfig
from collector.prometheus import pipeline
from collector.prometheus.client import ClientConfig, PrometheusError
from collector.prometheus.pipeline import RunAhead, WorkerError
from collector.prometheus.source import PrometheusHistory, Span, detect
from collector.prometheus.windows import METRICS, WindowBuilder
from collector.tenants import TenantDirectory
from core.tenantrules import TenantRules

# Small enough that the synthetic site's 96-GPU training run is a finding.
CONFIG = DetectConfig(size_alone_gpus=64)
needs_fork = pytest.mark.skipif(not pipeline.usable(), reason="needs fork and two CPUs")
RULES = TenantRules(namespaces={f"ns-t-{x}": f"t-{x}" for x in ("opaque", "inf-0", "inf-1", "inf-2", "inf-3")})


class FakeClient:
    """Answers the history's queries with the benchmark's synthetic site (no HTTP)."""

    def __init__(self, nodes: int) -> None:
        self.site = _site(nodes, random.Random(3))
        self.hosts = sorted({g[0]["Hostname"] for n in self.site for g in n["gpus"]})  # type: ignore[attr-defined]
        self.cfg = ClientConfig("http://fake")
        self.requests = 0
        self.bytes_read = 0
        self.by_expr = {q.expr("", f"{STEP_MS}ms"): q.key for q in METRICS}

    def label_values(self, label: str, match: str, start_s: float, end_s: float) -> list[str]:
        return self.hosts if label == "Hostname" else []

    def query_range(self, expr: str, start_s: float, end_s: float, step_s: float) -> list[Any]:
        from collector.prometheus.client import Chunk

        self.requests += 1
        self.bytes_read += 1000
        start_ms = round(start_s * 1000) + 1 - STEP_MS
        chunk = Chunk(start_ms, round(end_s * 1000) + 1)
        return _chunk_results(self.site, chunk, T0_MS + 3_600_000).get(self.by_expr[expr], [])


def _history(nodes: int, hours: float) -> PrometheusHistory:
    span = Span(T0_MS, T0_MS + int(hours * 3_600_000), STEP_MS)
    return PrometheusHistory(FakeClient(nodes), WindowBuilder(RULES, step_ms=STEP_MS), span)  # type: ignore[arg-type]


@needs_fork
def test_the_pipeline_gives_the_same_windows_findings_and_coverage() -> None:
    seq, pip = _history(30, 3), _history(30, 3)
    assert list(pip.windows(pipeline=True)) == list(seq.windows())
    assert pip.coverage == seq.coverage, "the coverage counted in the worker process must come back"
    seq, pip = _history(30, 3), _history(30, 3)
    a = [f.to_json() for f in detect(seq, CONFIG, TenantDirectory())]
    b = [f.to_json() for f in detect(pip, CONFIG, TenantDirectory(), pipeline=True)]
    assert a, "the synthetic site's training run must be found, or this test compares nothing"
    assert a == b


def _numbers(n: int) -> Iterator[int]:
    yield from range(n)


@needs_fork
def test_items_arrive_in_order_and_the_workers_state_after_them() -> None:
    state = {"made": 0}

    def produce() -> Iterator[int]:
        for i in range(50):
            state["made"] += 1
            yield i

    ahead: RunAhead[int] = RunAhead(produce, lambda: dict(state))
    assert list(ahead) == list(range(50))
    assert ahead.finished == {"made": 50} and state == {"made": 0}, "the worker's state, not ours"


@needs_fork
def test_an_error_in_the_worker_is_raised_here_with_its_remedy() -> None:
    def produce() -> Iterator[int]:
        yield 1
        raise PrometheusError("cannot reach Prometheus at http://x", "Check the URL.")

    got = []
    with pytest.raises(PrometheusError) as exc:
        for x in RunAhead(produce, lambda: None):
            got.append(x)
    assert got == [1] and exc.value.diagnostics() == "cannot reach Prometheus at http://x\nCheck the URL."


@needs_fork
def test_a_worker_that_dies_is_an_error_that_says_so() -> None:
    import os

    def produce() -> Iterator[int]:
        yield 1
        os._exit(9)

    with pytest.raises(WorkerError, match="exit code 9"):
        list(RunAhead(produce, lambda: None))


@needs_fork
def test_stopping_early_ends_the_worker() -> None:
    ahead: RunAhead[int] = RunAhead(lambda: _numbers(10**9), lambda: None)
    it = iter(ahead)
    assert next(it) == 0 and next(it) == 1
    it.close()  # type: ignore[attr-defined]
