"""The agent's configuration file (``/etc/gpuaudit/agent.toml``): one frozen dataclass that
``gpuaudit-agent`` builds once in ``cli.main()``. In ``core`` because the collector reads the
same file: ``detect --prometheus --tenant-rules`` checks an agent config as the agent does.

Example (docs/operator-guide.md has the full reference)::

    node_id = "kl1-n0001"
    collector = "collector.example:7443"
    key = "file:/var/lib/gpuaudit/agent.key"
    spool = "/var/lib/gpuaudit/spool.db"
    join_token_file = "/etc/gpuaudit/join-token"

    [tenants.namespaces]
    team-a = "t-17"
    [tenants.slurm_accounts]
    physics = "t-3"
    [tenants.uids]
    1000 = "t-4"
    [[tenants.lease]]
    tenant = "t-17"
    start = 2026-03-01T00:00:00Z
    end = 2026-04-01T00:00:00Z
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import load
from core.errors import ConfigError
from core.tenantrules import TenantRules, parse_tenant_rules


@dataclass(frozen=True)
class AgentConfig:
    # This node's name in statements (default: the host name).
    node_id: str = ""
    # Collector address host:port.
    collector: str = "127.0.0.1:7443"
    # Signing key URI (file:/path; created 0600 on first start).
    key: str = "file:/var/lib/gpuaudit/agent.key"
    # Durable spool of signed, unacknowledged statements.
    spool: Path = Path("/var/lib/gpuaudit/spool.db")
    # One-time join token for the first start (or a file holding it).
    join_token: str | None = None
    join_token_file: Path | None = None
    # Statement window and sampling.
    window_s: int = 60
    bucket_s: int = 10
    sample_interval_s: float = 1.0
    # "nvml" (real GPUs) or "sim" (plays sim_trace's node sim_node).
    source: str = "nvml"
    sim_trace: Path | None = None
    sim_node: str | None = None
    # Host filesystem roots (the agent runs with the host's /proc and /sys).
    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")
    # The kubelet's pod-resources socket ("" turns the allocation check off, e.g. on Slurm
    # nodes) and its pod log directory (names pod UIDs as <namespace>_<name>_<uid>).
    kubelet_socket: Path | None = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    pod_logs_root: Path = Path("/var/log/pods")
    # mTLS: the operator CA that signed the collector's certificate, and this node's client
    # certificate and key (common name = node_id), from `gpuaudit-collector ca issue`.
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Expected name in the collector's certificate when it differs from the host dialled.
    tls_server_name: str | None = None
    # Kubernetes: the pod's projected service-account token (audience gpuaudit-collector),
    # which enrolls this node's key without a join token and gets the node's client
    # certificate (tls_cert, tls_key) from the collector, over the shared bootstrap
    # certificate (tls_bootstrap_cert, tls_bootstrap_key; common name gpuaudit-bootstrap).
    k8s_token_file: Path | None = None
    tls_bootstrap_cert: Path | None = None
    tls_bootstrap_key: Path | None = None
    # Plaintext gRPC, for development only (must be set explicitly).
    insecure: bool = False
    # Spool bounds: bytes of unacknowledged envelopes, and age of the oldest. When one is hit
    # the agent drops statements and the next statement records it, signed (agent/spool.py).
    # 0 disables a bound.
    spool_max_bytes: int = 256 * 1024 * 1024
    spool_max_age_s: int = 7 * 86400
    # Rotate the signing key after it has signed for this many days (0: only on
    # `gpuaudit-agent rotate-key`). The old key signs the hand-over; agent/rotation.py.
    key_rotation_days: float = 90.0
    # Prometheus /metrics of the agent itself, HOST:PORT ("" turns it off; agent/metrics.py).
    metrics_listen: str = "127.0.0.1:9479"
    tenant_rules: TenantRules = field(default_factory=TenantRules)

    def resolved_node_id(self) -> str:
        return self.node_id or socket.gethostname()


def load_agent_config(
    path: Path | None, env: Mapping[str, str], overrides: Mapping[str, Any] | None = None
) -> AgentConfig:
    cfg, tables = load(AgentConfig, path, env=env, overrides=overrides, tables=("tenants", "tenant_rules"))
    if "tenant_rules" in tables:
        raise ConfigError("unknown key 'tenant_rules' (use a [tenants] table)")
    rules = parse_tenant_rules(tables.get("tenants", {}))
    tls = (cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
    if any(t is not None for t in tls) and not all(t is not None for t in tls):
        raise ConfigError("tls_ca, tls_cert and tls_key must be given together")
    if (cfg.tls_bootstrap_cert is None) != (cfg.tls_bootstrap_key is None):
        raise ConfigError("tls_bootstrap_cert and tls_bootstrap_key must be given together")
    if cfg.tls_bootstrap_cert is not None and (cfg.k8s_token_file is None or cfg.tls_ca is None):
        raise ConfigError("tls_bootstrap_cert needs k8s_token_file and tls_ca/tls_cert/tls_key (Kubernetes enrollment)")
    if cfg.source not in ("nvml", "sim"):
        raise ConfigError(f"source: {cfg.source!r} is not one of nvml, sim")
    if cfg.source == "sim" and cfg.sim_trace is None:
        raise ConfigError('source = "sim" needs sim_trace = "path/to/trace.jsonl"')
    if cfg.window_s <= 0 or cfg.bucket_s <= 0 or cfg.window_s % cfg.bucket_s:
        raise ConfigError("window_s must be a positive multiple of bucket_s")
    if cfg.spool_max_bytes < 0 or cfg.spool_max_age_s < 0:
        raise ConfigError("spool_max_bytes and spool_max_age_s must be 0 (no bound) or positive")
    if not cfg.key_rotation_days >= 0 or cfg.key_rotation_days == float("inf"):
        raise ConfigError("key_rotation_days must be 0 (no scheduled rotation) or a positive number of days")
    if not 0 < cfg.sample_interval_s <= cfg.bucket_s:
        raise ConfigError("sample_interval_s must be positive and at most bucket_s")
    import dataclasses

    return dataclasses.replace(cfg, tenant_rules=rules)
