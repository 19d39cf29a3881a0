"""Confidential computing: each GPU's attestation report over a nonce, and the certificate
chain whose leaf signed it.

``nvmlSystemGetConfComputeState`` says whether CC is on; only then is
``nvmlDeviceGetConfComputeGpuAttestationReport`` asked, per GPU, and for each GPU that gave
a report ``nvmlDeviceGetConfComputeGpuCertificate`` (its ``attestationCertChain``).
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.sources.cc import CcEvidence
from agent.sources.nvml.api import DeviceHandle
from agent.sources.nvml.common import Ctx


def cc_attestation(
    c: Ctx, handles: Sequence[DeviceHandle | None], no_handle: dict[int, str], nonce: bytes
) -> CcEvidence:
    """Each GPU's CC attestation report over ``nonce`` (32 bytes), or why there is none.

    ``handles[i]`` is GPU ``i``'s handle, None when it could not be opened (``no_handle[i]``
    says why). Never raises.
    """
    nvml = c.nvml
    if not c.has("nvmlSystemGetConfComputeState"):
        return CcEvidence(reason="cc_api_absent")
    try:
        state = nvml.nvmlSystemGetConfComputeState()
    except nvml.NVMLError as e:
        reason = c.reason(e)
        c.note(-1, "cc_attestation", reason)
        return CcEvidence(reason=reason)
    if getattr(state, "ccFeature", None) != c.k.cc_feature_enabled:
        return CcEvidence(reason="cc_mode_off")
    reports: dict[int, bytes] = {}
    unavailable: dict[int, str] = {}
    chains: dict[int, bytes] = {}
    chain_unavailable: dict[int, str] = {}
    for i, h in enumerate(handles):
        if h is None:
            unavailable[i] = no_handle.get(i, "no_handle")
            continue
        try:
            r = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(h, nonce)
        except nvml.NVMLError as e:
            unavailable[i] = c.reason(e)
            c.note(i, "cc_attestation", unavailable[i])
            continue
        size = int(r.attestationReportSize)
        reports[i] = bytes(r.attestationReport[:size])
        chain = cert_chain(c, i, h)
        if isinstance(chain, bytes):
            chains[i] = chain
        else:
            chain_unavailable[i] = chain
    return CcEvidence(
        reports=reports,
        unavailable=unavailable,
        reason=None if reports else "no_gpu_attested",
        chains=chains,
        chain_unavailable=chain_unavailable,
    )


def cert_chain(c: Ctx, i: int, h: DeviceHandle) -> bytes | str:
    """GPU ``i``'s attestation certificate chain as NVML gives it, or (a str) why there is none."""
    nvml = c.nvml
    if not c.has("nvmlDeviceGetConfComputeGpuCertificate"):
        return "cc_cert_api_absent"
    try:
        cert = nvml.nvmlDeviceGetConfComputeGpuCertificate(h)
    except nvml.NVMLError as e:
        reason = c.reason(e)
    else:
        size = int(cert.attestationCertChainSize)
        if 0 < size <= len(cert.attestationCertChain):
            return bytes(cert.attestationCertChain[:size])
        reason = f"cert_chain_size_{size}"
    c.note(i, "cc_cert_chain", reason)
    return reason
