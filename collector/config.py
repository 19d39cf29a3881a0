"""The collector's configuration: one frozen dataclass built once in ``cli.main()``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import load
from core.errors import ConfigError

# The host of the placeholder log origin (collector.log.resolve_origin warns about it).
PLACEHOLDER_LOG_HOST = "log.example.com"


@dataclass(frozen=True)
class CollectorConfig:
    # gRPC listen address. Port 0 picks a free port (tests, demo).
    listen: str = "127.0.0.1:7443"
    # SQLite database file (created with its schema on first start).
    db: Path = Path("gpuaudit.db")
    # PostgreSQL instead of SQLite: a postgresql:// URL (libpq syntax; needs the "postgres"
    # extra). When set, ``db`` is ignored. Several collectors may share one database.
    # ``--db`` accepts either a path or such a URL.
    db_url: str | None = None
    # Prometheus /metrics listen address; empty disables the endpoint.
    metrics_listen: str = "127.0.0.1:9478"
    # Tenants v1 file (TOML); without it every tenant is fully opaque.
    tenants: Path | None = None
    # The Consolidated Screening List (trade.gov's consolidated.csv or .json) that tenants,
    # their parents and beneficial owners are screened against (collector/screening.py); re-read
    # when the file changes. Without it nobody is screened, and findings say so.
    screening_list: Path | None = None
    # A screening list dated more than this many days ago is a warning (log, findings).
    screening_max_age_days: int = 7
    # mTLS: the collector's certificate and key, and the operator CA that signs agents'
    # client certificates (gpuaudit-collector ca init / ca issue). Files are re-read when
    # they change, so certificates rotate without a restart.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Plaintext gRPC, for development on loopback only: without TLS settings the collector
    # refuses to start unless this is set explicitly.
    insecure: bool = False
    # Plaintext gRPC health (only grpc.health.v1) for the kubelet's probes, which cannot
    # speak mTLS; "" turns it off.
    health_listen: str = ""
    # Kubernetes enrollment without a human per node (collector/enroll_k8s.py): the cluster's
    # service-account issuer and its public keys (a JWKS file, from /openid/v1/jwks), the
    # audience the agents' projected tokens are for, and the service account they run as.
    k8s_issuer: str | None = None
    k8s_jwks: Path | None = None
    k8s_audience: str = "gpuaudit-collector"
    k8s_service_account: str = "system:serviceaccount:gpuaudit:gpuaudit-agent"
    # The CA whose key signs the client certificates of nodes that enroll with a Kubernetes
    # token (ca init's ca.crt and ca.key), and their validity in days.
    issue_ca_cert: Path | None = None
    issue_ca_key: Path | None = None
    issue_cert_days: int = 30
    # Identifies this collector in enrollment responses.
    collector_id: str = "collector-1"
    # The transparency log's origin: the first line of its checkpoints and the name of its
    # note key (c2sp.org/tlog-checkpoint, c2sp.org/signed-note). It SHOULD be a schema-less
    # URL-like name the operator owns, e.g. "log.example.org/gpuaudit"; vendors pin it with
    # the log key, and a log keeps it for life. Unset: a store whose log was signed before
    # this setting existed keeps its origin "gpuaudit/<collector_id>"; a new log is signed
    # as the placeholder "log.example.com/gpuaudit/<collector_id>". Either way the collector
    # warns at start until it is set (collector.log.resolve_origin).
    log_origin: str | None = None
    # Largest accepted envelope payload, bytes.
    max_payload_bytes: int = 1 << 20
    # Most envelopes verified and committed in one transaction.
    max_batch: int = 512
    # Join tokens expire after this many seconds unless told otherwise.
    token_ttl_s: int = 86400
    # The transparency log's Ed25519 signing key (PKCS#8 PEM, mode 0600), created on first
    # use. Default: "<db>.log-key.pem" next to the database.
    log_key: Path | None = None
    # Seconds between signed checkpoints of the transparency log (0 disables the task).
    checkpoint_period_s: int = 60

    # Flood limits (collector/limits.py; every refusal is counted and retried by the agent):
    # envelopes/s and burst per node key, streams open at once, seconds for a Hello and for
    # an enrollment, envelopes queued for ingest across streams.
    rate_per_key: float = 20.0
    rate_burst: int = 2000
    max_streams: int = 4096
    hello_timeout_s: float = 10.0
    enroll_timeout_s: float = 10.0
    max_queued: int = 8192

    def log_key_path(self) -> Path:
        return self.log_key if self.log_key is not None else self.db.with_name(self.db.name + ".log-key.pem")

    @property
    def legacy_log_origin(self) -> str:
        """The origin every log had before ``log_origin`` existed."""
        return f"gpuaudit/{self.collector_id}"

    @property
    def placeholder_log_origin(self) -> str:
        """The origin of a new log when ``log_origin`` is unset: example.com is nobody's (RFC 2606)."""
        return f"{PLACEHOLDER_LOG_HOST}/gpuaudit/{self.collector_id}"


