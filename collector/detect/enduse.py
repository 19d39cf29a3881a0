"""End-use risk: who a tenant is, beside how little is known about it (``opacity``).

Opacity measures what the operator does not know; end-use risk what it does know that
matters for the mission. A tenant may be fully disclosed and still be registered in, or
owned from, a country under a US arms embargo, or named on a restricted-party list. The
US Commerce Department's guidance of May 13, 2025 (BIS, "Industry Guidance to Prevent
Diversion ...") names Infrastructure-as-a-Service that trains AI models for or on behalf
of parties headquartered in a Country Group D:5 destination or Macau as a red flag, and
warns against self-blinding.

Reasons, each with a weight in 0..1, combine like opacity's (``1 - prod(1 - w)``):

* **Country of concern** (one reason, the strongest of its links): the tenant registered
  there (``w_registered``), a parent or the ultimate parent there (``w_parent``), a
  beneficial owner there (``w_owner`` at ``owner_share_min`` or more or of unknown share,
  ``w_minor_owner`` below). The default countries are Country Group D:5 of 15 CFR part 740
  Supplement No. 1 plus Macau and Hong Kong (docs/detection.md gives the list, its source
  and its date); ``countries_of_concern`` replaces it.
* **Screening hit** (``collector.screening``): the tenant's name (``w_screening_hit``) or a
  parent's or a beneficial owner's (``w_screening_hit_related``) matches an entry of the
  Consolidated Screening List. A hit is a reason to look, not a verdict.
* **Declared use contradicted** by what is observed: training by a tenant that declared
  only inference, rendering and the like (``w_declared_use_contradicted``; opacity counts it
  too: severity takes the larger axis, so it is not counted twice).

Two floors hold whatever the score: a material member registered, or with a parent or a
controlling owner (``owner_control_share``), in a country of concern makes a finding at
least ``country_floor`` (medium); one with a screening hit at least ``screening_floor``
(high). ``collector.detect.build`` applies them (docs/detection.md, "Subjects and severity").
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from collector.detect.opacity import DEFAULT_NON_TRAINING_USES, DEFAULT_TRAINING_USES
from collector.screening import DEFAULT_MIN_SCORE, Hit, ScreeningSource, screen_names
from collector.tenants import Tenant, TenantDirectory

_logger = logging.getLogger(__name__)

# The severities, lowest first (collector.detect.findings re-exports them).
SEVERITIES = ("low", "medium", "high", "critical")

# Country Group D:5 ("U.S. Arms Embargoed Countries") of Supplement No. 1 to 15 CFR part 740,
# as amended through BIS's rule effective February 3, 2026 (Cambodia removed; Cyprus removed
# effective May 30, 2024, 89 FR 40369), with Ethiopia, listed in ITAR 22 CFR 126.1(n) since
# November 2021 (D:5 follows 126.1); plus Macau, which the BIS guidance of May 13, 2025 names
# beside D:5, and Hong Kong, which the EAR treats as China since December 2020 (85 FR 83765).
# ISO 3166 alpha-2. docs/detection.md keeps the list with its sources: check it against the
# eCFR when the country groups change, and set ``countries_of_concern`` where they have.
D5_COUNTRIES = (
    "AF",  # Afghanistan
    "BY",  # Belarus
    "MM",  # Burma
    "CF",  # Central African Republic
    "CN",  # China
    "CD",  # Congo, Democratic Republic of the
    "CU",  # Cuba
    "ER",  # Eritrea
    "ET",  # Ethiopia (ITAR 126.1(n))
    "HT",  # Haiti
    "IR",  # Iran
    "IQ",  # Iraq
    "KP",  # Korea, North
    "LB",  # Lebanon
    "LY",  # Libya
    "NI",  # Nicaragua
    "RU",  # Russia
    "SO",  # Somalia
    "SS",  # South Sudan
    "SD",  # Sudan
    "SY",  # Syria
    "VE",  # Venezuela
    "ZW",  # Zimbabwe
)
DEFAULT_COUNTRIES_OF_CONCERN = (*D5_COUNTRIES, "MO", "HK")
LEVELS = ("none", "elevated", "high")
"""End-use risk levels (also the ``level`` label of ``gpuaudit_findings_end_use``)."""


@dataclass(frozen=True)
class EndUseConfig:
    """Weights (0..1) of each end-use reason, the countries of concern, the screening bar and
    the levels and floors severity uses. ``[detect.end_use]`` in the collector config."""

    countries_of_concern: tuple[str, ...] = DEFAULT_COUNTRIES_OF_CONCERN
    """ISO alpha-2 codes: Country Group D:5, Macau and Hong Kong by default."""
    w_registered: float = 0.5
    w_parent: float = 0.5
    """A parent or the ultimate parent in a country of concern."""
    w_owner: float = 0.4
    """A beneficial owner there, holding ``owner_share_min`` or more (or of unknown share)."""
    w_minor_owner: float = 0.15
    owner_share_min: float = 0.25
    owner_control_share: float = 0.5
    """A beneficial owner holding this much owns the tenant: the country floor applies."""
    w_screening_hit: float = 0.9
    """The tenant's own name is on the screening list."""
    w_screening_hit_related: float = 0.8
    """A parent's or a beneficial owner's name is."""
    w_declared_use_contradicted: float = 0.3
    screening_min_score: float = DEFAULT_MIN_SCORE
    """Name-match score (collector.screening) for a hit."""
    elevated_min: float = 0.2
    """At or above: an elevated end-use risk (severity one step below the size/FLOP class)."""
    high_min: float = 0.8
    """At or above: a high end-use risk (severity the size/FLOP class)."""
    country_floor: str = "medium"
    """Least severity of a run with a material member headquartered or owned in a country of concern."""
    screening_floor: str = "high"
    """Least severity of a run with a material member that has a screening hit."""
    non_training_uses: tuple[str, ...] = DEFAULT_NON_TRAINING_USES
    training_uses: tuple[str, ...] = DEFAULT_TRAINING_USES

    def __post_init__(self) -> None:
        bad = [c for c in self.countries_of_concern if not re.fullmatch(r"[A-Za-z]{2}", c)]
        if bad:
            raise ValueError(f"countries_of_concern: {', '.join(map(repr, bad))} not ISO 3166 alpha-2 codes")
        for name in ("country_floor", "screening_floor"):
            if getattr(self, name) not in SEVERITIES:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not one of {', '.join(SEVERITIES)}")
        if not 0 < self.elevated_min <= self.high_min <= 1 or not 0 < self.screening_min_score <= 1:
            raise ValueError("need 0 < elevated_min <= high_min <= 1 and 0 < screening_min_score <= 1")


