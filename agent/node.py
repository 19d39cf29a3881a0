"""The live agent: sample, attribute, window, sign, spool, stream."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from agent.attribution import Attributor, ScontrolSlurmResolver
from agent.clock import ClockWatch
from agent.metrics import AgentMetrics
from agent.reconcile import Reconciler
from agent.rotation import RotationSchedule, finish_rotation, resume_rotation, start_streams, switch_stream
from agent.signing import ChainSigner, SpoolFullError, WindowOverlapError
from agent.sources.base import GpuSource
from agent.spool import Spool
from agent.stream import RejectedError, enroll, insecure_channel, tls_channel
from attestation.keys import Signer, open_signer
from attestation.statement import UNATTRIBUTED
from attestation.x509util import not_after
from core import __version__
from core.agentconfig import AgentConfig
from core.errors import ConfigError
from core.samples import Attribution, DeviceInfo, GpuSample, NodeSample, ProcessSample
from core.tenantrules import TenantRules
from core.window import WindowAggregator

if TYPE_CHECKING:
    from agent.sources.kubelet import PodResourcesResolver

_logger = logging.getLogger(__name__)


def read_boot_id(proc_root: Path) -> str:
    try:
        return (proc_root / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def attribute(sample: NodeSample, attributor: Attributor, rules: TenantRules) -> NodeSample:
    """Resolve every process's tenant; give busy GPUs with no visible process to an active lease."""
    lease = rules.lease_at(sample.t)
    gpus = []
    for g in sample.gpus:
        procs = tuple(
            p
            if p.attribution is not None
            # A PID the source could not tie to a host process (exited, or from another PID
            # namespace: HAMi-core #112) is never resolved by number: that could name someone else.
            else dataclasses.replace(p, attribution=Attribution(UNATTRIBUTED, "process", f"pid:{p.pid}"))
            if p.suspect is not None
            else dataclasses.replace(p, attribution=attributor.resolve(p.pid, sample.t, p.start_time_ticks))
            for p in g.procs
        )
        if lease is not None:
            procs += _lease_claims(g, procs, Attribution(lease.tenant, "lease", f"lease:{lease.tenant}"))
        gpus.append(dataclasses.replace(g, procs=procs))
    return dataclasses.replace(sample, gpus=tuple(gpus))


def _lease_claims(g: GpuSample, procs: tuple[ProcessSample, ...], claim: Attribution) -> tuple[ProcessSample, ...]:
    """Under a bare-metal lease the tenant's processes may be invisible to the agent (another
    PID namespace, a VM): busy GPU time with no visible process is the lessee's (pid 0 = none
    seen). A whole GPU is busy when its utilisation is above zero. NVML has no utilisation
    for MIG devices, so a MIG instance is busy when its GPM SM activity is above zero; where
    GPM cannot be read (before Hopper) an instance's use is not known and nothing is claimed."""
    if g.mig is None:
        return () if procs or not g.util_pct else (ProcessSample(pid=0, mem_bytes=None, attribution=claim),)
    return tuple(
        ProcessSample(
            pid=0,
            mem_bytes=None,
            attribution=claim,
            gpu_instance_id=i.gpu_instance_id,
            compute_instance_id=i.compute_instance_id,
        )
        for i in g.mig.instances
        if not i.pids and i.sm_active_pct
    )


def make_source(cfg: AgentConfig) -> GpuSource:
    if cfg.source == "sim":
        from agent.sources.sim import SimulatedSource

        assert cfg.sim_trace is not None
        return SimulatedSource(cfg.sim_trace, cfg.sim_node)
    from agent.sources.nodeio import NodeIo
    from agent.sources.nvml import NvmlSource

    return NvmlSource(proc_root=cfg.proc_root, node_io=NodeIo(cfg.sys_root))


def make_pod_resolver(cfg: AgentConfig) -> PodResourcesResolver | None:
    """The kubelet pod-resources client, when a socket is configured (not for the simulated
    source). One instance serves both attribution (pod UID -> namespace/name) and the
    allocation checks, so the kubelet is asked once per refresh."""
    if cfg.source == "sim":
        return None
    from agent.sources.kubelet import PodResourcesResolver

    socket = cfg.kubelet_socket
    if socket is None or str(socket) in ("", "."):
        return None
    return PodResourcesResolver(socket, cfg.pod_logs_root, driver_proc_root=cfg.proc_root)


