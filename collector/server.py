"""Assembles a running collector: store, ingest, detector, metrics, gRPC server."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from attestation.statement import UsageWindow
from attestation.v1 import collector_pb2_grpc as pb_grpc
from collector.ca import IssuingCa
from collector.config import CollectorConfig
from collector.detect.engine import DetectorEngine
from collector.detect.findings import KIND_LARGE_TRAINING, Finding
from collector.enroll_k8s import K8sEnrollment, K8sTokenVerifier
from collector.errors import CollectorError, StoreError
from collector.follow import DetectionFollower
from collector.ingest import Accepted, Ingestor, IngestResult
from collector.limits import Limits
from collector.log import Log
from collector.logservice import Checkpointer, LogService
from collector.metrics import CollectorMetrics, store_paths
from collector.service import CollectorService, IngestBatcher
from collector.store.base import FindingRecord, Store
from collector.warmup import warm_up
from core import __version__

_logger = logging.getLogger(__name__)

SERVICE_NAME = "gpuaudit.v1.Collector"


class InsecureRefusedError(CollectorError):
    """The collector would serve plaintext gRPC without being told to (`insecure = true`)."""

    reason = "insecure_refused"

    def diagnostics(self) -> str:
        return (
            "No TLS settings: give tls_cert, tls_key and tls_client_ca (create them with "
            "`gpuaudit-collector ca init` and `ca issue --server`), or, for development on loopback "
            "only, --insecure (insecure = true)."
        )


class _CertFiles:
    """Server credentials re-read whenever the certificate, key or CA file changes."""

    def __init__(self, cert: Path, key: Path, client_ca: Path) -> None:
        self.paths = (cert, key, client_ca)
        self._stamp: tuple[float, ...] | None = None

    def _read(self) -> grpc.ServerCertificateConfiguration:
        cert, key, ca = (p.read_bytes() for p in self.paths)
        self._stamp = tuple(p.stat().st_mtime for p in self.paths)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def initial(self) -> grpc.ServerCertificateConfiguration:
        return self._read()

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake; None keeps the current configuration."""
        try:
            stamp = tuple(p.stat().st_mtime for p in self.paths)
            if stamp == self._stamp:
                return None
            _logger.info("TLS files changed; loading the new certificate")
            return self._read()
        except OSError as exc:
            _logger.error("cannot reload TLS files (%s); keeping the current certificate", exc)
            return None


def server_credentials(config: CollectorConfig) -> grpc.ServerCredentials:
    assert config.tls_cert and config.tls_key and config.tls_client_ca
    files = _CertFiles(config.tls_cert, config.tls_key, config.tls_client_ca)
    return grpc.dynamic_ssl_server_credentials(files.initial(), files.fetch, require_client_authentication=True)


