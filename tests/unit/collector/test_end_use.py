"""End-use risk (collector/detect/enduse.py) and severity on both axes (collector/detect/build.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector.cli import detect_config_from_table, format_findings
from collector.detect import build as build_module
from collector.detect.build import build_finding
from collector.detect.config import DetectConfig
from collector.detect.enduse import (
    D5_COUNTRIES,
    DEFAULT_COUNTRIES_OF_CONCERN,
    EndUseConfig,
    EndUseRisk,
    EndUseRiskOf,
    end_use_risk,
    screen_tenant,
)
from collector.detect.findings import SEVERITIES
from collector.detect.opacity import OpacityConfig, opacity
from collector.detect.runs import Run
from collector.screening import ScreeningList, ScreeningSource
from collector.tenants import Tenant, TenantDirectory

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "screening"
T0_MS = 1_772_424_000_000  # 2026-03-02T04:00:00Z
TODAY = dt.date(2026, 12, 6)

# Fully disclosed, enhanced KYC, declared training: opacity 0.
DISCLOSED = """
[[tenant]]
id = "{id}"
name = "{name}"
country = "{country}"
registered = 2001-01-01
ultimate_parent_country = "{upc}"
beneficial_owners_disclosed = true
nominee_directors = false
declared_use = "research and model training"
kyc_level = "enhanced"
"""


def _dir(*tenants: tuple[str, str, str, str], screening: ScreeningSource | None = None) -> TenantDirectory:
    text = "".join(DISCLOSED.format(id=i, name=n, country=c, upc=u) for i, n, c, u in tenants)
    return TenantDirectory.from_toml(text).with_screening(screening)


def _list() -> ScreeningSource:
    lst = ScreeningList.from_csv_text(
        (FIXTURES / "csl_excerpt.csv").read_text(), dt.date(2026, 12, 5), origin="csl.csv"
    )
    return ScreeningSource.of(lst, max_age_days=7)


def _run(tenants: dict[str, float], gpus: int) -> Run:
    """A coupled run of ``gpus`` GPUs for an hour (no GPU model: FLOP class 0)."""
    total = float(gpus * 3600)
    s = sum(tenants.values())
    return Run(
        group="+".join(sorted(tenants)),
        start_ms=T0_MS,
        last_hit_end_ms=T0_MS + 3_600_000,
        tenants={t: total * v / s for t, v in tenants.items()},
        large_start_ms=T0_MS,
        large_last_end_ms=T0_MS + 3_600_000,
        gpu_s=total,
        peak_gpus=float(gpus),
        peak_nodes=gpus // 8,
        last_gpus=float(gpus),
        last_window_s=60.0,
        coupling_state="coupled",
    )


def _finding(
    directory: TenantDirectory,
    tenants: dict[str, float],
    gpus: int,
    cfg: DetectConfig | None = None,
    assess: bool = True,
) -> Any:
    cfg = cfg or DetectConfig()

    def opacity_of(t: str, start_ms: int) -> Any:
        return opacity(directory.get(t), True, dt.date(2026, 3, 2), cfg.opacity)

    risk_of = EndUseRiskOf(directory, cfg.end_use, today=lambda: TODAY) if assess else None
    return build_finding(_run(tenants, gpus), cfg, opacity_of, {}, T0_MS + 600_000, T0_MS + 3_600_000, risk_of=risk_of)


def test_default_countries_are_d5_with_macau_and_hong_kong() -> None:
    assert {"CN", "RU", "IR", "KP", "BY", "VE", "MM"} <= set(D5_COUNTRIES)
    assert "KH" not in D5_COUNTRIES and "CY" not in D5_COUNTRIES, "Cambodia (2026) and Cyprus (2024) left D:5"
    assert set(DEFAULT_COUNTRIES_OF_CONCERN) == {*D5_COUNTRIES, "MO", "HK"}
    assert len(set(DEFAULT_COUNTRIES_OF_CONCERN)) == len(DEFAULT_COUNTRIES_OF_CONCERN)


def test_a_fully_disclosed_tenant_in_a_country_of_concern_has_opacity_zero_but_end_use_risk() -> None:
    d = _dir(("t-cn", "Example Cloud Training Ltd", "CN", "CN"))
    t = d.get("t-cn")
    assert opacity(t, True, dt.date(2026, 3, 2), OpacityConfig()).score == 0.0
    r = end_use_risk(t, True, EndUseConfig())
    assert r.score == 0.5 and r.country_of_concern and not r.screening_hit
    (reason,) = r.reasons
    assert "registered in CN" in reason and "ultimate parent in CN" in reason
    assert r.level(EndUseConfig()) == "elevated"


def test_owners_and_parents_chains_count_once_and_minor_owners_weigh_less() -> None:
    text = """
