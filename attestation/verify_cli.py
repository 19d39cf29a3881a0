"""gpuaudit-verify: verify a vendor bundle offline (docs/vendor-guide.md).

Exit codes (attestation/exitcodes.py, the same for every gpuaudit command): 0 everything
verifies; 1 verification failed (every failure is listed with its reason); 2 usage (bad
arguments, a log key or checkpoint file that is not one); 3 a file cannot be read (missing,
no permission); 4 unexpected error. Every error is one ``error:`` line on stderr.

The command line only: the verification is ``attestation.verify``, the report it prints
without ``--json`` is ``attestation.verify.text``.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from attestation import exitcodes
from attestation.cc import NVIDIA_DEVICE_ROOT_SHA256, load_cc_root
from attestation.errors import KeyFileError, SchemaError
from attestation.keys import PublicKey
from attestation.verify import PinnedLogKey, verify_bundle_file
from attestation.verify.text import format_report


def read_previous(path: Path) -> str:
    """A checkpoint note from ``path``: the note itself, or the checkpoint of an earlier bundle."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        try:
            note = json.loads(text)["log"]["checkpoint"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
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
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
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
        "the log's consistency with it, and what the bundle proves about what it leaves out (committed heads). "
        "Prints a summary per tenant and per GPU serial (GPU-hours, energy, coverage of the period, gaps, "
        "problems) and the log key's fingerprint and how it was trusted; --details for every serial and node.",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="the traceback of an unexpected error")
    ap.add_argument("bundle", type=Path, metavar="FILE", help="bundle from gpuaudit-collector export")
    ap.add_argument("--json", action="store_true", help="print the report as JSON (everything, per serial and node)")
    ap.add_argument(
        "--details",
        action="store_true",
        help="after the summary, every serial's usage per tenant and its gaps, every node, every failure",
    )
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
    exitcodes.add_epilogs(
        ap,
        exitcodes.epilog(
            "Here: 1 is a bundle that does not verify, a malformed one included (every failure is listed); "
            "3 a file that cannot be read."
        ),
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    return exitcodes.run_command(lambda: _verify(ns), verbose=ns.verbose)


def _unreadable(what: str, exc: OSError) -> exitcodes.CliError:
    return exitcodes.unavailable(f"cannot read {what}: {exc.strerror or exc}")


def _verify(ns: argparse.Namespace) -> int:
    try:
        with open(ns.bundle, "rb"):
            pass
    except OSError as exc:
        raise _unreadable(str(ns.bundle), exc) from exc
    previous = None
    pins: list[PinnedLogKey] = []
    if ns.log_key is not None:
        try:
            pins.append(PinnedLogKey(read_log_key(ns.log_key), f"--log-key {ns.log_key}"))
        except OSError as exc:
            raise _unreadable(f"the log key {ns.log_key}", exc) from exc
        except ValueError as exc:
            raise exitcodes.usage(f"the log key {ns.log_key}: {exc}") from exc
    if ns.previous_checkpoint is not None:
        try:
            previous = read_previous(ns.previous_checkpoint)
        except OSError as exc:
            raise _unreadable(f"the previous checkpoint {ns.previous_checkpoint}", exc) from exc
        except UnicodeDecodeError as exc:
            raise exitcodes.usage(f"the previous checkpoint {ns.previous_checkpoint} is not UTF-8 text") from exc
        except ValueError as exc:
            raise exitcodes.usage(f"the previous checkpoint {ns.previous_checkpoint}: {exc}") from exc
        if ns.previous_checkpoint.read_bytes().lstrip().startswith(b"{"):  # an earlier bundle: its key too
            try:
                pins.append(
                    PinnedLogKey(read_log_key(ns.previous_checkpoint), f"the earlier bundle {ns.previous_checkpoint}")
                )
            except OSError as exc:
                raise _unreadable(f"the log key of {ns.previous_checkpoint}", exc) from exc
            except ValueError as exc:
                raise exitcodes.usage(f"the log key of {ns.previous_checkpoint}: {exc}") from exc
    cc_root = None
    if ns.cc_root is not None:
        try:
            cc_root = load_cc_root(ns.cc_root.read_bytes())
        except OSError as exc:
            raise _unreadable(f"the CC root {ns.cc_root}", exc) from exc
        except SchemaError as exc:
            raise exitcodes.usage(f"the CC root {ns.cc_root} is not a certificate: {exc}") from exc
    try:
        report = verify_bundle_file(ns.bundle, previous, cc_root=cc_root, pinned_log_keys=tuple(pins))
    except OSError as exc:
        raise _unreadable(str(ns.bundle), exc) from exc
    if ns.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_report(report, str(ns.bundle), details=ns.details))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