def make_attributor(cfg: AgentConfig, pods: PodResourcesResolver | None) -> Attributor:
    """Attribution with the kubelet's pod names and, where ``scontrol`` is installed,
    slurmctld's job accounts (otherwise the job's own SLURM_JOB_ACCOUNT, see Attributor)."""
    slurm = None
    if cfg.source != "sim" and shutil.which("scontrol") is not None:
        slurm = ScontrolSlurmResolver()
    return Attributor(cfg.proc_root, cfg.tenant_rules, pod_resolver=pods, slurm_resolver=slurm)


def make_reconciler(
    cfg: AgentConfig, devices: tuple[DeviceInfo, ...], pods: PodResourcesResolver | None = None
) -> Reconciler:
    """Blind spots and kubelet allocation checks (none of either for the simulated source)."""
    if cfg.source == "sim":
        return Reconciler(devices)
    return Reconciler(devices, proc_root=cfg.proc_root, allocations=pods)


def open_channel(cfg: AgentConfig) -> grpc.aio.Channel:
    """mTLS when configured; plaintext only when explicitly allowed."""
    if cfg.tls_ca is not None and cfg.tls_cert is not None and cfg.tls_key is not None:
        cert = cfg.tls_cert.read_bytes()
        left = not_after(cert) - dt.datetime.now(dt.UTC)
        if left < dt.timedelta(days=30):
            _logger.warning("the agent's client certificate %s expires in %s: issue a new one", cfg.tls_cert, left)
        return tls_channel(cfg.collector, cfg.tls_ca.read_bytes(), cert, cfg.tls_key.read_bytes(), cfg.tls_server_name)
    if not cfg.insecure:
        raise RuntimeError("no TLS settings (tls_ca, tls_cert, tls_key) and insecure is not set")
    return insecure_channel(cfg.collector)


def join_token(cfg: AgentConfig) -> str | None:
    if cfg.join_token:
        return cfg.join_token
    if cfg.join_token_file is not None:
        return cfg.join_token_file.read_text().strip()
    return None


# Under this much validity left, a Kubernetes agent asks the collector for a new certificate at start.
RENEW_CERT_BEFORE = dt.timedelta(days=10)


def _k8s_token(cfg: AgentConfig) -> str:
    assert cfg.k8s_token_file is not None
    try:
        return cfg.k8s_token_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read k8s_token_file {cfg.k8s_token_file}: {exc.strerror or exc} "
            "(the DaemonSet projects the service-account token there)"
        ) from exc


def _needs_certificate(cfg: AgentConfig) -> bool:
    if cfg.tls_cert is None or cfg.tls_key is None or not cfg.tls_cert.exists() or not cfg.tls_key.exists():
        return True
    return not_after(cfg.tls_cert.read_bytes()) - dt.datetime.now(dt.UTC) < RENEW_CERT_BEFORE