@dataclass(frozen=True)
class Screening:
    """One screening of a tenant: the list it used (and that list's date) and the hits."""

    list_origin: str | None
    list_date: dt.date | None
    list_sha256: str | None = None
    hits: tuple[Hit, ...] = ()
    screened: tuple[str, ...] = ()
    """The roles screened ("tenant", "parent", ...); a role without a name is not screened."""
    warning: str | None = None
    """Set when the list is older than ``screening_max_age_days``, or when there is none."""

    def to_json(self) -> dict[str, Any]:
        return {
            "list": self.list_origin,
            "list_date": None if self.list_date is None else self.list_date.isoformat(),
            "list_sha256": self.list_sha256,
            "screened": list(self.screened),
            "hits": [h.to_json() for h in self.hits],
            "warning": self.warning,
        }


NOT_SCREENED = Screening(None, None, warning="no screening list configured (screening_list): names not screened")


@dataclass(frozen=True)
class EndUseRisk:
    """A score in 0..1 (0: nothing of concern is known), the reasons, and the screening."""

    score: float
    reasons: tuple[str, ...]
    screening: Screening = NOT_SCREENED
    country_of_concern: bool = False
    """Registered, a parent, or a controlling owner in a country of concern: ``country_floor``."""
    screening_hit: bool = False
    """A name matched the list: ``screening_floor``."""
    contradiction: float = 0.0
    """The weight of "declared use contradicted: training observed" in ``score`` (0: not
    among the reasons). It rests on the finding's own claim that the GPUs train."""
    contradiction_reason: str = ""

    def without_contradiction(self) -> EndUseRisk:
        """This risk without the declared-use contradiction: what is known of the tenant where
        the finding cannot say its GPUs train (only size says they are one job)."""
        if not self.contradiction:
            return self
        rest = tuple(r for r in self.reasons if r != self.contradiction_reason)
        score = round(1.0 - (1.0 - self.score) / (1.0 - self.contradiction), 4) if rest else 0.0
        return replace(self, score=max(0.0, score), reasons=rest, contradiction=0.0, contradiction_reason="")

    def level(self, config: EndUseConfig) -> str:
        if self.score >= config.high_min:
            return "high"
        return "elevated" if self.score >= config.elevated_min else "none"

    def to_json(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 3),
            "reasons": list(self.reasons),
            "screening": self.screening.to_json(),
        }


NO_RISK = EndUseRisk(0.0, ())


def _combine(weights: list[float]) -> float:
    keep = 1.0
    for w in weights:
        keep *= 1.0 - min(max(w, 0.0), 1.0)
    return round(1.0 - keep, 4)


def _names(tenant: Tenant) -> list[tuple[str, str, bool | None]]:
    """(name, role, person) to screen: the tenant, its parents, its beneficial owners."""
    out: list[tuple[str, str, bool | None]] = []
    if tenant.name:
        out.append((tenant.name, "tenant", False))
    chain = [p.name for p in tenant.parents] or ([tenant.parent] if tenant.parent else [])
    for i, name in enumerate(chain):
        role = "ultimate parent" if i == len(chain) - 1 and len(chain) > 1 else "parent"
        out.append((name, role, False))
    out.extend((o.name, "beneficial owner", None) for o in tenant.beneficial_owners)
    return out


