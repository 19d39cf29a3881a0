"""``parse_statement`` decodes with orjson first and settles every failure with the standard
library's ``json``, the reference reading. These tests hold the two paths to one answer:
for any payload, the same ``UsageWindow`` or the same error as the reference alone."""

from __future__ import annotations

import json
from typing import Any

import hypothesis.strategies as hs
import pytest
from hypothesis import HealthCheck, given, settings
from test_statement import G0, W0, _doc, _set, full_window

from attestation import statement as st
from attestation.errors import SchemaError
from attestation.statement import parse_statement, statement_bytes


def _reference(payload: bytes) -> st.UsageWindow:
    """The parse with the standard library's decoder only."""
    return st._parse_doc(st._reference_decode(payload))


def _outcome(fn: Any, payload: bytes) -> tuple[str, Any]:
    try:
        return "ok", fn(payload)
    except SchemaError as exc:
        return "schema", (exc.reason, str(exc))
    except (ValueError, RecursionError) as exc:  # as collector.ingest treats them
        return type(exc).__name__, str(exc)


def _same(payload: bytes) -> tuple[str, Any]:
    got, want = _outcome(parse_statement, payload), _outcome(_reference, payload)
    assert got == want, payload[:200]
    return got


def _with(path: str, raw_value: str) -> bytes:
    """A valid statement with the JSON text ``raw_value`` at ``path`` (spliced in as text, so
    that values json.dumps would never write, such as NaN or 10**30, reach the decoder)."""
    marker = "__MARK__"
    doc = _set(_doc(), path, marker)
    return json.dumps(doc).replace(f'"{marker}"', raw_value).encode()


# Inputs on which orjson and json disagree, in known fields, unknown fields and whole payloads.
DIVERGENT = [
    # integers beyond 64 bits: json gives an int, orjson a float
    (f"{G0}.energy_end_mj", "123456789012345678901234567890", "ok"),
    (f"{G0}.index", "-123456789012345678901234567890", "schema"),
    (f"{G0}.future_counter", "123456789012345678901234567890", "ok"),
    (f"{W0}.share_permille", "99999999999999999999999", "schema"),
    # NaN and infinities: json reads them, orjson refuses
    (f"{G0}.future_metric", "NaN", "ok"),
    (f"{G0}.power_mean_mw", "NaN", "schema"),
    (f"{G0}.future_metric", "1e400", "ok"),
    (f"{G0}.future_metric", "-Infinity", "ok"),
    # lone surrogates: json reads them, orjson refuses
    ("predicate.node.boot_id", '"\\ud800"', "ok"),
    (f"{G0}.model", '"\\udfff\\ud800"', "ok"),
    (f"{G0}.future_label", '"\\ud800"', "ok"),
]


@pytest.mark.parametrize(("path", "raw", "outcome"), DIVERGENT, ids=[f"{p}={r[:12]}" for p, r, _ in DIVERGENT])
def test_inputs_the_decoders_read_differently_parse_as_the_reference_does(path: str, raw: str, outcome: str) -> None:
    assert _same(_with(path, raw))[0] == outcome


def test_a_64_bit_integer_beyond_the_signed_range_reads_the_same() -> None:
    payload = _with(f"{G0}.energy_end_mj", str(2**64 - 1))
    kind, window = _same(payload)
    assert kind == "ok" and window.gpus[0].energy_end_mj == 2**64 - 1


def test_duplicate_keys_keep_the_last_value_in_both() -> None:
    text = statement_bytes(full_window()).decode()
    payload = text.replace('"boot_id":', '"boot_id":"first","boot_id":', 1).encode()
    kind, window = _same(payload)
    assert kind == "ok" and window.boot_id == full_window().boot_id


@pytest.mark.parametrize(
    "payload",
    [
        b"\xef\xbb\xbf" + statement_bytes(full_window()),  # UTF-8 byte-order mark: json reads it
        statement_bytes(full_window()).decode().encode("utf-16"),  # json detects UTF-16
        b"\xff\xfe{}",
        b"{",
        b"",
        b"[" * 5000,
        b"null",
        statement_bytes(full_window()) + b"\x00",
    ],
    ids=["bom", "utf-16", "bad-utf8", "truncated", "empty", "deep", "null", "trailing-nul"],
)
def test_whole_payloads_the_decoders_read_differently(payload: bytes) -> None:
    _same(payload)


def test_a_valid_statement_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without this the fallback could hide a fast path that never succeeds."""

    def no_reference(payload: bytes) -> Any:
        raise AssertionError("the reference decoder was used for a valid statement")

    monkeypatch.setattr(st, "_reference_decode", no_reference)
    assert parse_statement(statement_bytes(full_window())) == full_window()


# Any JSON value, including those only the standard library writes (NaN, big integers).
_json_values = hs.recursive(
    hs.none()
    | hs.booleans()
    | hs.integers(min_value=-(2**70), max_value=2**70)
    | hs.floats(allow_nan=True, allow_infinity=True)
    | hs.text(max_size=8),
    lambda inner: hs.lists(inner, max_size=3) | hs.dictionaries(hs.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_PATHS = [
    f"{G0}.energy_end_mj",
    f"{G0}.util_mean_permille",
    f"{G0}.serial",
    f"{G0}.unavailable",
    f"{G0}.health",
    f"{G0}.series.util_permille",
    f"{G0}.workloads",
    f"{W0}.share_permille",
    f"{W0}.tenant",
    "predicate.window.end_ms",
    "predicate.chain.prev",
    "predicate.node_io",
    "predicate.unavailable",
    "predicate.future",
    "subject",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=hs.sampled_from(_PATHS), value=_json_values)
def test_any_value_anywhere_parses_as_the_reference_does(path: str, value: Any) -> None:
    _same(_with(path, json.dumps(value)))
