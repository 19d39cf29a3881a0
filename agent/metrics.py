"""The agent's own Prometheus metrics, on a registry of its own (no global state).

Served on ``metrics_listen`` (default ``127.0.0.1:9479``; ``""`` turns it off). They tell an
operator whether the agent itself is healthy: can it read the GPUs, does it sign, does the
collector acknowledge, how much waits in the spool. Usage per tenant is the collector's
business (its metrics come from signed statements); the agent exports only the GPUs' latest
readings, as dcgm-exporter does.

Conventions as the collector's (collector/metrics/): base units in names, ``_total`` on
counters, ``_timestamp_seconds`` on times, bounded labels only: ``source`` (a fixed set),
``gpu`` (this node's GPU UUIDs), ``field`` and ``reason`` (NVML field names and error names;
at most ``max_unavailable_series`` pairs, the rest counted under ``"_other"``), ``reason`` of
rejects (the collector's refusal reasons) and of drops (``spool_size``, ``spool_age``),
``direction`` of clock jumps (``back``, ``forward``). Never a PID, a workload, a key id or a
sequence number.

Series, all prefixed ``gpuaudit_agent_``:

=================================================  =======  ==================================
build_info{version,python_version}                 gauge    always 1
source_scrape_success{source}                      gauge    last read of the source ok (1) or not
source_scrape_duration_seconds{source}             gauge    how long the last read took
samples_total                                      counter  node samples taken
statements_signed_total                            counter  windows signed into the spool
spool_statements                                   gauge    signed, not yet acknowledged
spool_bytes                                        gauge    their size
spool_oldest_window_end_timestamp_seconds          gauge    end of the oldest of them (absent: none)
statements_dropped_total{reason}                   counter  dropped unsent at a spool bound
acks_total                                         counter  statements the collector acknowledged
duplicate_acks_total                               counter  acknowledged as already stored
rejects_total{reason}                              counter  statements the collector refused
stream_reconnects_total                            counter  stream failures retried
readings_unavailable_total{field,reason}           counter  readings not taken, per GPU and sample
gpu_utilization_ratio{gpu}                         gauge    latest sample (absent when unavailable)
gpu_power_watts{gpu}                               gauge    latest sample (absent when unavailable)
clock_jumps_total{direction}                       counter  wall-clock steps seen (agent/clock.py)
key_epoch                                          gauge    the signing key's epoch (+1 per rotation)
key_first_window_timestamp_seconds                 gauge    start of its first signed window
key_rotation_period_seconds                        gauge    key_rotation_days (absent: no schedule)
=================================================  =======  ==================================

The spool's gauges and the key's describe the current signing key's chain (after a
rotation, the previous key's last statements are not counted). The drop and clock-jump
counters are present at 0 from the agent's start, every reason and direction, so that
``increase()`` sees the first; a gauge with nothing to say is absent.

``source`` is ``gpu`` (NVML, or the simulated source) and ``attribution`` (host /proc,
the kubelet): node_exporter's ``node_scrape_collector_success`` for the agent's inputs.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.spool import DROP_REASONS, Backlog
from core.prometheus import WithoutCreated

if TYPE_CHECKING:
    from agent.sources.base import GpuSource
    from core.samples import DeviceInfo, NodeSample

_logger = logging.getLogger(__name__)

SOURCES = ("gpu", "attribution")
OTHER = "_other"
_GPU_INDEX = re.compile(r"^gpu\[\d+\]$")
_REASON_OK = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class _SpoolView(Protocol):
    def backlog(self, key_id: str) -> Backlog: ...


class _StatsView(Protocol):
    acked: int
    duplicates: int
    reconnects: int


class _ChainView(Protocol):
    """agent/signing.py ChainSigner, as the metrics read it."""

    epoch: int
    key_since_ms: int | None
    dropped: dict[str, int]


class _ClockView(Protocol):
    """agent/clock.py ClockWatch, as the metrics read it."""

    jumps_back: int
    jumps_forward: int


class _Live(Collector):
    """What is read at scrape time: the spool, the stream's counters, the chain's key, the clock."""

    def __init__(self) -> None:
        self.spool: _SpoolView | None = None
        self.key_id = ""
        self.stats: _StatsView | None = None
        self.chain: _ChainView | None = None
        self.clock: _ClockView | None = None
        self.rotation_period_s: float | None = None

    def collect(self) -> Iterator[Metric]:
        if self.spool is not None:
            try:
                backlog = self.spool.backlog(self.key_id)
            except Exception as exc:  # a closed or broken spool: say nothing rather than a wrong 0
                _logger.debug("spool not readable for metrics: %s", exc)
            else:
                yield GaugeMetricFamily(
                    "gpuaudit_agent_spool_statements",
                    "Signed statements in the spool, not yet acknowledged by the collector.",
                    value=backlog.statements,
                )
                yield GaugeMetricFamily(
                    "gpuaudit_agent_spool_bytes",
                    "Size of the envelopes waiting in the spool.",
                    value=backlog.size_bytes,
                )
                if backlog.oldest_end_ms is not None:  # an empty spool has no oldest statement
                    yield GaugeMetricFamily(
                        "gpuaudit_agent_spool_oldest_window_end_timestamp_seconds",
                        "End of the window of the oldest statement in the spool (signed, not yet acknowledged); "
                        "absent while the spool is empty.",
                        value=backlog.oldest_end_ms / 1000,
                    )
        chain = self.chain
        dropped = CounterMetricFamily(
            "gpuaudit_agent_statements_dropped",
            "Signed statements dropped unsent because the spool reached a bound (spool_size: spool_max_bytes, "
            "spool_age: spool_max_age_s); the next statement records the drop, signed.",
            labels=["reason"],
        )
        counts = dict(chain.dropped) if chain is not None else {}
        for reason in sorted({*DROP_REASONS, *counts}):
            dropped.add_metric([reason], counts.get(reason, 0))
        yield dropped
        if chain is not None:
            yield GaugeMetricFamily(
                "gpuaudit_agent_key_epoch",
                "Epoch of the current signing key: 0 for the key enrolled with a join token, +1 per rotation.",
                value=chain.epoch,
            )
            since_ms = chain.key_since_ms
            if since_ms is not None:  # a key that has signed nothing yet (just rotated to) has no age
                yield GaugeMetricFamily(
                    "gpuaudit_agent_key_first_window_timestamp_seconds",
                    "Start of the first window the current signing key signed; key_rotation_days counts from it.",
                    value=since_ms / 1000,
                )
        if self.rotation_period_s is not None:
            yield GaugeMetricFamily(
                "gpuaudit_agent_key_rotation_period_seconds",
                "Signing keys are rotated after signing for this long (key_rotation_days); absent when keys "
                "rotate only on request.",
                value=self.rotation_period_s,
            )
        clock = self.clock
        jumps = CounterMetricFamily(
            "gpuaudit_agent_clock_jumps",
            "Steps of the node's wall clock against the monotonic clock, by direction; each is explained "
            "by a clock_jump event in the next statement signed.",
            labels=["direction"],
        )
        jumps.add_metric(["back"], clock.jumps_back if clock else 0)
        jumps.add_metric(["forward"], clock.jumps_forward if clock else 0)
        yield jumps
        s = self.stats
        yield CounterMetricFamily(
            "gpuaudit_agent_acks", "Statements the collector acknowledged (stored).", value=s.acked if s else 0
        )
        yield CounterMetricFamily(
            "gpuaudit_agent_duplicate_acks",
            "Acknowledgements of statements the collector had already stored (resent after a cut).",
            value=s.duplicates if s else 0,
        )
        yield CounterMetricFamily(
            "gpuaudit_agent_stream_reconnects",
            "Times the statement stream failed and was opened again.",
            value=s.reconnects if s else 0,
        )


class AgentMetrics:
    """All agent metrics. Updated by the run loop; scraped from the HTTP server's thread."""

    def __init__(self, version: str, *, max_unavailable_series: int = 100) -> None:
        r = CollectorRegistry(auto_describe=True)
        self.registry = CollectorRegistry()
        self.registry.register(WithoutCreated(r))
        self.port: int | None = None
        self._http: Any = None
        self._lock = threading.Lock()
        self._max_unavailable = max_unavailable_series
        self._unavailable_seen: set[tuple[str, str]] = set()
        self._uuid_by_index: dict[int, str] = {}
        Info("gpuaudit_agent_build", "Agent build information.", registry=r).info(
            {"version": version, "python_version": platform.python_version()}
        )
        self.scrape_success = Gauge(
            "gpuaudit_agent_source_scrape_success",
            "Whether the agent's last read of this source succeeded (1) or failed (0).",
            ["source"],
            registry=r,
        )
        self.scrape_seconds = Gauge(
            "gpuaudit_agent_source_scrape_duration_seconds",
            "How long the agent's last read of this source took.",
            ["source"],
            registry=r,
        )
        self.samples = Counter("gpuaudit_agent_samples", "Node samples taken (GPUs and processes).", registry=r)
        self.signed = Counter(
            "gpuaudit_agent_statements_signed", "Statements signed and stored in the spool.", registry=r
        )
        self.rejects = Counter(
            "gpuaudit_agent_rejects",
            "Statements the collector refused, by its reason; streaming stops at one (the spool keeps it).",
            ["reason"],
            registry=r,
        )
        self.unavailable = Counter(
            "gpuaudit_agent_readings_unavailable",
            "Readings the agent could not take, counted per GPU and sample, by field and NVML reason "
            '(field="gpu": the whole GPU was not read).',
            ["field", "reason"],
            registry=r,
        )
        self.gpu_util = Gauge(
            "gpuaudit_agent_gpu_utilization_ratio",
            "GPU utilization (0-1) in the latest sample; absent while unavailable.",
            ["gpu"],
            registry=r,
        )
        self.gpu_power = Gauge(
            "gpuaudit_agent_gpu_power_watts",
            "GPU power draw in the latest sample; absent while unavailable.",
            ["gpu"],
            registry=r,
        )
        self._live = _Live()
        r.register(self._live)
        for source in SOURCES:
            self.scrape_success.labels(source)
            self.scrape_seconds.labels(source)

    # -- wiring -------------------------------------------------------------
    def set_devices(self, devices: Sequence[DeviceInfo]) -> None:
        self._uuid_by_index = {d.index: d.uuid for d in devices}

    def attach(self, spool: _SpoolView, key_id: str, stats: _StatsView) -> None:
        """Report this spool's depth for ``key_id`` and this stream's counters at scrape time."""
        self._live.spool, self._live.key_id, self._live.stats = spool, key_id, stats

    def watch(self, chain: _ChainView, clock: _ClockView, rotation_period_s: float | None) -> None:
        """Report the signing key (epoch, first window), spool drops and clock jumps at scrape
        time; ``rotation_period_s``: the key rotation schedule's period, None when there is none."""
        self._live.chain, self._live.clock, self._live.rotation_period_s = chain, clock, rotation_period_s

    def detach_spool(self) -> None:
        self._live.spool = None

    # -- observations -------------------------------------------------------
    @contextlib.contextmanager
    def scrape(self, source: str) -> Iterator[None]:
        """Time one read of ``source``; success is 0 when it raises (and the error goes on)."""
        t0 = time.perf_counter()
        ok = 0
        try:
            yield
            ok = 1
        finally:
            self.scrape_seconds.labels(source).set(time.perf_counter() - t0)
            self.scrape_success.labels(source).set(ok)

    def sample(self, source: GpuSource) -> NodeSample:
        """``source.sample()``, timed as the ``gpu`` source and observed. Runs in a worker thread."""
        with self.scrape("gpu"):
            s = source.sample()
        self.observe_sample(s)
        return s

    def timed(self, source: str, fn: Callable[[], Any]) -> Any:
        with self.scrape(source):
            return fn()

    def observe_sample(self, s: NodeSample) -> None:
        self.samples.inc()
        read = set()
        for field, reason in s.unavailable.items():
            self._count_unavailable(field, reason)
        for g in s.gpus:
            read.add(g.index)
            for field, reason in g.unavailable.items():
                self._count_unavailable(field, reason)
            uuid = self._uuid_by_index.get(g.index)
            if uuid is None:
                continue
            self._set(self.gpu_util, uuid, None if g.util_pct is None else g.util_pct / 100.0)
            self._set(self.gpu_power, uuid, None if g.power_mw is None else g.power_mw / 1000.0)
        for index, uuid in self._uuid_by_index.items():
            if index not in read:  # not read in this sample: its last value is no reading
                self._set(self.gpu_util, uuid, None)
                self._set(self.gpu_power, uuid, None)

    @staticmethod
    def _set(gauge: Gauge, uuid: str, value: float | None) -> None:
        if value is not None:
            gauge.labels(uuid).set(value)
        else:
            with contextlib.suppress(KeyError):
                gauge.remove(uuid)

    def _count_unavailable(self, field: str, reason: str) -> None:
        field = "gpu" if _GPU_INDEX.match(field) else field
        if not _REASON_OK.match(reason):
            reason = OTHER  # free text (an exception's message) is not a label value
        key = (field, reason)
        with self._lock:
            if key not in self._unavailable_seen:
                if len(self._unavailable_seen) >= self._max_unavailable:
                    key = (OTHER, OTHER)
                else:
                    self._unavailable_seen.add(key)
        self.unavailable.labels(*key).inc()

    def statement_signed(self) -> None:
        self.signed.inc()

    def rejected(self, reason: str) -> None:
        self.rejects.labels(reason if _REASON_OK.match(reason) else OTHER).inc()

    # -- serving ------------------------------------------------------------
    def serve(self, listen: str) -> int | None:
        """Serve /metrics on ``listen`` (HOST:PORT; port 0: any free port); "" serves nothing.

        A port that cannot be bound is logged and the agent runs on without /metrics:
        signing statements matters more than exporting metrics about it."""
        if not listen:
            return None
        host, _, port = listen.rpartition(":")
        try:
            self._http, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        except (OSError, ValueError) as exc:
            _logger.error("not serving metrics on %s: %s (the agent goes on without /metrics)", listen, exc)
            return None
        self.port = int(self._http.server_port)
        _logger.info("metrics on http://%s:%d/metrics", host or "127.0.0.1", self.port)
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
