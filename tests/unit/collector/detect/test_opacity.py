"""Opacity: explained reasons from the tenants file; missing tenant is fully opaque."""

from __future__ import annotations

import dataclasses
import datetime as dt

from collector.detect.opacity import OpacityConfig, opacity
from collector.tenants import Tenant

RUN = dt.date(2026, 3, 2)
CFG = OpacityConfig()
TRANSPARENT = Tenant(
    id="t-ok",
    name="Old Co",
    country="DE",
    registered=dt.date(2001, 1, 1),
    ultimate_parent_country="DE",
    beneficial_owners_disclosed=True,
    nominee_directors=False,
    declared_use="LLM inference serving",
    kyc_level="enhanced",
)
OPAQUE = Tenant(
    id="t-x",
    country="MY",
    registered=dt.date(2025, 10, 14),
    parent="Holding Ltd",
    parent_country="VG",
    ultimate_parent_country="unknown",
    beneficial_owners_disclosed=False,
    nominee_directors=True,
    declared_use="AI inference and rendering",
    kyc_level="basic",
)


def test_missing_tenant_is_fully_opaque() -> None:
    o = opacity(None, True, RUN, CFG)
    assert o.score == 1.0 and o.reasons and "not in the tenants file" in o.reasons[0]


def test_transparent_tenant_scores_zero_when_not_training() -> None:
    o = opacity(TRANSPARENT, False, RUN, CFG)
    assert o.score == 0.0 and o.reasons == ()


def test_transparent_tenant_declaring_inference_but_training_is_flagged() -> None:
    o = opacity(TRANSPARENT, True, RUN, CFG)
    assert any("contradicted" in r for r in o.reasons)
    research = dataclasses.replace(TRANSPARENT, declared_use="research and model training")
    assert opacity(research, True, RUN, CFG).score == 0.0


def test_opaque_tenant_has_every_reason() -> None:
    o = opacity(OPAQUE, True, RUN, CFG)
    text = " | ".join(o.reasons)
    for needle in ("beneficial owners", "nominee", "ultimate parent country unknown", "young", "contradicted", "basic"):
        assert needle in text, f"missing reason {needle!r} in {text}"
    assert o.score >= 0.8


def test_offshore_parent_young_entity_and_countries_of_concern_are_configurable() -> None:
    t = dataclasses.replace(TRANSPARENT, ultimate_parent_country="KY", registered=dt.date(2025, 12, 1))
    o = opacity(t, False, RUN, CFG)
    assert any("offshore" in r for r in o.reasons) and any("young" in r for r in o.reasons)
    o2 = opacity(t, False, RUN, OpacityConfig(young_entity_days=30, countries_of_concern=("KY",)))
    assert not any("young" in r for r in o2.reasons)
    assert any("country of concern" in r for r in o2.reasons)
    assert 0.0 < o.score < 1.0


def test_unknown_fields_only_count_where_silence_is_the_finding() -> None:
    o = opacity(Tenant(id="bare"), False, RUN, CFG)
    text = " | ".join(o.reasons)
    assert "beneficial owners not recorded" in text and "KYC level not recorded" in text
    assert "nominee" not in text and "offshore" not in text
