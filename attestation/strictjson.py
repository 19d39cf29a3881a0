"""JSON that every conforming parser reads the same way.

RFC 8259 leaves some inputs to the parser: a duplicated member name (§4: "the names
within an object SHOULD be unique"; parsers keep the first value, the last, or fail), a
``\\u`` escape naming a lone surrogate (§8.2: "the behavior of software that receives
JSON texts containing such values is unpredictable"), numbers beyond what the reader can
hold exactly (§6), a byte-order mark (§8.1: senders MUST NOT add one, parsers MAY ignore
it). Python's ``json`` also reads ``NaN``, ``Infinity`` and ``-Infinity``, which are not
JSON at all. A signed document that two parsers read differently says two things under
one signature: a collector could store one reading while a vendor's verifier, or anyone
else's tool, shows the other. gpuaudit therefore reads signed JSON as I-JSON (RFC 7493
§2) and refuses, before any field is looked at:

1. a leading byte-order mark (U+FEFF);
2. bytes that are not UTF-8 (RFC 8259 §8.1), UTF-8-encoded surrogates and overlong forms
   included;
3. a member name that appears twice in one object, at any depth (objects inside arrays
   included), compared after unescaping (``"a"`` and ``"\\u0061"`` are the same name);
4. a ``\\u`` escape that leaves a lone surrogate in a name or a string (a high surrogate
   not followed by a low one, or a low one alone; RFC 7493 §2.1);
5. an integer (a number without fraction or exponent) beyond +-(2**53 - 1), the range
   every IEEE 754 binary64 reader holds exactly (RFC 7493 §2.2);
6. ``NaN``, ``Infinity``, ``-Infinity``, and any number too large for binary64 (``1e400``:
   some readers give infinity, others fail).

Everything else RFC 8259 accepts is read as ``json`` reads it. Unicode noncharacters
(U+FFFF, ...) are not refused: every UTF-8 decoder reads them the same.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from attestation.errors import Error

MAX_SAFE_INTEGER = 2**53 - 1
# Digits of MAX_SAFE_INTEGER: a longer integer is out of range without being converted
# (and never reaches int()'s limit on digits, which would raise a bare ValueError).
_SAFE_DIGITS = len(str(MAX_SAFE_INTEGER))
_BOM = b"\xef\xbb\xbf"


class NotIJSONError(Error, ValueError):
    """The text is not JSON that every conforming parser reads the same way."""

    reason = "not_ijson"


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise NotIJSONError(
                    f"duplicate member name {ascii(k)} in one object: JSON parsers differ on which value they keep"
                )
            seen.add(k)
    return d


def _int(text: str) -> int:
    digits = text[1:] if text.startswith("-") else text
    if len(digits) > _SAFE_DIGITS or abs(int(text)) > MAX_SAFE_INTEGER:
        shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} digits)"
        raise NotIJSONError(f"integer {shown} is beyond +-(2**53 - 1): JSON parsers differ on its value")
    return int(text)


def _float(text: str) -> float:
    v = float(text)
    if math.isinf(v):
        raise NotIJSONError(f"number {text[:40]} is too large for IEEE 754 binary64")
    return v


def _constant(name: str) -> Any:
    raise NotIJSONError(f"{name} is not JSON (RFC 8259 §6 has no NaN or infinities)")


# Two decoders: integers are checked one by one (a Python call each, the costliest check)
# only when the text has a run of 16 or more digits: a shorter integer is within 2**53 - 1.
_decoder = json.JSONDecoder(object_pairs_hook=_pairs, parse_float=_float, parse_constant=_constant)
_decoder_ints = json.JSONDecoder(object_pairs_hook=_pairs, parse_int=_int, parse_float=_float, parse_constant=_constant)
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))  # digit -> "0", else " "
_LONG_RUN = b"0" * _SAFE_DIGITS
# Where a surrogate can come from once the bytes are strict UTF-8: a \u escape of one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(v: Any) -> str | None:
    """The first name or string in ``v`` holding a surrogate code point, or None."""
    stack = [v]
    while stack:
        x = stack.pop()
        if type(x) is str:
            if not x.isascii():
                try:
                    x.encode("utf-8")
                except UnicodeEncodeError:
                    return x
        elif type(x) is dict:
            stack.extend(x)
            stack.extend(x.values())
        elif type(x) is list:
            stack.extend(x)
    return None


def loads(data: bytes | str) -> Any:
    """Decode ``data`` as JSON, refusing what conforming parsers may read differently
    (the module docstring's list). Raises NotIJSONError, or json.JSONDecodeError (a
    ValueError) for text that is not JSON at all."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if raw.startswith(_BOM):
            raise NotIJSONError("a byte-order mark precedes the JSON text (RFC 8259 §8.1)")
        try:
            text = raw.decode("utf-8")  # strict: no surrogates, no overlong forms
        except UnicodeDecodeError as exc:
            raise NotIJSONError(f"not UTF-8 at byte {exc.start}: {exc.reason} (RFC 8259 §8.1)") from exc
        long_digits = _LONG_RUN in raw.translate(_DIGITS)
    else:
        text = data
        if text.startswith("\ufeff"):
            raise NotIJSONError("a byte-order mark precedes the JSON text (RFC 8259 §8.1)")
        long_digits = True
    try:
        doc = (_decoder_ints if long_digits else _decoder).decode(text)
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # int()'s limit on digits, before _int sees the text
        if isinstance(exc, NotIJSONError):
            raise
        raise NotIJSONError(f"a number is too long to read alike: {exc}") from exc
    bad = _lone_surrogate(doc) if _SURROGATE_ESCAPE.search(text) or not isinstance(data, bytes) else None
    if bad is not None:
        raise NotIJSONError(f"the string {ascii(bad)[:60]} holds a lone surrogate (a \\u escape of half a UTF-16 pair)")
    return doc
