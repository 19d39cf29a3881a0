"""What the agent's and the collector's Prometheus metrics share (agent/metrics.py,
collector/metrics/): each keeps its metrics on a registry of its own, exported through
:class:`WithoutCreated`."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector


class WithoutCreated(Collector):
    """The inner registry's metrics without client_python's ``*_created`` samples.

    Those double the series of every counter and histogram for a timestamp Prometheus does
    not use with the text format; client_python can only drop them process-wide
    (``disable_created_metrics()``), and gpuaudit keeps no global state.
    """

    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def collect(self) -> Iterator[Metric]:
        for m in self._inner.collect():
            if m.type in ("counter", "histogram", "summary"):
                m.samples = [s for s in m.samples if not s.name.endswith("_created")]
            yield m
