"""The tenants a command reads: the tenants file, screened against the configured screening
list, and each tenant also under its pseudonym."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collector.config import CollectorConfig
    from collector.screening import ScreeningSource
    from collector.tenants import TenantDirectory

_logger = logging.getLogger(__name__)


def tenants(path: Path | None) -> TenantDirectory:
    """The tenants file at ``path``; without one, no tenant is known."""
    from collector.tenants import TenantDirectory

    return TenantDirectory.load(path) if path is not None else TenantDirectory()


def screening(cfg: CollectorConfig) -> ScreeningSource | None:
    """The configured screening list (``screening_list``, ``--screening-list``), or None; a list
    older than ``screening_max_age_days`` is a warning."""
    if cfg.screening_list is None:
        return None
    from datetime import UTC, datetime

    from collector.screening import ScreeningSource

    source = ScreeningSource(cfg.screening_list, max_age_days=cfg.screening_max_age_days)
    warning = source.staleness(datetime.now(UTC).date())
    if warning:
        _logger.warning("%s", warning)
    return source


def screened(directory: TenantDirectory, cfg: CollectorConfig) -> TenantDirectory:
    """``directory`` screened against the configured list."""
    source = screening(cfg)
    return directory if source is None else directory.with_screening(source)


def site_tenants(cfg: CollectorConfig, directory: TenantDirectory | None = None) -> TenantDirectory:
    """The tenants file (or ``directory``, read from it already), each tenant also under its
    pseudonym (statements name pseudonyms)."""
    from collector.pseudonyms import key_path, load_or_create_key, with_pseudonyms

    directory = tenants(cfg.tenants) if directory is None else directory
    return with_pseudonyms(directory, load_or_create_key(key_path(cfg.db)))
