"""Tenant opacity: how little the operator knows about who is really behind a tenant.

Each reason has a weight in 0..1; reasons combine as independent pieces of evidence
(``1 - prod(1 - w)``), so that one strong reason matters and several add up without
exceeding 1. A tenant absent from the tenants file scores 1.0 (fully opaque). A field the
file leaves out is unknown: it raises a reason only where silence is itself the finding
(beneficial owners not disclosed, no KYC recorded).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from collector.tenants import UNKNOWN_COUNTRY, Tenant

_logger = logging.getLogger(__name__)

# Words in a declared use that describe GPU work other than training.
DEFAULT_NON_TRAINING_USES = (
    "inference",
    "serving",
    "render",
    "transcod",
    "video",
    "simulation",
    "hpc",
    "visuali",
    "vdi",
    "gaming",
    "analytics",
    "batch scoring",
)
# Words that make a declared use cover training.
DEFAULT_TRAINING_USES = ("train", "fine-tun", "finetun", "fine tun", "pretrain", "research")


@dataclass(frozen=True)
class OpacityConfig:
    """Weights (0..1) of each opacity reason, and what counts as young or of concern."""

    young_entity_days: int = 365
    """An entity registered fewer than this many days before the run is young."""
    countries_of_concern: tuple[str, ...] = ()
    """ISO alpha-2 codes; an ultimate parent there is a reason of its own."""
    non_training_uses: tuple[str, ...] = DEFAULT_NON_TRAINING_USES
    training_uses: tuple[str, ...] = DEFAULT_TRAINING_USES
    w_no_beneficial_owner: float = 0.35
    w_nominee_directors: float = 0.30
    w_offshore_parent: float = 0.25
    w_unknown_parent: float = 0.30
    w_young_entity: float = 0.15
    w_registration_unknown: float = 0.05
    w_country_of_concern: float = 0.40
    w_declared_use_contradicted: float = 0.30
    w_no_declared_use: float = 0.05
    w_kyc_none: float = 0.30
    w_kyc_basic: float = 0.10


@dataclass(frozen=True)
class Opacity:
    """A score in 0..1 (1: nothing is known) and the reasons, each readable by a person."""

    score: float
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"score": round(self.score, 3), "reasons": list(self.reasons)}


def opacity(tenant: Tenant | None, observed_training: bool, now_date: dt.date, config: OpacityConfig) -> Opacity:
    """Score ``tenant`` as of ``now_date`` (the run's start), given what was observed."""
    if tenant is None:
        return Opacity(1.0, ("tenant not in the tenants file: nothing is known about it",))
    reasons: list[tuple[float, str]] = []

    if tenant.beneficial_owners_disclosed is not True:
        said = "not disclosed" if tenant.beneficial_owners_disclosed is False else "not recorded"
        reasons.append((config.w_no_beneficial_owner, f"beneficial owners {said}"))
    if tenant.nominee_directors is True:
        reasons.append((config.w_nominee_directors, "nominee directors"))

    upc = tenant.ultimate_parent_country
    if upc == UNKNOWN_COUNTRY or (upc is None and tenant.parent is not None):
        reasons.append((config.w_unknown_parent, "ultimate parent country unknown"))
    elif upc is not None and tenant.country is not None and upc != tenant.country:
        why = f"offshore ultimate parent: registered in {tenant.country}, ultimate parent in {upc}"
        reasons.append((config.w_offshore_parent, why))
    concern = {c.upper() for c in config.countries_of_concern}
    if upc is not None and upc in concern:
        reasons.append((config.w_country_of_concern, f"ultimate parent in a country of concern ({upc})"))

    if tenant.registered is None:
        reasons.append((config.w_registration_unknown, "registration date not recorded"))
    else:
        age_days = (now_date - tenant.registered).days
        if age_days < config.young_entity_days:
            why = f"young entity: registered {tenant.registered.isoformat()}, {age_days} days before the run"
            reasons.append((config.w_young_entity, why))

    if observed_training:
        use = (tenant.declared_use or "").strip().lower()
        if not use:
            reasons.append((config.w_no_declared_use, "no declared use, training observed"))
        elif not any(w in use for w in config.training_uses) and any(w in use for w in config.non_training_uses):
            why = f"declared use {tenant.declared_use!r} contradicted: training observed"
            reasons.append((config.w_declared_use_contradicted, why))

    if tenant.kyc_level in (None, "none"):
        reasons.append((config.w_kyc_none, "no KYC" if tenant.kyc_level == "none" else "KYC level not recorded"))
    elif tenant.kyc_level == "basic":
        reasons.append((config.w_kyc_basic, "basic KYC only"))

    keep = 1.0
    for w, _ in reasons:
        keep *= 1.0 - min(max(w, 0.0), 1.0)
    return Opacity(round(1.0 - keep, 4), tuple(r for _, r in reasons))