async def enroll_k8s(channel: grpc.aio.Channel, cfg: AgentConfig, signer: Signer, *, csr_der: bytes = b"") -> bytes:
    """Enroll with the pod's projected token (and ask for a client certificate); returns its PEM."""
    from attestation.v1 import collector_pb2 as pb
    from attestation.v1 import collector_pb2_grpc as pb_grpc

    stub = pb_grpc.CollectorStub(channel)  # type: ignore[no-untyped-call]
    request = pb.EnrollRequest(
        node_id=cfg.resolved_node_id(),
        k8s_token=_k8s_token(cfg),
        public_key_spki=signer.public_key().spki_der,
        key_assurance=signer.assurance,
        tls_csr_der=csr_der,
    )
    delay = 0.25
    for attempt in range(1, 9):
        try:
            resp = await stub.Enroll(request, timeout=10.0)
            break
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or attempt == 8:
                raise
            _logger.warning("Kubernetes enrollment failed (%s); retrying", exc.code().name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    if resp.key_id != signer.key_id:
        raise RuntimeError(f"collector registered key {resp.key_id}, expected {signer.key_id}")
    return bytes(resp.tls_cert_pem)


async def bootstrap_k8s(cfg: AgentConfig, signer: Signer, spool: Spool) -> None:
    """In Kubernetes: over the shared bootstrap certificate, enroll this node's key with the
    pod's projected token and get the node's own client certificate, when it has none or it
    is about to expire. Nothing to do when neither is needed."""
    if cfg.k8s_token_file is None or cfg.tls_bootstrap_cert is None or cfg.tls_bootstrap_key is None:
        return
    if spool.get_meta("enrolled_key_id") == signer.key_id and not _needs_certificate(cfg):
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    assert cfg.tls_ca is not None and cfg.tls_cert is not None and cfg.tls_key is not None
    node_id = cfg.resolved_node_id()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .sign(key, hashes.SHA256())
    )
    channel = tls_channel(
        cfg.collector,
        cfg.tls_ca.read_bytes(),
        cfg.tls_bootstrap_cert.read_bytes(),
        cfg.tls_bootstrap_key.read_bytes(),
        cfg.tls_server_name,
    )
    try:
        cert = await enroll_k8s(channel, cfg, signer, csr_der=csr.public_bytes(serialization.Encoding.DER))
    finally:
        await channel.close()
    spool.set_meta("enrolled_key_id", signer.key_id)
    if not cert:
        raise ConfigError(
            "the collector enrolled this node but issued no client certificate: set issue_ca_cert "
            "and issue_ca_key in its config"
        )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_atomic(cfg.tls_key, key_pem, 0o600)
    _write_atomic(cfg.tls_cert, cert, 0o644)
    _logger.info("enrolled key %s for node %s; client certificate until %s", signer.key_id, node_id, not_after(cert))


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


async def ensure_enrolled(channel: grpc.aio.Channel, cfg: AgentConfig, signer: Signer, spool: Spool) -> None:
    if spool.get_meta("enrolled_key_id") == signer.key_id:
        return
    if cfg.k8s_token_file is not None and not cfg.join_token and cfg.join_token_file is None:
        await enroll_k8s(channel, cfg, signer)
        spool.set_meta("enrolled_key_id", signer.key_id)
        _logger.info("enrolled key %s for node %s (Kubernetes token)", signer.key_id, cfg.resolved_node_id())
        return
    token = join_token(cfg)
    if token is None:
        raise ConfigError(
            "this node's key is not enrolled yet: give a one-time join token (join_token_file in the config, "
            "or GPUAUDIT_JOIN_TOKEN) created with `gpuaudit-collector token create`"
        )
    await enroll(channel, cfg.resolved_node_id(), signer, token)
    spool.set_meta("enrolled_key_id", signer.key_id)
    _logger.info("enrolled key %s for node %s", signer.key_id, cfg.resolved_node_id())


