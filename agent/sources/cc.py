"""What a source can say about confidential-computing evidence (attestation.cc)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class CcEvidence:
    """Per GPU index, an attestation report over the nonce; or, when there is none for
    the whole node, ``reason`` (e.g. "cc_mode_off", an NVML error name). GPUs that could
    not attest while others did have their reason in ``unavailable``.

    ``chains`` holds, per GPU index with a report, its attestation certificate chain as
    NVML returned it (PEM or DER, leaf first); a GPU whose chain could not be read has
    the reason in ``chain_unavailable`` instead, and its report travels without one."""

    reports: dict[int, bytes] = field(default_factory=dict)
    unavailable: dict[int, str] = field(default_factory=dict)
    reason: str | None = None
    chains: dict[int, bytes] = field(default_factory=dict)
    chain_unavailable: dict[int, str] = field(default_factory=dict)


class CcAttester(Protocol):
    def cc_attestation(self, nonce: bytes) -> CcEvidence: ...