def load_collector_config(
    path: Path | None, env: Mapping[str, str], overrides: Mapping[str, Any] | None = None
) -> tuple[CollectorConfig, dict[str, Any]]:
    """Returns the config and the raw ``[detect]`` table (validated by DetectConfig)."""
    cfg, tables = load(CollectorConfig, path, env=env, overrides=overrides, tables=("detect",))
    tls = (cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
    if any(t is not None for t in tls) and not all(t is not None for t in tls):
        raise ConfigError("tls_cert, tls_key and tls_client_ca must be given together")
    if (cfg.k8s_issuer is None) != (cfg.k8s_jwks is None):
        raise ConfigError("k8s_issuer and k8s_jwks must be given together (Kubernetes enrollment)")
    if (cfg.issue_ca_cert is None) != (cfg.issue_ca_key is None):
        raise ConfigError("issue_ca_cert and issue_ca_key must be given together")
    if cfg.issue_cert_days < 1:
        raise ConfigError("issue_cert_days: must be at least 1")
    if cfg.max_batch < 1:
        raise ConfigError("max_batch: must be at least 1")
    if cfg.db_url is not None and not cfg.db_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"db_url: expected a postgresql:// URL, got {cfg.db_url[:40]!r}")
    if cfg.checkpoint_period_s < 0:
        raise ConfigError("checkpoint_period_s: must be 0 (off) or more")
    if cfg.rate_per_key <= 0 or cfg.rate_burst < 1 or cfg.max_streams < 1 or cfg.max_queued < 1:
        raise ConfigError("rate_per_key, rate_burst, max_streams and max_queued must be positive")
    if cfg.hello_timeout_s <= 0 or cfg.enroll_timeout_s <= 0:
        raise ConfigError("hello_timeout_s and enroll_timeout_s must be positive")
    if cfg.screening_max_age_days < 0:
        raise ConfigError("screening_max_age_days: must be 0 or more")
    if cfg.max_payload_bytes < 1024:
        raise ConfigError("max_payload_bytes: must be at least 1024")
    if cfg.log_origin is not None:
        check_log_origin(cfg.log_origin)
    detect = tables.get("detect", {})
    if not isinstance(detect, dict):
        raise ConfigError("[detect] must be a table")
    return cfg, detect


def check_log_origin(origin: str) -> None:
    """A log origin is a note key name: non-empty UTF-8 without spaces or "+" (c2sp.org/signed-note,
    MUST); gpuaudit also wants it schema-less, as c2sp.org/tlog-checkpoint recommends."""
    if not origin or any(c.isspace() or c == "+" or ord(c) < 0x20 for c in origin):
        raise ConfigError(f"log_origin: {origin!r} must be non-empty, without spaces or '+' (c2sp.org/signed-note)")
    if "://" in origin:
        raise ConfigError(
            f"log_origin: {origin!r} has a scheme; write it schema-less, e.g. {origin.split('://', 1)[1]!r} "
            "(c2sp.org/tlog-checkpoint)"
        )
    try:
        origin.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"log_origin: {origin!r} is not valid Unicode") from exc