async def run_agent(
    cfg: AgentConfig,
    *,
    stop: asyncio.Event | None = None,
    source: GpuSource | None = None,
    metrics: AgentMetrics | None = None,
) -> None:
    stop = stop or asyncio.Event()
    metrics = metrics or AgentMetrics(__version__)
    metrics.serve(cfg.metrics_listen)
    signer = open_signer(cfg.key, create=True)
    cfg.spool.parent.mkdir(parents=True, exist_ok=True)
    spool = Spool(cfg.spool)
    signer = resume_rotation(cfg.key, signer, spool)
    source = source or make_source(cfg)
    node_id = cfg.resolved_node_id()
    devices = source.devices()
    metrics.set_devices(devices)
    _logger.info("agent %s on %s: %d GPU(s), key %s", __version__, node_id, len(devices), signer.key_id)
    agg = WindowAggregator(
        node_id,
        read_boot_id(cfg.proc_root),
        __version__,
        devices,
        window_s=cfg.window_s,
        bucket_s=cfg.bucket_s,
        sample_interval_s=cfg.sample_interval_s,
    )
    # Sources that can attest in confidential-computing mode (NvmlSource) bind the chain to the GPUs.
    chain = ChainSigner(
        signer,
        spool,
        cc=getattr(source, "cc_attestation", None),
        spool_max_bytes=cfg.spool_max_bytes,
        spool_max_age_s=cfg.spool_max_age_s,
    )
    clock = ClockWatch(tolerance_s=max(2.0, 2 * cfg.sample_interval_s))
    spool_full = False  # log a full disk once per episode, not every window
    pods = make_pod_resolver(cfg)
    attributor = make_attributor(cfg, pods)
    reconciler = make_reconciler(cfg, devices, pods)
    await bootstrap_k8s(cfg, signer, spool)
    channel = open_channel(cfg)
    streamer: asyncio.Task[None] | None = None
    try:
        await ensure_enrolled(channel, cfg, signer, spool)
        # After a restart mid-rotation the previous key's statements (its hand-over) go first.
        stream, streamer = start_streams(channel, node_id, signer.key_id, spool)
        metrics.attach(spool, signer.key_id, stream.stats)
        rotation = RotationSchedule(cfg.key, cfg.key_rotation_days)
        metrics.watch(chain, clock, rotation.period_s)
        next_t = time.monotonic()
        while not stop.is_set():
            sample = await asyncio.to_thread(metrics.sample, source)
            # Still inside a window signed before a restart, or the clock went back (agent/clock.py):
            # that time is closed for good; its signed statements stand.
            use, jump = clock.admit(sample.t, chain.last_end_ms)
            if jump is not None:
                chain.note(jump)
            if not use:
                await asyncio.sleep(cfg.sample_interval_s)
                continue
            with metrics.scrape("attribution"):
                sample = reconciler.apply(attribute(sample, attributor, cfg.tenant_rules))
            if streamer is not None:  # never hand over while the collector refuses this chain
                # key_rotation_days has passed, or `gpuaudit-agent rotate-key` asked for a new key.
                rotation.check(chain, int(sample.t * 1000))
            for w in agg.add(sample):
                chain.log_checkpoint = stream.latest_checkpoint
                try:
                    seq, _ = chain.sign(w)
                except WindowOverlapError as exc:
                    _logger.error("not signing a window: %s", exc)
                    continue
                except SpoolFullError as exc:
                    if not spool_full:
                        _logger.error("%s", exc.diagnostics())
                    spool_full = True
                    continue
                if spool_full:
                    _logger.warning("the spool has room again; the lost windows are recorded in seq %d", seq)
                    spool_full = False
                metrics.statement_signed()
                if chain.signer.key_id != stream.key_id:  # this statement handed over to a new key
                    finish_rotation(cfg.key, spool, chain.signer)
                    stream, streamer = switch_stream(channel, node_id, chain.signer.key_id, spool, stream, streamer)
                    metrics.attach(spool, chain.signer.key_id, stream.stats)
                _logger.debug("signed window %d..%d as seq %d", w.start_ms, w.end_ms, seq)
                stream.notify()
            if streamer is not None and streamer.done():
                failure = streamer.exception()
                if not isinstance(failure, RejectedError):
                    streamer.result()
                else:
                    metrics.rejected(failure.reason)
                # The collector refused a statement: the chain cannot go on past it, so streaming
                # stops, but sampling and signing go on into the spool and nothing is lost.
                _logger.error(
                    "streaming stopped: %s; statements are kept in the spool %s until an operator acts",
                    failure,
                    cfg.spool,
                )
                streamer = None
            next_t += cfg.sample_interval_s
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (suspend, slow NVML): resynchronise instead of bursting
                next_t = time.monotonic()
                delay = 0
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass
        last = agg.flush()
        if last is not None:
            try:
                chain.sign(last)
            except (WindowOverlapError, SpoolFullError) as exc:
                _logger.error("the last window is not signed: %s", exc)
            stream.notify()
        stream.close_when_drained()
        try:
            if streamer is not None:
                await asyncio.wait_for(streamer, timeout=10)
        except (TimeoutError, RejectedError):
            pass
        left = spool.count(chain.signer.key_id)
        if left:
            _logger.warning("%d statement(s) stay in the spool for the next start", left)
    finally:
        if streamer is not None and not streamer.done():
            streamer.cancel()  # an error ends the run: nothing more is sent from a spool about to close
        metrics.detach_spool()
        metrics.close()
        source.close()
        await channel.close()
        spool.close()
