"""Step 0: reading the bundle. Its media type and top-level sections, and the checks of
shape every later step applies to what it reads (``as_obj``, ``as_b64``, ...): a value of
the wrong shape raises ``BundleError`` with the path of what is wrong, and messages never
echo a long value back (``shown``).
"""

from __future__ import annotations

import binascii
from typing import Any

from attestation import strictjson
from attestation.bundlereader import BundleSource
from attestation.dsse import Envelope, Signature
from attestation.errors import VerificationError
from attestation.merkle import HASH_SIZE

BUNDLE_MEDIA_TYPE = "application/vnd.gpuaudit.bundle.v1+json"


class BundleError(VerificationError):
    """The bundle cannot be read: not JSON, truncated, the wrong media type or missing sections."""

    reason = "malformed_bundle"


def shown(value: Any) -> str:
    """A value for a one-line message: short, never a long number or a whole object."""
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, int):
        text = str(value) if abs(value) < 10**30 else f"a {len(str(abs(value)))}-digit number"
        return text
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return ascii(value) if len(value) <= 40 else ascii(value[:40])[:-1] + "…'"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def as_b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise BundleError(f"{what}: expected a base64 string")
    try:
        return binascii.a2b_base64(value, strict_mode=True)  # = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(f"{what}: not base64") from exc


def as_count(value: Any, what: str, *, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    if type(value) is not int or value < 0:
        raise BundleError(f"{what}: expected a non-negative integer, got {shown(value)}")
    return value


def as_obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BundleError(f"{what}: expected an object")
    return value


def as_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BundleError(f"{what}: expected a string")
    return value


def as_hashes(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list):
        raise BundleError(f"{what}: expected a list of base64 hashes")
    out = [as_b64(h, f"{what}[{i}]") for i, h in enumerate(value)]
    for i, h in enumerate(out):
        if len(h) != HASH_SIZE:
            raise BundleError(f"{what}[{i}]: {len(h)} bytes, expected {HASH_SIZE}")
    return out


def as_envelope(value: Any, what: str) -> Envelope:
    """A DSSE envelope from its JSON form, with a one-line reason when it is malformed."""
    o = as_obj(value, what)
    payload = as_b64(o.get("payload"), f"{what}.payload")
    ptype = as_str(o.get("payloadType"), f"{what}.payloadType")
    raw = o.get("signatures")
    if not isinstance(raw, list):
        raise BundleError(f"{what}.signatures: expected a list")
    sigs = []
    for j, sig in enumerate(raw):
        so = as_obj(sig, f"{what}.signatures[{j}]")
        keyid = so.get("keyid", "")
        if not isinstance(keyid, str):
            raise BundleError(f"{what}.signatures[{j}].keyid: expected a string")
        sigs.append(Signature(keyid=keyid, sig=as_b64(so.get("sig"), f"{what}.signatures[{j}].sig")))
    return Envelope(payload=payload, payload_type=ptype, signatures=tuple(sigs))


def open_bundle(src: BundleSource) -> dict[str, Any]:
    """0. Every top-level member but the entries, parsed and checked for shape (the entries
    are read one at a time later)."""
    try:
        media = src.member("media_type")
        if media != BUNDLE_MEDIA_TYPE:
            raise BundleError(f"media_type {shown(media)}; this verifier reads {BUNDLE_MEDIA_TYPE}")
        src.check_members(skip=("media_type",))
        doc = {name: src.member(name) for name in src.members if name != "entries"}
    except strictjson.NotIJSONError as exc:
        raise BundleError(f"the bundle is not JSON that every parser reads alike: {exc}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"the bundle is not JSON (truncated or damaged?): {one_line(exc)}") from exc
    for name, kind in (("log", dict), ("nodes", list)):
        if not isinstance(doc.get(name), kind):
            raise BundleError(f"the bundle's {name!r} is missing or not a{'n object' if kind is dict else ' list'}")
    if not src.entries_is_list:
        raise BundleError("the bundle's 'entries' is missing or not a list")
    if doc.get("consistency") is not None:
        as_obj(doc["consistency"], "consistency")
    return doc


def one_line(exc: BaseException) -> str:
    """An exception's message for a person: one line, no long numbers echoed back."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "int_max_str_digits" in text or "Exceeds the limit" in text:
        return "a number with too many digits"
    return text if len(text) <= 200 else text[:200] + "…"
