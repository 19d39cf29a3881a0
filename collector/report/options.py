"""What the report reads (``ReportStore``), what it is told (``ReportOptions``), and its error."""

from __future__ import annotations

import dataclasses
import logging
import shlex
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from collector.errors import CollectorError
from collector.report.fmt import MINUTE_MS
from collector.store.base import FindingRecord, StatementRecord

_logger = logging.getLogger(__name__)


class ReportStore(Protocol):
    """What the report reads from a store (``collector.store.base.Store`` has it)."""

    def findings(self, tenant: str | None = None) -> list[FindingRecord]: ...

    def iter_statements(
        self,
        key_id: str | None = None,
        *,
        from_seq: int = 0,
        window_from_ms: int | None = None,
        window_to_ms: int | None = None,
    ) -> Iterator[StatementRecord]: ...


class ReportError(CollectorError):
    """The report cannot be made (unknown finding, nothing stored for it)."""

    reason = "report"

    def __init__(self, message: str, remedy: str = "") -> None:
        super().__init__(message)
        self.remedy = remedy

    def diagnostics(self) -> str:
        return f"{self}\n{self.remedy}" if self.remedy else str(self)


@dataclass(frozen=True)
class ReportOptions:
    """What the report needs besides the store. ``from_detect_config`` fills it from ``[detect]``."""

    mfu: tuple[float, float] = (0.25, 0.55)
    # (FLOP, name) in increasing order: the detector's watch/flag/report thresholds.
    thresholds: tuple[tuple[float, str], ...] = (
        (1e23, "watch"),
        (1e24, "flag"),
        (1e25, "report"),
        (1e26, "report (high)"),
    )
    min_gpus: int = 64
    # Minutes of context shown before the run started.
    lead_in_ms: int = 30 * MINUTE_MS
    max_time_buckets: int = 180
    max_heat_rows: int = 48
    # Rows of the statements table (one per node key); more keys are counted, not listed.
    max_keys: int = 1000
    # How the verification commands name the store (``--db PATH`` or ``--config PATH``).
    store_args: str = ""
    tenant_facts: dict[str, dict[str, str]] = field(default_factory=dict)
    # The log key's fingerprint as gpuaudit-verify prints it ("" when unknown): the report names
    # it, so that whoever verifies a bundle can check the key given with it.
    log_key_fingerprint: str = ""


def store_args_for(db: str | None, config: Path | None) -> str:
    """How the report's commands name the store, as the operator gave it: quoted for a shell,
    without a database password (a report is forwarded; the operator's shell has PGPASSWORD)."""
    if db:
        if "://" in db:
            u = urllib.parse.urlsplit(db)
            if u.password is not None:
                host = u.hostname or ""
                netloc = f"{u.username}@{host}" if u.username else host
                db = urllib.parse.urlunsplit(u._replace(netloc=netloc + (f":{u.port}" if u.port else "")))
        return f"--db {shlex.quote(db)}"
    return f"--config {shlex.quote(str(config))}" if config else ""


def from_detect_config(
    dcfg: Any,
    store_args: str = "",
    tenant_facts: dict[str, dict[str, str]] | None = None,
    log_key_fingerprint: str = "",
) -> ReportOptions:
    """Options from a ``collector.detect.config.DetectConfig``."""
    return ReportOptions(
        mfu=(float(dcfg.mfu_low), float(dcfg.mfu_high)),
        thresholds=(
            (float(dcfg.flop_watch), "watch"),
            (float(dcfg.flop_flag), "flag"),
            (float(dcfg.flop_report), "report"),
            (float(dcfg.flop_report_high), "report (high)"),
        ),
        min_gpus=int(dcfg.min_gpus),
        store_args=store_args,
        tenant_facts=tenant_facts or {},
        log_key_fingerprint=log_key_fingerprint,
    )


def log_key_fingerprint(path: Path) -> str:
    """The fingerprint of the log key at ``path`` (``sha256:...``, as gpuaudit-verify prints it),
    or "" when there is none to read: a report is still worth writing without it."""
    from attestation.errors import Error
    from attestation.keys import load_key_file

    if not path.exists():  # a store no collector has served yet has no log key
        return ""
    try:
        return load_key_file(path).public_key().key_id
    except (Error, OSError) as exc:
        _logger.warning("the report names no log key fingerprint: %s", exc)
        return ""


def tenant_facts(directory: Iterable[Any]) -> dict[str, dict[str, str]]:
    """What a tenants file (``collector.tenants.TenantDirectory``) records, per tenant, as text."""
    out: dict[str, dict[str, str]] = {}
    for t in directory:
        facts = {}
        for f in dataclasses.fields(t):
            name, value = f.name, getattr(t, f.name)
            if name == "id" or value is None or value == ():
                continue
            if isinstance(value, tuple):  # parents, beneficial owners (Tenants v1.1)
                text = "; ".join(_fact_item(v) for v in value)
            else:
                text = "yes" if value is True else "no" if value is False else str(value)
            facts[name.replace("_", " ")] = text
        out[t.id] = facts
    return out


def _fact_item(v: Any) -> str:
    name = getattr(v, "name", str(v))
    more = [str(x) for x in (getattr(v, "country", None),) if x]
    share = getattr(v, "share", None)
    if share is not None:
        more.append(f"{share:.0%}")
    return f"{name} ({', '.join(more)})" if more else str(name)
