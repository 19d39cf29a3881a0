"""attestation.strictjson: JSON that every conforming parser reads the same way (RFC 8259,
I-JSON RFC 7493), table-driven: what is refused, and the near misses that are not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from attestation import strictjson
from attestation.strictjson import MAX_SAFE_INTEGER, NotIJSONError

REFUSED = [
    ("bom", b'\xef\xbb\xbf{"a":1}', "byte-order mark"),
    ("not-utf8", b'{"a":"\xff"}', "not UTF-8"),
    ("encoded-surrogate", b'{"a":"\xed\xa0\x80"}', "not UTF-8"),
    ("overlong", b'{"a":"\xc0\xaf"}', "not UTF-8"),
    ("utf-16", '{"a":1}'.encode("utf-16"), "not UTF-8"),
    ("duplicate", b'{"a":1,"a":2}', "duplicate member name 'a'"),
    ("duplicate-same-value", b'{"a":1,"a":1}', "duplicate member name"),
    ("duplicate-escaped", b'{"a":1,"\\u0061":2}', "duplicate member name 'a'"),
    ("duplicate-nested-in-array", b'{"x":[{"b":{"c":1,"c":2}}]}', "duplicate member name 'c'"),
    ("lone-high", b'{"a":"\\ud800"}', "lone surrogate"),
    ("lone-low", b'{"a":"\\udfff"}', "lone surrogate"),
    ("reversed-pair", b'{"a":"\\udc00\\ud800"}', "lone surrogate"),
    ("high-then-letter", b'{"a":"\\uD800A"}', "lone surrogate"),
    ("lone-in-name", b'{"\\ud800":1}', "lone surrogate"),
    ("lone-in-array", b'["a",["\\udbff"]]', "lone surrogate"),
    ("int-2**53", str(2**53).encode(), "2**53"),
    ("int-minus-2**53", str(-(2**53)).encode(), "2**53"),
    ("int-5000-digits", b"[" + b"9" * 5000 + b"]", "5000 digits"),
    ("nan", b"[NaN]", "NaN is not JSON"),
    ("infinity", b'{"a":Infinity}', "Infinity is not JSON"),
    ("minus-infinity", b"-Infinity", "-Infinity is not JSON"),
    ("overflow", b"[1e400]", "too large"),
]


@pytest.mark.parametrize(("data", "needle"), [(d, n) for _, d, n in REFUSED], ids=[i for i, _, _ in REFUSED])
def test_what_parsers_read_differently_is_refused(data: bytes, needle: str) -> None:
    with pytest.raises(NotIJSONError) as exc:
        strictjson.loads(data)
    assert needle in str(exc.value)


ACCEPTED: list[tuple[str, bytes, Any]] = [
    ("max-safe", str(MAX_SAFE_INTEGER).encode(), MAX_SAFE_INTEGER),
    ("min-safe", str(-MAX_SAFE_INTEGER).encode(), -MAX_SAFE_INTEGER),
    ("long-digits-in-a-string", b'"12345678901234567890"', "12345678901234567890"),
    ("surrogate-pair", b'"\\ud83d\\ude00"', "\U0001f600"),
    ("escaped-backslash-not-an-escape", b'"\\\\ud800"', "\\ud800"),
    ("same-name-in-two-objects", b'[{"a":1},{"a":2}]', [{"a": 1}, {"a": 2}]),
    ("names-differing-in-case", b'{"a":1,"A":2}', {"a": 1, "A": 2}),
    ("whitespace", b' { "a" : [ 1 , 2 ] } ', {"a": [1, 2]}),
    ("finite-float", b"[1.5e300, -0.0]", [1.5e300, -0.0]),
    ("noncharacter", '"\uffff"'.encode(), "\uffff"),
    ("raw-utf8", '"é"'.encode(), "é"),
]


@pytest.mark.parametrize(("data", "value"), [(d, v) for _, d, v in ACCEPTED], ids=[i for i, _, _ in ACCEPTED])
def test_what_every_parser_reads_alike_is_read_as_json_reads_it(data: bytes, value: Any) -> None:
    assert strictjson.loads(data) == value == json.loads(data)


def test_text_that_is_not_json_is_a_decode_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        strictjson.loads(b'{"a":')