[[tenant]]
id = "a"
country = "SG"
parents = [{ name = "Mid Holding", country = "SG" }, { name = "Top Group", country = "RU" }]
[[tenant]]
id = "b"
country = "SG"
beneficial_owners = [{ name = "J", country = "CN", share = 0.1 }, { name = "K", country = "SG", share = 0.9 }]
[[tenant]]
id = "c"
country = "SG"
beneficial_owners = [{ name = "J", country = "MO", share = 0.55 }]
"""
    d = TenantDirectory.from_toml(text)
    cfg = EndUseConfig()
    a = end_use_risk(d.get("a"), True, cfg)
    assert a.score == 0.5 and a.country_of_concern and "ultimate parent Top Group in RU" in a.reasons[0]
    b = end_use_risk(d.get("b"), True, cfg)
    assert b.score == 0.15 and not b.country_of_concern and b.level(cfg) == "none"
    c = end_use_risk(d.get("c"), True, cfg)
    assert c.score == 0.4 and c.country_of_concern, "an owner of 55% owns the tenant: the country floor applies"
    assert end_use_risk(d.get("a"), True, dataclasses.replace(cfg, countries_of_concern=("KP",))).score == 0.0


def test_declared_use_contradicted_is_an_end_use_reason() -> None:
    t = Tenant(id="x", country="DE", declared_use="video transcoding")
    r = end_use_risk(t, True, EndUseConfig())
    assert r.score == 0.3 and "contradicted" in r.reasons[0]
    assert end_use_risk(t, False, EndUseConfig()).score == 0.0


def test_screening_records_the_list_date_and_explains_each_hit() -> None:
    src = _list()
    d = TenantDirectory.from_toml(
        """