class FindingSink:
    """After each committed batch: metrics per window, detector, findings into the store."""

    def __init__(
        self,
        store: Store,
        engine: DetectorEngine,
        metrics: CollectorMetrics,
        known: dict[str, str] | None = None,
    ) -> None:
        self._store = store
        self._engine = engine
        self._metrics = metrics
        self._lock = threading.Lock()
        self._known: dict[str, str] = dict(known or {})  # finding id -> severity
        # Findings the store could not write (full disk, lock): the latest version of each,
        # written before anything newer at the next batch. A finding is never dropped for a
        # failed write; the detector does not report an unchanged finding again.
        self._unsaved: dict[str, Finding] = {}
        self._failing = False  # warn once per outage, not per batch

    @property
    def unsaved(self) -> int:
        return len(self._unsaved)

    def __call__(self, results: Sequence[IngestResult]) -> None:
        with self._lock:
            if self._unsaved:
                self._flush()
            # Per accepted statement (1,250 a second): the bound methods are looked up once
            # per batch, and save() is called only when the detector returned findings.
            observe_window = self._metrics.observe_window
            detect = self._engine.observe if self.detect_inline else None
            for res in results:
                if isinstance(res, Accepted) and not res.duplicate:
                    observe_window(res.window)
                    if detect is not None:
                        found = detect(res.window)
                        if found:
                            self.save(found)

    # False when several collectors share the store: collector.follow feeds observe_window.
    detect_inline = True

    def detect(self, window: UsageWindow) -> None:
        """Feed one stored window to the detector (collector.follow, shared stores)."""
        with self._lock:
            if self._unsaved:
                self._flush()
            self.save(self._engine.observe(window))

    def warm_start(self, records: Sequence[FindingRecord], priors: Sequence[Finding], *, complete: bool) -> None:
        """Before a warm-start replay (collector/warmup.py): the detector starts over, knowing the
        stored findings; findings another collector recorded meanwhile are known, not new."""
        with self._lock:
            self._engine.warm_start(priors, complete=complete)
            for r in records:
                before = self._known.get(r.finding_id)
                if r.kind == KIND_LARGE_TRAINING and before != r.severity:
                    if before is not None:
                        self._metrics.findings_open.labels(r.kind, before).dec()
                    self._metrics.findings_open.labels(r.kind, r.severity).inc()
                    self._known[r.finding_id] = r.severity

    def finish(self) -> list[Finding]:
        with self._lock:
            found = self._engine.finish()
            self.save(found)
            if self._unsaved:
                _logger.error(
                    "%d finding(s) could not be written to the store at shutdown (%s); the next "
                    "start replays the stored windows and finds them again",
                    len(self._unsaved),
                    ", ".join(sorted(self._unsaved)),
                )
            return found

    def _flush(self) -> None:
        pending, self._unsaved = self._unsaved, {}
        self._write(list(pending.values()))
        if not self._unsaved and self._failing:
            self._failing = False
            _logger.warning("the store took the %d finding(s) it had refused", len(pending))

    def _write(self, findings: Sequence[Finding]) -> None:
        for i, f in enumerate(findings):
            try:
                self._store.save_finding(
                    f.id,
                    f.kind,
                    f.tenant,
                    f.severity,
                    f.started_at_ms,
                    f.detected_at_ms,
                    json.dumps(f.to_json(), sort_keys=True),
                )
            except StoreError as exc:
                for g in findings[i:]:
                    self._unsaved[g.id] = g
                if not self._failing:
                    self._failing = True
                    _logger.warning(
                        "cannot write finding %s to the store (%s); it is kept and written with the next batch",
                        f.id,
                        exc,
                    )
                return

    def save(self, findings: Sequence[Finding]) -> None:
        for f in findings:
            before = self._known.get(f.id)
            self._metrics.observe_finding(f.kind, before, f.severity)
            self._metrics.observe_finding_axes(f)
            self._metrics.observe_finding_open(f)
            if before is None:
                _logger.warning(
                    "finding %s: %s by %s, %d GPUs on %d nodes, severity %s",
                    f.id,
                    f.kind,
                    f.tenant,
                    f.gpus,
                    f.nodes,
                    f.severity,
                )
            self._known[f.id] = f.severity
        if self._unsaved:
            # Keep the order: an older version of a finding must not overwrite a newer one.
            for f in findings:
                self._unsaved[f.id] = f
            self._flush()
        else:
            self._write(findings)


@dataclass
class RunningCollector:
    server: grpc.aio.Server
    port: int
    metrics_port: int | None
    batcher: IngestBatcher
    sink: FindingSink
    metrics: CollectorMetrics
    _http: Any = None
    checkpointer: Checkpointer | None = None
    follower: DetectionFollower | None = None
    # The plaintext health-only server (health_listen), if any.
    health_server: grpc.aio.Server | None = None

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.server.stop(grace_s)
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.batcher.stop()
        if self.follower is not None:
            await self.follower.stop()
        # Close what is buffered and store every finding's latest state: what is stored is what
        # this collector saw (offline `detect` on the same statements says the same). The next
        # start replays the stored look-back, so statements that arrive later are not lost.
        # On a shared store only the collector that detects does so: another one's detector is
        # stale (it lost the lease, or never had it) and would write findings back in time.
        if self.follower is None or self.follower.leader:
            await asyncio.to_thread(self.sink.finish)
        if self.checkpointer is not None:
            await self.checkpointer.stop()
        if self._http is not None:
            self._http.shutdown()


