"""Confidential computing on a real NVIDIA GPU: the agent's NVML calls against the real
driver, and what they return verified offline up to NVIDIA's pinned root.

Runs only where NVML starts (``pytest -m gpu tests/gpu``) and the GPUs are in
confidential-computing mode; elsewhere it skips with the reason NVML gave.
"""

from __future__ import annotations

import datetime as dt

import pytest

from agent.sources.base import SourceError
from attestation.cc import CcReport, cc_nonce, verify_cc_report

pytestmark = pytest.mark.gpu

KEY_ID, SEQ, PREV = "ed25519:real-gpu-cc", 0, None


def test_real_gpu_reports_verify_up_to_nvidias_root() -> None:
    try:
        from agent.sources.nvml import NvmlSource

        source = NvmlSource(proc_root="/proc")
    except SourceError as exc:
        pytest.skip(f"NVML cannot start here: {exc}")
    try:
        nonce = cc_nonce(KEY_ID, SEQ, PREV)
        ev = source.cc_attestation(nonce)
    finally:
        source.close()
    if not ev.reports:
        pytest.skip(f"no GPU attested here: {ev.reason}")
    at = dt.datetime.now(dt.UTC)
    for i, report in ev.reports.items():
        chain = ev.chains.get(i)
        assert chain is not None, f"GPU {i} attested but NVML gave no certificate chain: {ev.chain_unavailable.get(i)}"
        problems = verify_cc_report(CcReport(nonce, report, chain), KEY_ID, SEQ, PREV, at=at)
        assert problems == [], f"GPU {i}: " + "; ".join(f"{p.reason}: {p.message}" for p in problems)