[[tenant]]
id = "t-f"
name = "Fictitia Quantum Computing Limited"
country = "SG"
beneficial_owners = [{ name = "Iwan Fiktivov", country = "SG", share = 0.3 }]
"""
    )
    s = screen_tenant(d.get("t-f"), src, EndUseConfig(), TODAY)  # type: ignore[arg-type]
    assert s.list_date == dt.date(2026, 12, 5) and s.list_origin == "csl.csv" and s.warning is None
    assert {(h.role, h.entry_id) for h in s.hits} == {
        ("tenant", "3f0c9a1e2b7d4c58a6e1f09b2d3c4e5f6a7b8c9d"),
        ("beneficial owner", "90001"),
    }
    r = end_use_risk(d.get("t-f"), True, EndUseConfig(), s)
    assert r.screening_hit and r.score >= 0.9
    j = r.to_json()
    assert j["screening"]["list_date"] == "2026-12-05" and len(j["screening"]["hits"]) == 2
    el = [h for h in j["screening"]["hits"] if h["role"] == "tenant"][0]
    assert el["list"].startswith("Entity List") and el["score"] == 1.0
    old = screen_tenant(d.get("t-f"), src, EndUseConfig(), dt.date(2026, 12, 20))  # type: ignore[arg-type]
    assert old.warning is not None and "15 days old" in old.warning


def test_without_a_list_the_finding_says_nobody_was_screened() -> None:
    d = _dir(("t-de", "Open Labs GmbH", "DE", "DE"))
    r = EndUseRiskOf(d, today=lambda: TODAY)("t-de", T0_MS)
    assert r.score == 0.0 and r.screening.list_date is None
    assert r.screening.warning is not None and "no screening list configured" in r.screening.warning


# -- severity on both axes --------------------------------------------------------------


def test_a_1024_gpu_run_by_a_fully_disclosed_tenant_headquartered_in_d5_is_at_least_medium() -> None:
    d = _dir(("t-cn", "Example Cloud Training Ltd", "CN", "CN"))
    f = _finding(d, {"t-cn": 1.0}, 1024)
    assert f.opacity.score == 0.0
    assert SEVERITIES.index(f.severity) >= SEVERITIES.index("medium"), f.evidence["severity_reason"]
    assert f.severity == "high", "elevated end-use risk: one step below size class 3"
    sb = f.evidence["severity_set_by"]
    assert sb["tenant"] == "t-cn" and sb["axes"] == ["end_use"] and sb["opacity"]["level"] == "transparent"
    assert any("country of concern" in r for r in sb["reasons"]), sb
    assert "end-use" in f.evidence["severity_reason"] and "registered in CN" not in f.evidence["severity_reason"]
    assert f.evidence["levels"] == {"opacity": "transparent", "end_use": "elevated", "screening_hit": False}
    j = f.to_json()
    assert j["end_use_risk"]["score"] == 0.5 and j["opacity"]["score"] == 0.0
    # The same tenant registered in Germany: low, as before.
    f_de = _finding(_dir(("t-de", "Example Cloud Training GmbH", "DE", "DE")), {"t-de": 1.0}, 1024)
    assert f_de.severity == "low" and f_de.evidence["severity_set_by"]["axes"] == []


def test_the_country_floor_makes_a_small_run_medium() -> None:
    d = _dir(("t-mo", "Example Macau Compute Ltd", "MO", "MO"))
    f = _finding(d, {"t-mo": 1.0}, 64)
    assert f.severity == "medium"
    assert f.evidence["severity_set_by"]["end_use"]["floor"] == "at least medium: country of concern"


def test_a_screening_hit_makes_a_run_at_least_high() -> None:
    d = _dir(("t-hit", "Fictitia Quantum Computing Limited", "SG", "SG"), screening=_list())
    small = _finding(d, {"t-hit": 1.0}, 64)
    assert small.severity == "high", small.evidence["severity_reason"]
    assert "screening hit" in small.evidence["severity_set_by"]["end_use"]["floor"]
    big = _finding(d, {"t-hit": 1.0}, 1024)
    assert big.severity == "critical", "a high end-use risk gives the size class"
    hits = big.to_json()["end_use_risk"]["screening"]["hits"]
    assert [h["entry_id"] for h in hits] == ["3f0c9a1e2b7d4c58a6e1f09b2d3c4e5f6a7b8c9d"]
    assert big.evidence["levels"]["screening_hit"] is True


def test_the_material_member_of_concern_is_the_findings_tenant_and_an_immaterial_one_is_not() -> None:
    d = _dir(("t-de", "Open Labs GmbH", "DE", "DE"), ("t-cn", "Example Cloud Training Ltd", "CN", "CN"))
    f = _finding(d, {"t-de": 0.7, "t-cn": 0.3}, 1024)
    assert f.tenant == "t-cn" and f.severity == "high"
    assert f.end_use_risk is not None and f.end_use_risk.score == 0.5
    assert any(r.startswith("t-cn: ") for r in f.end_use_risk.reasons)
    members = {m["tenant"]: m for m in f.evidence["members"]}
    assert members["t-cn"]["end_use_risk"]["score"] == 0.5 and members["t-de"]["end_use_risk"]["score"] == 0.0
    tiny = _finding(d, {"t-de": 0.95, "t-cn": 0.05}, 1024)
    assert tiny.tenant == "t-de" and tiny.severity == "low", "a 5% member does not set the severity"


def test_without_risk_of_severity_and_json_are_as_before() -> None:
    d = _dir(("t-cn", "Example Cloud Training Ltd", "CN", "CN"))
    f = _finding(d, {"t-cn": 1.0}, 1024, assess=False)
    assert f.severity == "low" and f.end_use_risk is None and "end_use_risk" not in f.to_json()
    assert f.evidence["levels"]["end_use"] == "not_assessed"


def test_floors_and_countries_are_configurable_under_detect_end_use() -> None:
    cfg = detect_config_from_table({"end_use": {"countries_of_concern": ["DE"], "country_floor": "high"}})
    assert cfg.end_use.countries_of_concern == ("DE",)
    f = _finding(_dir(("t-de", "Open Labs GmbH", "DE", "DE")), {"t-de": 1.0}, 64, cfg)
    assert f.severity == "high"
    with pytest.raises(Exception, match="country_floor"):
        detect_config_from_table({"end_use": {"country_floor": "severe"}})
    with pytest.raises(Exception, match="alpha-2"):
        detect_config_from_table({"end_use": {"countries_of_concern": ["China"]}})


def test_findings_text_shows_both_axes() -> None:
    d = _dir(("t-hit", "Fictitia Quantum Computing Limited", "CN", "CN"), screening=_list())
    text = format_findings([_finding(d, {"t-hit": 1.0}, 1024).to_json()])
    assert "end-use risk 0.95" in text and "screening hit" in text and "csl.csv of 2026-12-05" in text
    assert "severity set by end_use of t-hit" in text


# -- end to end: the engine, with the one-line change docs/detection.md asks of it ---------


def _engine_helpers() -> Any:
    path = Path(__file__).resolve().parent / "detect" / "test_engine.py"
    spec = importlib.util.spec_from_file_location("_engine_stream_helpers", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _with_risk_of(monkeypatch: pytest.MonkeyPatch, tenants: TenantDirectory, cfg: DetectConfig) -> None:
    """What the engine passes once it builds ``EndUseRiskOf(self.tenants, config.end_use)``."""
    from collector.detect import engine

    real: Callable[..., Any] = build_module.build_finding
    risk_of = EndUseRiskOf(tenants, cfg.end_use, today=lambda: TODAY)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("risk_of", risk_of)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "build_finding", wrapped)


def test_offline_detector_rates_a_disclosed_d5_tenants_1024_gpu_run_and_a_screening_hit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from collector.detect.engine import run_offline

    h = _engine_helpers()
    tenants = _dir(
        ("t-cn", "Example Cloud Training Ltd", "CN", "CN"),
        ("t-hit", "Fictitia QC", "SG", "SG"),
        screening=_list(),
    )
    cfg = DetectConfig()
    _with_risk_of(monkeypatch, tenants, cfg)
    (cn,) = run_offline(h.stream([h.Group("cn", 128, "t-cn", "train")], 20), cfg, tenants)
    (hit,) = run_offline(h.stream([h.Group("fq", 10, "t-hit", "train")], 20), cfg, tenants)
    assert cn.gpus == 1024 and cn.opacity.score == 0.0 and cn.severity == "high", cn.evidence["severity_reason"]
    assert hit.gpus == 80 and hit.severity == "high" and hit.end_use_risk is not None
    assert hit.end_use_risk.screening.hits[0].matched_name == "Fictitia QC"


class _Counting(TenantDirectory):
    calls: list[str]

    def get(self, tenant_id: str) -> Tenant | None:
        self.calls.append(tenant_id)
        return super().get(tenant_id)


def test_end_use_risk_of_caches_per_tenant_list_and_day() -> None:
    src = _dir(("t-cn", "Example Cloud Training Ltd", "CN", "CN"))
    d = _Counting(list(src), screening=_list())
    calls = d.calls = []
    day = [TODAY]
    risk_of = EndUseRiskOf(d, today=lambda: day[0])
    r1, r2 = risk_of("t-cn", 0), risk_of("t-cn", 1)
    assert r1 is r2 and calls == ["t-cn"]
    day[0] = TODAY + dt.timedelta(days=10)
    r3 = risk_of("t-cn", 2)
    assert calls == ["t-cn", "t-cn"] and r3.screening.warning is not None, "a new day: the list may be old now"
    assert isinstance(r3, EndUseRisk)
