"""Confidential-computing evidence: NvmlSource.cc_attestation against the fake NVML (real
pynvml error classes and ctypes structures), and the ChainSigner binding reports to the
chain or saying why there are none."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import pynvml
from test_nvml_source import FakeNvml, _h100, _source

from agent.signing import ChainSigner
from agent.sources.cc import CcEvidence
from agent.spool import Spool
from attestation import dsse
from attestation.cc import CC_EVENT, check_cc_report, parse_cc_detail
from attestation.keys import Ed25519Signer
from attestation.statement import Chain, GpuWindow, UsageWindow, parse_statement

# A genuine GPU attestation certificate chain (NVIDIA's nvtrust sample, leaf first, PEM).
CERT_CHAIN = (Path(__file__).resolve().parents[2] / "fixtures" / "cc" / "nvtrust_hopper_chain.pem").read_bytes()


class CcFakeNvml(FakeNvml):
    """A fake NVML whose GPUs answer nvmlDeviceGetConfComputeGpuAttestationReport the way
    NVML does: the report (here: the 37-byte SPDM GET_MEASUREMENTS request with the nonce,
    then a stand-in body), and nvmlDeviceGetConfComputeGpuCertificate with the chain."""

    def __init__(
        self,
        *args: Any,
        report_errors: dict[int, int] | None = None,
        cert_errors: dict[int, int] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        self.report_errors = report_errors or {}
        self.cert_errors = cert_errors or {}

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: Any, nonce: bytes) -> Any:  # noqa: N802
        self.calls.append(("nvmlDeviceGetConfComputeGpuAttestationReport", handle.index))
        if handle.index in self.report_errors:
            raise pynvml.NVMLError(self.report_errors[handle.index])
        r = pynvml.c_nvmlConfComputeGpuAttestationReport_t()
        body = b"\x11\xe0\x01\xff" + bytes(nonce) + b"\x00" + b"measurements-of-gpu-%d" % handle.index
        ctypes.memmove(r.attestationReport, body, len(body))
        r.attestationReportSize = len(body)
        return r

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: Any) -> Any:  # noqa: N802
        self.calls.append(("nvmlDeviceGetConfComputeGpuCertificate", handle.index))
        if handle.index in self.cert_errors:
            raise pynvml.NVMLError(self.cert_errors[handle.index])
        c = pynvml.c_nvmlConfComputeGpuCertificate_t()
        ctypes.memmove(c.attestationCertChain, CERT_CHAIN, len(CERT_CHAIN))
        c.attestationCertChainSize = len(CERT_CHAIN)
        return c


NONCE = bytes(range(32))


def test_cc_mode_off_says_so_and_asks_no_report() -> None:
    fake = CcFakeNvml([_h100(0)])
    ev = _source(fake, gpm=False).cc_attestation(NONCE)
    assert ev == CcEvidence(reason="cc_mode_off")
    assert not any(c[0] == "nvmlDeviceGetConfComputeGpuAttestationReport" for c in fake.calls)


def test_cc_state_unreadable_gives_the_nvml_error() -> None:
    fake = CcFakeNvml([_h100(0)])
    fake.system_errors["nvmlSystemGetConfComputeState"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    assert _source(fake, gpm=False).cc_attestation(NONCE).reason == "NVML_ERROR_NOT_SUPPORTED"


def test_an_old_pynvml_without_the_cc_api() -> None:
    fake = CcFakeNvml([_h100(0)], without=("nvmlSystemGetConfComputeState",))
    assert _source(fake, gpm=False).cc_attestation(NONCE).reason == "cc_api_absent"


def test_cc_mode_on_reports_per_gpu_and_names_the_one_that_failed() -> None:
    fake = CcFakeNvml([_h100(0), _h100(1)], report_errors={1: pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES})
    fake.cc_feature = pynvml.NVML_CC_SYSTEM_FEATURE_ENABLED
    ev = _source(fake, gpm=False).cc_attestation(NONCE)
    assert set(ev.reports) == {0} and NONCE in ev.reports[0], ev
    assert ev.unavailable == {1: "NVML_ERROR_INSUFFICIENT_RESOURCES"}
    assert ev.chains == {0: CERT_CHAIN}, "the chain of the GPU that attested, exactly as NVML gave it"
    assert ("nvmlDeviceGetConfComputeGpuCertificate", 1) not in fake.calls


def test_a_chain_nvml_cannot_give_is_named_and_the_report_kept() -> None:
    fake = CcFakeNvml([_h100(0), _h100(1)], cert_errors={1: pynvml.NVML_ERROR_NOT_SUPPORTED})
    fake.cc_feature = pynvml.NVML_CC_SYSTEM_FEATURE_ENABLED
    ev = _source(fake, gpm=False).cc_attestation(NONCE)
    assert set(ev.reports) == {0, 1}
    assert ev.chains == {0: CERT_CHAIN}
    assert ev.chain_unavailable == {1: "NVML_ERROR_NOT_SUPPORTED"}


def test_an_old_pynvml_without_the_certificate_call() -> None:
    fake = CcFakeNvml([_h100(0)], without=("nvmlDeviceGetConfComputeGpuCertificate",))
    fake.cc_feature = pynvml.NVML_CC_SYSTEM_FEATURE_ENABLED
    ev = _source(fake, gpm=False).cc_attestation(NONCE)
    assert set(ev.reports) == {0} and ev.chains == {}
    assert ev.chain_unavailable == {0: "cc_cert_api_absent"}


def _window(i: int) -> UsageWindow:
    start = 1_700_000_000_000 + i * 60_000
    gpu = GpuWindow(
        index=0, uuid="GPU-a", serial="sn-a", model="NVIDIA H100", mem_total_bytes=1, power_limit_mw=1, samples=1,
        energy_start_mj=i, energy_end_mj=i + 1, power_mean_mw=1, power_max_mw=1, util_mean_permille=1,
        mem_used_max_bytes=1,
        workloads=(),
    )  # fmt: skip
    return UsageWindow("n1", "boot-1", "0.1.0", start, start + 60_000, 1000, Chain("", 0, None), (gpu,))


def test_the_signer_binds_reports_to_the_chain_head_and_explains_the_rest(tmp_path: Path) -> None:
    fake = CcFakeNvml([_h100(0)])
    fake.cc_feature = pynvml.NVML_CC_SYSTEM_FEATURE_ENABLED
    source = _source(fake, gpm=False)
    signer = Ed25519Signer.generate()
    spool = Spool(tmp_path / "spool.db")
    cs = ChainSigner(signer, spool, cc=source.cc_attestation, cc_every=2)
    stmts = [parse_statement(dsse.verify(cs.sign(_window(i))[1], signer.public_key())) for i in range(3)]
    spool.close()
    for s in (stmts[0], stmts[2]):
        (event,) = [e for e in s.gpus[0].events if e.kind == CC_EVENT]
        report = parse_cc_detail(event.detail)
        problem = check_cc_report(report, s.chain.key_id, s.chain.seq, s.chain.prev)
        assert problem is None, f"seq {s.chain.seq}: {problem}"
        assert report.cert_chain == CERT_CHAIN
    assert stmts[1].unavailable["cc_attestation"] == "see_seq_0", stmts[1].unavailable
    assert "cc_attestation" not in stmts[0].unavailable


def test_without_cc_every_statement_says_why(tmp_path: Path) -> None:
    source = _source(CcFakeNvml([_h100(0)]), gpm=False)
    signer = Ed25519Signer.generate()
    spool = Spool(tmp_path / "spool.db")
    cs = ChainSigner(signer, spool, cc=source.cc_attestation)
    stmts = [parse_statement(dsse.verify(cs.sign(_window(i))[1], signer.public_key())) for i in range(2)]
    spool.close()
    assert [s.unavailable.get("cc_attestation") for s in stmts] == ["cc_mode_off", "cc_mode_off"]
