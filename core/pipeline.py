"""Trace → windows: the agent's windowing code driven by a trace instead of a live source.

Used by ``gpuaudit-agent replay`` (then signed and streamed) and by the collector's offline
``detect`` (unsigned, straight into the detector), so both see exactly what a live agent
would have produced from the same samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from attestation.statement import UsageWindow
from core import __version__
from core.samples import DeviceInfo, NodeSample
from core.trace import NodeRecord, SampleRecord, TraceRecord, read_trace
from core.window import WindowAggregator


@dataclass
class _NodeState:
    devices: tuple[DeviceInfo, ...]
    pending: NodeSample | None = None
    agg: WindowAggregator | None = None


def boot_id_for(node: str) -> str:
    """A stable boot id for a replayed node (a trace has no boots)."""
    import hashlib

    return "replay-" + hashlib.sha256(node.encode()).hexdigest()[:16]


def windows_from_records(
    records: Iterable[TraceRecord], *, window_s: int = 60, bucket_s: int = 10
) -> Iterator[UsageWindow]:
    """Yield each node's windows as they close (per node in order; nodes interleaved as in the trace)."""
    nodes: dict[str, _NodeState] = {}
    for rec in records:
        if isinstance(rec, NodeRecord):
            nodes[rec.node] = _NodeState(devices=rec.devices)
            continue
        assert isinstance(rec, SampleRecord)
        st = nodes[rec.node]
        if st.agg is None:
            # The sampling interval is read off the first two samples.
            if st.pending is None:
                st.pending = rec.sample
                continue
            interval = max(rec.sample.t - st.pending.t, 0.001)
            st.agg = WindowAggregator(
                rec.node,
                boot_id_for(rec.node),
                __version__,
                st.devices,
                window_s=window_s,
                bucket_s=bucket_s,
                sample_interval_s=interval,
            )
            yield from st.agg.add(st.pending)
            st.pending = None
        yield from st.agg.add(rec.sample)
    for node, st in nodes.items():
        if st.agg is None and st.pending is not None:
            st.agg = WindowAggregator(
                node, boot_id_for(node), __version__, st.devices, window_s=window_s, bucket_s=bucket_s
            )
            st.agg.add(st.pending)
        if st.agg is not None:
            w = st.agg.flush()
            if w is not None:
                yield w


def windows_from_trace(path: Path | str, *, window_s: int = 60, bucket_s: int = 10) -> Iterator[UsageWindow]:
    return windows_from_records(read_trace(path), window_s=window_s, bucket_s=bucket_s)