async def start_collector(
    config: CollectorConfig, store: Store, engine: DetectorEngine, *, accept_log_key_change: bool = False
) -> RunningCollector:
    tls = config.tls_cert is not None
    if not tls and not config.insecure:
        raise InsecureRefusedError("refusing to serve plaintext gRPC without insecure = true")
    metrics = CollectorMetrics(
        __version__,
        store_files=store_paths(config.db) if config.db_url is None else (),
        mfu=(engine.config.mfu_low, engine.config.mfu_high),
        detect=engine.config,
    )
    known_findings = await asyncio.to_thread(metrics.load_store, store)
    sink = FindingSink(store, engine, metrics, known_findings)
    follower = None
    if getattr(store, "concurrent_writers", False):
        # Several collectors on one database: the one holding the lease detects over the log.
        # On taking the lease it first replays the stored look-back (collector/warmup.py).
        sink.detect_inline = False
        follower = DetectionFollower(
            store, sink.detect, warm_up=lambda: warm_up(store, sink, engine.config).plan.end_leaf
        )
        follower.start()
    else:
        # The detector does not start blind: the stored look-back first, then what arrives.
        await asyncio.to_thread(warm_up, store, sink, engine.config)
    # Integrity findings (collector/integrity.py) ingest records also reach the findings metrics.
    ingestor = Ingestor(store, max_payload_bytes=config.max_payload_bytes, on_finding=metrics.observe_integrity_finding)
    batcher = IngestBatcher(ingestor, sink, metrics, max_batch=config.max_batch, max_queued=config.max_queued)
    batcher.start()
    limit = config.max_payload_bytes + 64 * 1024
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            # Keepalive enforcement: a client pinging more often than every 10 s gets GOAWAY
            # after 2 strikes (agents ping every 30 s: agent/stream.py CHANNEL_OPTIONS).
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 2),
            # Streams per connection: an agent needs one, but a relay or `gpuaudit-agent replay`
            # carries one per node over a single connection. The total is capped by max_streams
            # in the service, which refuses the excess with a reason; HTTP/2 must let those
            # streams (and unary calls beside them) through to be refused, not queue them.
            ("grpc.max_concurrent_streams", config.max_streams + 64),
        ]
    )
    # The transparency log: a checkpoint signed every checkpoint_period_s, handed to agents
    # in Resume/Ack and served with proofs by the Log service.
    log = await asyncio.to_thread(Log.open, config, store)
    await asyncio.to_thread(log.check_identity, accept_key_change=accept_log_key_change)
    checkpointer = Checkpointer(log, float(config.checkpoint_period_s or 60))
    await asyncio.to_thread(checkpointer.sign_now)
    if config.checkpoint_period_s > 0:
        checkpointer.start()
    pb_grpc.add_CollectorServicer_to_server(  # type: ignore[no-untyped-call]
        CollectorService(
            store,
            batcher,
            metrics,
            collector_id=config.collector_id,
            require_peer_identity=tls,
            checkpoints=checkpointer.latest_proto,
            limits=Limits(
                rate_per_key=config.rate_per_key,
                rate_burst=config.rate_burst,
                max_streams=config.max_streams,
                hello_timeout_s=config.hello_timeout_s,
                enroll_timeout_s=config.enroll_timeout_s,
                max_queued=config.max_queued,
            ),
            k8s=k8s_enrollment(config, store, metrics),
        ),
        server,
    )
    pb_grpc.add_LogServicer_to_server(LogService(checkpointer), server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if tls:
        port = server.add_secure_port(config.listen, server_credentials(config))
    else:
        port = server.add_insecure_port(config.listen)
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    await server.start()
    health_server = None
    if config.health_listen:
        # The kubelet's gRPC probes cannot present a client certificate: health only, plaintext.
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        if health_server.add_insecure_port(config.health_listen) == 0:
            raise OSError(f"cannot listen on {config.health_listen} (health_listen)")
        await health_server.start()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    async def store_writable(writable: bool) -> None:
        # Only the service's status: a store that cannot write makes the collector unready,
        # not dead ("" stays SERVING: restarting frees no disk and ends no lock).
        status = health_pb2.HealthCheckResponse.SERVING if writable else health_pb2.HealthCheckResponse.NOT_SERVING
        await health_servicer.set(SERVICE_NAME, status)

    batcher.on_writable(store_writable)
    http = None
    metrics_port = None
    if config.metrics_listen:
        host, _, mport = config.metrics_listen.rpartition(":")
        http, _thread = start_http_server(int(mport), addr=host or "127.0.0.1", registry=metrics.registry)
        metrics_port = int(http.server_port)
    _logger.info("collector listening on port %d (metrics on %s)", port, metrics_port)
    running = RunningCollector(server, port, metrics_port, batcher, sink, metrics, http, checkpointer)
    running.follower = follower
    running.health_server = health_server
    return running


def k8s_enrollment(config: CollectorConfig, store: Store, metrics: CollectorMetrics) -> K8sEnrollment | None:
    """Enrollment by a pod's projected service-account token, when k8s_issuer is set."""
    if config.k8s_issuer is None or config.k8s_jwks is None:
        return None
    issuing = None
    if config.issue_ca_cert is not None and config.issue_ca_key is not None:
        issuing = IssuingCa.load(config.issue_ca_cert, config.issue_ca_key)
    verifier = K8sTokenVerifier.from_files(
        config.k8s_issuer, config.k8s_jwks, config.k8s_audience, config.k8s_service_account
    )
    return K8sEnrollment(
        verifier,
        store,
        metrics,
        issuing_ca=issuing,
        cert_days=config.issue_cert_days,
        require_peer_identity=config.tls_cert is not None,
        timeout_s=config.enroll_timeout_s,
        collector_id=config.collector_id,
    )


async def serve_forever(running: RunningCollector) -> None:
    try:
        await running.server.wait_for_termination()
    finally:
        await running.stop()
