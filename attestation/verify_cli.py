"""gpuaudit-verify: verify a vendor bundle offline (docs/vendor-guide.md).

Exit codes: 0 everything verifies; 1 verification failed (every failure is listed with
its reason); 2 usage error (bad arguments, unreadable file).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from attestation.cc import NVIDIA_DEVICE_ROOT_SHA256, load_cc_root
from attestation.errors import KeyFileError, SchemaError
from attestation.keys import PublicKey
from attestation.verify import PinnedLogKey, Report, verify_bundle


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(ms: int) -> str:
    s = ms // 1000
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_report(report: Report, path: str) -> str:
    lines = [f"bundle {path}"]
    cp = report.checkpoint
    if cp is not None:
        lines.append(f"log {cp.origin}: checkpoint of {cp.size} leaves, root {cp.root.hex()}")
    if report.log_key_pinned_by:
        lines.append(f"log key pinned by {' and '.join(report.log_key_pinned_by)}")
    if report.previous is not None:
        lines.append(f"earlier checkpoint of {report.previous.size} leaves checked for consistency")
    lines.append(f"{report.entries} envelopes, {report.keys} enrolled keys")
    for serial in sorted(report.gpus):
        g = report.gpus[serial]
        ws = sorted(g.windows)
        lines.append("")
        lines.append(
            f"GPU {serial}  {', '.join(sorted(g.models))} on {', '.join(sorted(g.node_ids))}  "
            f"{_time(ws[0][0])} .. {_time(ws[-1][1])}, {len(ws)} windows"
        )
        for tenant, u in sorted(g.tenants.items()):
            lines.append(f"  {tenant:32s} {u.gpu_hours:10.3f} GPU-h {u.energy_kwh:10.3f} kWh")
        if g.windows_without_energy:
            lines.append(f"  energy unavailable in {g.windows_without_energy} window(s)")
        gaps = g.gaps()
        if gaps:
            lines.append(f"  gaps ({len(gaps)}):")
            lines.extend(f"    {_time(s)} .. {_time(e)} ({_duration(e - s)})" for s, e in gaps)
        else:
            lines.append("  gaps: none")
    for gap in report.explained_gaps:
        lines.append(
            f"explained gap: node {gap['node_id']} seq {gap['from_seq']}..{gap['to_seq']} dropped unsent by its "
            f"agent ({gap['reason']}), signed in seq {gap['explained_by_seq']}: usage in that time is unknown"
        )
    for pseudonym, s in sorted(report.tenant_summaries.items()):
        if isinstance(s, dict):
            lines.append(
                f"tenant {pseudonym}: ultimate parent {s.get('ultimate_parent_country') or 'unknown'}, "
                f"KYC {s.get('kyc_level') or 'unknown'}; opacity {s.get('opacity_score')}: "
                + ("; ".join(map(str, s.get("opacity_reasons") or [])) or "none")
                + " (signed by the collector)"
            )
    lines.append("")
    if report.ok:
        lines.append("VERIFIED: every signature, chain and inclusion check passed")
        if report.previous is None:
            lines.append(
                "  (no --previous-checkpoint: the log's consistency with an earlier checkpoint was not checked)"
            )
        else:
            lines.append(f"  the log extends the earlier checkpoint of {report.previous.size} leaves")
        if not report.log_key_pinned_by:
            lines.append(
                "  (log key trusted on first use: compare it with the data center's, then pin it with --log-key)"
            )
    else:
        lines.append(f"FAILED: {len(report.failures)} verification failure(s)")
        lines.extend(f"  {f}" for f in report.failures)
    return "\n".join(lines)


def read_previous(path: Path) -> str:
    """A checkpoint note from ``path``: the note itself, or the checkpoint of an earlier bundle."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        try:
            note = json.loads(text)["log"]["checkpoint"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is JSON but not a bundle with log.checkpoint") from exc
        if not isinstance(note, str):
            raise ValueError(f"{path}: log.checkpoint is not a string")
        return note
    return text


def read_log_key(path: Path) -> PublicKey:
    """The collector's log public key from ``path``: a PEM public key (SubjectPublicKeyInfo,
    e.g. from ``gpuaudit-collector log public-key``), or a bundle whose ``log.public_key``
    you confirmed with the data center. Raises ValueError with what is wrong."""
    data = path.read_bytes()
    text = data.lstrip()
    if text.startswith(b"{"):
        try:
            spki = base64.b64decode(json.loads(data)["log"]["public_key"]["spki"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is JSON but not a bundle with log.public_key.spki") from exc
    elif b"PRIVATE KEY-----" in text:
        raise ValueError(f"{path} is a private key: give the log's public key (never copy the private key)")
    elif text.startswith(b"-----BEGIN PUBLIC KEY-----"):
        try:
            spki = serialization.load_pem_public_key(data).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path} is not a usable PEM public key: {exc}") from exc
    else:
        raise ValueError(f"{path} is neither a PEM public key (-----BEGIN PUBLIC KEY-----) nor a bundle")
    try:
        return PublicKey.from_spki(spki)
    except KeyFileError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="gpuaudit-verify",
        description="Verify a gpuaudit vendor bundle offline: signatures by enrolled keys, chain continuity, "
        "windows, energy counters, inclusion in the log's signed checkpoint and, given an earlier checkpoint, "
        "the log's consistency with it. Prints GPU-hours and energy per GPU serial and tenant. "
        "Exit 0: verified; 1: verification failed; 2: usage error.",
    )
    ap.add_argument("bundle", type=Path, metavar="FILE", help="bundle from gpuaudit-collector export")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument(
        "--previous-checkpoint",
        type=Path,
        metavar="FILE",
        help="a checkpoint you kept (the note, or the earlier bundle itself): the log must extend it; "
        "an earlier bundle also pins the log key (this bundle's must be the same)",
    )
    ap.add_argument(
        "--log-key",
        type=Path,
        metavar="FILE",
        help="the collector's log public key as the data center gave it to you (PEM, from `gpuaudit-collector "
        "log public-key`, or a bundle you confirmed): the bundle's log key must be this one "
        "(without it, the bundle's own key is trusted on first use)",
    )
    ap.add_argument(
        "--cc-root",
        type=Path,
        metavar="FILE",
        help="trust anchor (one certificate, PEM or DER) for GPU confidential-computing attestation reports, "
        "instead of the pinned NVIDIA Device Identity CA (SHA-256 " + NVIDIA_DEVICE_ROOT_SHA256[:16] + "…)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        data = ns.bundle.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {ns.bundle}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    previous = None
    pins: list[PinnedLogKey] = []
    if ns.log_key is not None:
        try:
            pins.append(PinnedLogKey(read_log_key(ns.log_key), f"--log-key {ns.log_key}"))
        except OSError as exc:
            print(f"error: cannot read the log key {ns.log_key}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        except ValueError as exc:
            print(f"error: cannot read the log key {ns.log_key}: {exc}", file=sys.stderr)
            return 2
    if ns.previous_checkpoint is not None:
        try:
            previous = read_previous(ns.previous_checkpoint)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            print(f"error: cannot read the previous checkpoint {ns.previous_checkpoint}: {exc}", file=sys.stderr)
            return 2
        if ns.previous_checkpoint.read_bytes().lstrip().startswith(b"{"):  # an earlier bundle: its key too
            try:
                pins.append(
                    PinnedLogKey(read_log_key(ns.previous_checkpoint), f"the earlier bundle {ns.previous_checkpoint}")
                )
            except (OSError, ValueError) as exc:
                print(f"error: cannot read the log key of {ns.previous_checkpoint}: {exc}", file=sys.stderr)
                return 2
    cc_root = None
    if ns.cc_root is not None:
        try:
            cc_root = load_cc_root(ns.cc_root.read_bytes())
        except OSError as exc:
            print(f"error: cannot read the CC root {ns.cc_root}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        except SchemaError as exc:
            print(f"error: the CC root {ns.cc_root} is not a certificate: {exc}", file=sys.stderr)
            return 2
    report = verify_bundle(data, previous, cc_root=cc_root, pinned_log_keys=tuple(pins))
    if ns.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_report(report, str(ns.bundle)))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