def screen_tenant(tenant: Tenant, source: ScreeningSource | None, config: EndUseConfig, today: dt.date) -> Screening:
    """Screen ``tenant``'s names against the list ``source`` holds now."""
    if source is None:
        return NOT_SCREENED
    lst = source.current()
    names = _names(tenant)
    hits = screen_names(lst, names, min_score=config.screening_min_score)
    roles = [role for _, role, _ in names]
    return Screening(
        lst.origin or source.path.name,
        lst.list_date,
        lst.sha256 or None,
        tuple(hits),
        tuple(dict.fromkeys(roles)),
        source.staleness(today),
    )


def end_use_risk(
    tenant: Tenant | None, observed_training: bool, config: EndUseConfig, screening: Screening = NOT_SCREENED
) -> EndUseRisk:
    """Score ``tenant`` given what was observed and its ``screening`` (``screen_tenant``)."""
    if tenant is None:
        return EndUseRisk(0.0, (), screening)
    concern = {c.upper() for c in config.countries_of_concern}
    reasons: list[tuple[float, str]] = []

    links: list[tuple[float, str, bool]] = []  # (weight, what, sets the country floor)
    if tenant.country in concern:
        links.append((config.w_registered, f"registered in {tenant.country}", True))
    chain = [(p.name, p.country) for p in tenant.parents]
    if not chain and tenant.parent_country is not None:
        chain = [(tenant.parent or "parent", tenant.parent_country)]
    for i, (name, country) in enumerate(chain):
        if country in concern:
            what = "ultimate parent" if i == len(chain) - 1 and len(chain) > 1 else "parent"
            links.append((config.w_parent, f"{what} {name} in {country}", True))
    upc = tenant.ultimate_parent_country
    if upc in concern and not any(c == upc for _, c in chain[-1:]):
        links.append((config.w_parent, f"ultimate parent in {upc}", True))
    for o in tenant.beneficial_owners:
        if o.country in concern:
            share = "share not recorded" if o.share is None else f"{o.share:.0%}"
            minor = o.share is not None and o.share < config.owner_share_min
            control = o.share is not None and o.share >= config.owner_control_share
            w = config.w_minor_owner if minor else config.w_owner
            links.append((w, f"beneficial owner {o.name} ({share}) in {o.country}", control))
    if links:
        w = max(lk[0] for lk in links)
        why = "headquartered or owned in a country of concern (D:5, Macau, Hong Kong by default): "
        reasons.append((w, why + "; ".join(lk[1] for lk in links)))
    country_floor = any(lk[2] for lk in links)

    own = [h for h in screening.hits if h.role == "tenant"]
    related = [h for h in screening.hits if h.role != "tenant"]
    if own:
        reasons.append((config.w_screening_hit, own[0].explain() + (f" (and {len(own) - 1} more)" if own[1:] else "")))
    if related:
        more = f" (and {len(related) - 1} more)" if related[1:] else ""
        reasons.append((config.w_screening_hit_related, related[0].explain() + more))

    contradiction = 0.0
    contradicted = ""
    if observed_training:
        use = (tenant.declared_use or "").strip().lower()
        if use and not any(w in use for w in config.training_uses) and any(w in use for w in config.non_training_uses):
            contradicted = f"declared use {tenant.declared_use!r} contradicted: training observed"
            contradiction = min(max(config.w_declared_use_contradicted, 0.0), 0.999)
            reasons.append((contradiction, contradicted))

    return EndUseRisk(
        _combine([w for w, _ in reasons]),
        tuple(r for _, r in reasons),
        screening,
        country_of_concern=country_floor,
        screening_hit=bool(screening.hits),
        contradiction=contradiction,
        contradiction_reason=contradicted,
    )


@dataclass
class EndUseRiskOf:
    """``risk_of(tenant, start_ms)`` for ``build_finding``: each tenant's end-use risk,
    screened against the directory's list, cached per tenant, list and day (the list may be
    re-read, and grows old, while the collector runs)."""

    tenants: TenantDirectory
    config: EndUseConfig = field(default_factory=EndUseConfig)
    today: Callable[[], dt.date] = field(default=lambda: dt.datetime.now(dt.UTC).date())
    _cache: dict[tuple[str, str | None, dt.date], EndUseRisk] = field(default_factory=dict, init=False, repr=False)
    _warned: set[str] = field(default_factory=set, init=False, repr=False)

    def __call__(self, tenant_id: str, start_ms: int) -> EndUseRisk:
        source = self.tenants.screening
        today = self.today()
        key = (tenant_id, None if source is None else source.current().sha256, today)
        r = self._cache.get(key)
        if r is None:
            if len(self._cache) > 50_000:
                self._cache.clear()
            t = self.tenants.get(tenant_id)
            screening = NOT_SCREENED if t is None else screen_tenant(t, source, self.config, today)
            r = end_use_risk(t, True, self.config, screening)
            self._cache[key] = r
            if screening.warning and source is not None and screening.warning not in self._warned:
                _logger.warning("%s", screening.warning)
                self._warned.add(screening.warning)
        return r


__all__ = [
    "D5_COUNTRIES",
    "DEFAULT_COUNTRIES_OF_CONCERN",
    "LEVELS",
    "NOT_SCREENED",
    "NO_RISK",
    "EndUseConfig",
    "EndUseRisk",
    "EndUseRiskOf",
    "Screening",
    "end_use_risk",
    "screen_tenant",
]
