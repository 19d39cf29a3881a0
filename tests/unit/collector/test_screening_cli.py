"""``screening_list`` / ``--screening-list`` and the list-age warning, from the command line."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from pathlib import Path

import pytest

from collector.cli import build_parser
from collector.cli.directory import screened
from collector.cli.settings import load
from collector.config import load_collector_config
from collector.tenants import TenantDirectory
from core.errors import ConfigError

CSV = Path(__file__).resolve().parents[2] / "fixtures" / "screening" / "csl_excerpt.csv"


def _list(tmp_path: Path, days_old: int) -> Path:
    p = tmp_path / "csl.csv"
    shutil.copyfile(CSV, p)
    t = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days_old)).timestamp()
    os.utime(p, (t, t))
    return p


def test_the_config_key_and_the_detect_flag_name_the_list(tmp_path: Path) -> None:
    conf = tmp_path / "collector.toml"
    conf.write_text(f'screening_list = "{tmp_path / "a.csv"}"\nscreening_max_age_days = 3\n')
    cfg, _ = load_collector_config(conf, {})
    assert cfg.screening_list == tmp_path / "a.csv" and cfg.screening_max_age_days == 3
    ns = build_parser().parse_args(
        ["detect", "--trace", "t.jsonl", "--config", str(conf), "--screening-list", str(tmp_path / "b.csv")]
    )
    cfg, _ = load(ns)
    assert cfg.screening_list == tmp_path / "b.csv", "the flag beats the config file"
    with pytest.raises(ConfigError, match="screening_max_age_days"):
        load_collector_config(None, {"GPUAUDIT_SCREENING_MAX_AGE_DAYS": "-1"})


def test_an_old_list_is_a_warning_at_load_and_the_directory_carries_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, _ = load_collector_config(None, {}, {"screening_list": _list(tmp_path, 10)})
    with caplog.at_level(logging.WARNING):
        d = screened(TenantDirectory(), cfg)
    assert d.screening is not None and len(d.screening.current()) == 5
    assert any("10 days old" in r.getMessage() and "screening_max_age_days 7" in r.getMessage() for r in caplog.records)
    caplog.clear()
    cfg, _ = load_collector_config(None, {}, {"screening_list": _list(tmp_path, 1)})
    with caplog.at_level(logging.WARNING):
        screened(TenantDirectory(), cfg)
    assert not caplog.records, "a current list is no warning"
    cfg, _ = load_collector_config(None, {})
    plain = TenantDirectory()
    assert screened(plain, cfg) is plain, "no list configured: nobody is screened"
