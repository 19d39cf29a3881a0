"""``parse_statement`` first asks the fast recogniser (attestation/statement_fast.py, msgspec)
and leaves everything it cannot vouch for to the reference parser (the standard library's
``json`` and ``attestation.statement.parse``). These tests hold the two paths to one answer: for
any payload, the same ``UsageWindow`` or the same error as the reference alone, and the
fast path really taken for the statements agents sign."""

from __future__ import annotations

import copy
import json
from typing import Any

import hypothesis.strategies as hs
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from test_statement import G0, W0, _doc, _set, bare_window, full_gpu, full_window, minimal_gpu
from test_statement_mig import mig_window

from attestation import statement as st
from attestation import statement_fast
from attestation.errors import SchemaError
from attestation.statement import Dropped, LogCheckpointRef, Rotation, parse_statement, statement_bytes
from attestation.statement import parse as reference


def _reference(payload: bytes) -> st.UsageWindow:
    """The parse with the standard library's decoder only."""
    return reference._parse_doc(reference._reference_decode(payload))


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


# Inputs that JSON parsers read differently (RFC 8259 leaves them to the parser, or they are
# not JSON at all): the reference refuses every one of them, in known fields, unknown fields
# and whole payloads, and the fast path never vouches for one (attestation/strictjson.py).
DIVERGENT = [
    # integers beyond +-(2**53 - 1): binary64 readers round them, others keep them exactly
    (f"{G0}.energy_end_mj", "123456789012345678901234567890", "schema"),
    (f"{G0}.index", "-123456789012345678901234567890", "schema"),
    (f"{G0}.future_counter", "123456789012345678901234567890", "schema"),
    (f"{W0}.share_permille", "99999999999999999999999", "schema"),
    (f"{G0}.energy_end_mj", str(2**53), "schema"),
    (f"{G0}.future_counter", str(-(2**53)), "schema"),
    (f"{G0}.energy_end_mj", str(2**53 - 1), "ok"),
    (f"{G0}.future_counter", str(-(2**53 - 1)), "ok"),
    # NaN and infinities are not JSON; json reads them, msgspec refuses them
    (f"{G0}.future_metric", "NaN", "schema"),
    (f"{G0}.power_mean_mw", "NaN", "schema"),
    (f"{G0}.future_metric", "1e400", "schema"),
    (f"{G0}.future_metric", "-Infinity", "schema"),
    (f"{G0}.future_metric", "1e999999", "schema"),
    # a finite number in an unknown field is read alike (ignored, as readers of v1 must)
    (f"{G0}.future_metric", "1.5e300", "ok"),
    # lone surrogates: json reads them, msgspec refuses them
    ("predicate.node.boot_id", '"\\ud800"', "schema"),
    (f"{G0}.model", '"\\udfff\\ud800"', "schema"),
    (f"{G0}.future_label", '"\\ud800"', "schema"),
    (f"{G0}.future_label", '"x\\udc00"', "schema"),
    (f"{G0}.future_label", '["a", {"b": "\\ud800z"}]', "schema"),
    # a surrogate pair is one character: read alike
    (f"{G0}.model", '"\\ud83d\\ude00"', "ok"),
]


@pytest.mark.parametrize(("path", "raw", "outcome"), DIVERGENT, ids=[f"{p}={r[:12]}" for p, r, _ in DIVERGENT])
def test_inputs_the_decoders_read_differently_parse_as_the_reference_does(path: str, raw: str, outcome: str) -> None:
    kind, detail = _same(_with(path, raw))
    assert kind == outcome, detail
    if outcome == "schema":
        assert detail[0] == "bad_schema", detail


@pytest.mark.parametrize(
    ("raw", "outcome"),
    [
        (b"\xed\xa0\x80", "schema"),  # a surrogate encoded in UTF-8 is not UTF-8
        (b"\xc0\xaf", "schema"),  # an overlong encoding: both refuse
        (b"\xff", "schema"),  # not UTF-8 at all
        (b"\x01", "schema"),  # a raw control character in a string: both refuse
        (b"\x7f", "ok"),  # DEL is not a control character for JSON
        ("é".encode(), "ok"),  # UTF-8 is UTF-8 (the fast path leaves non-ASCII to the reference)
    ],
    ids=["encoded-surrogate", "overlong", "not-utf8", "control", "del", "utf8"],
)
def test_raw_bytes_in_a_string_read_as_the_reference_reads_them(raw: bytes, outcome: str) -> None:
    payload = statement_bytes(full_window()).replace(b'"kl1-n0001"', b'"kl1-' + raw + b'"', 1)
    assert payload != statement_bytes(full_window())
    assert _same(payload)[0] == outcome


def test_a_64_bit_integer_beyond_the_exact_range_is_refused_by_both() -> None:
    kind, (reason, message) = _same(_with(f"{G0}.energy_end_mj", str(2**64 - 1)))
    assert (kind, reason) == ("schema", "bad_schema") and "2**53" in message


def test_a_duplicated_tenant_is_refused_not_read_as_the_last_value() -> None:
    """Issue 16: both parsers kept "t-live" of "tenant":"t-hidden","tenant":"t-live" while
    others read "t-hidden"; a payload that says two things is refused on both paths."""
    text = statement_bytes(full_window()).decode()
    assert '"tenant":"' in text
    payload = text.replace('"tenant":', '"tenant":"t-hidden","tenant":', 1).encode()
    kind, (reason, message) = _same(payload)
    assert (kind, reason) == ("schema", "bad_schema")
    assert "duplicate member name 'tenant'" in message
    assert statement_fast.recognise(payload) is None


# Duplicate names wherever an object may be: top level, nested, inside arrays, in maps
# (unavailable, identity, subject digests), inside an unknown field; spelled differently
# but equal once unescaped.
DUPLICATES = [
    ('"_type":', '"_type":"x","_type":'),
    ('"boot_id":', '"boot_id":"first","boot_id":'),
    ('"seq":', '"seq":1,"seq":'),
    ('"workloads":[{', '"workloads":[{"kind":"user",'),
    ('"share_permille":', '"share_permille":1,"share_permille":'),
    ('"digest":{', '"digest":{"sha256x":"1",'),
    ('"digest":{', '"digest":{"sha256":"00",'),
    ('"gpus":[{', '"gpus":[{"uuid":"GPU-x",'),
    ('"predicate":{', '"predicate":{"future":{"a":1,"a":2},'),
    ('"predicate":{', '"predicate":{"future":[{"a":1,"\\u0061":2}],'),
    ('"node":{', '"node":{"\\u0069d":"other",'),
]


@pytest.mark.parametrize(("find", "replace"), DUPLICATES, ids=[r[:28] for _, r in DUPLICATES])
def test_duplicate_names_at_any_depth_are_refused_by_both(find: str, replace: str) -> None:
    text = statement_bytes(full_window()).decode()
    assert find in text
    payload = text.replace(find, replace, 1).encode()
    kind, detail = _same(payload)
    if "sha256x" in replace:  # distinct names: a control that the check is about equal names
        assert kind == "ok", detail
        return
    assert (kind, detail[0]) == ("schema", "bad_schema") and "duplicate member name" in detail[1], detail


@pytest.mark.parametrize(
    "payload",
    [
        b"\xef\xbb\xbf" + statement_bytes(full_window()),  # UTF-8 byte-order mark: json reads it
        statement_bytes(full_window()).decode().encode("utf-16"),  # json detects UTF-16
        statement_bytes(full_window()).decode().encode("utf-32"),
        b"\xff\xfe{}",
        b"{",
        b"",
        b"[" * 5000,
        b"null",
        statement_bytes(full_window()) + b"\x00",
    ],
    ids=["bom", "utf-16", "utf-32", "bad-utf8", "truncated", "empty", "deep", "null", "trailing-nul"],
)
def test_whole_payloads_the_decoders_read_differently(payload: bytes) -> None:
    kind, detail = _same(payload)
    assert (kind, detail[0]) == ("schema", "bad_schema"), detail


def test_insignificant_whitespace_and_escapes_are_read_alike() -> None:
    """The fast path vouches only for compact payloads; others are the reference's, same answer."""
    doc = json.loads(statement_bytes(full_window()))
    for payload in (json.dumps(doc, indent=2).encode(), json.dumps(doc, ensure_ascii=False).encode()):
        assert statement_fast.recognise(payload) is None
        kind, window = _same(payload)
        assert kind == "ok" and window == full_window()


def _signed_shapes() -> list[st.UsageWindow]:
    """Windows as agents sign them: every optional field, nulls with reasons, MIG, a
    rotation hand-over, a dropped record, a log checkpoint, identity and health."""
    rotated = msgspec.structs.replace(
        full_window(),
        rotation=Rotation(new_key_id="sha256:" + "1" * 64, new_key_spki=b"\x30\x2a" + bytes(42)),
    )
    dropped = msgspec.structs.replace(
        full_window(),
        dropped=Dropped(from_seq=3, to_seq=6, count=4, reason="spool_size", last_digest=full_window().chain.prev or ""),
    )
    extras = msgspec.structs.replace(
        full_window(),
        log_checkpoint=LogCheckpointRef(origin="collector.example/log", size=12, root_sha256="ab" * 32),
        key_assurance="tpm",
        gpus=(
            msgspec.structs.replace(
                full_gpu(0),
                identity={"pci_bus_id": "00000000:18:00.0", "vbios_version": "96.00.74.00.01"},
                health={"xid_last": 79, "retired_pages_sbe": 0},
                mem_reserved_bytes=512 * 1024**2,
                sharing="time_slice",
            ),
            minimal_gpu(1),
        ),
    )
    return [full_window(), full_window(seq=0), bare_window(), mig_window(), rotated, dropped, extras]


@pytest.mark.parametrize(
    "window", _signed_shapes(), ids=["full", "seq-0", "bare", "mig", "rotation", "dropped", "extras"]
)
def test_signed_statements_parse_as_the_reference_does(window: st.UsageWindow) -> None:
    kind, parsed = _same(statement_bytes(window))
    assert kind == "ok" and parsed == window


@pytest.mark.parametrize(
    "window",
    [full_window(), full_window(seq=0), bare_window(), _signed_shapes()[-1]],
    ids=["full", "seq-0", "bare", "extras"],
)
def test_common_statements_take_the_fast_path(window: st.UsageWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without this the reference path could hide a fast path that never succeeds."""
    assert statement_fast.recognise(statement_bytes(window)) == window

    def no_reference(payload: bytes) -> Any:
        raise AssertionError("the reference parser was used for a common valid statement")

    monkeypatch.setattr(reference, "_reference_decode", no_reference)
    assert parse_statement(statement_bytes(window)) == window


def test_unusual_statements_are_left_to_the_reference() -> None:
    """MIG layouts, rotations and dropped records are rare: the fast path does not handle them."""
    for window in _signed_shapes()[3:6]:
        assert statement_fast.recognise(statement_bytes(window)) is None


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


def _paths(v: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and list indices) in a decoded statement, objects and items included."""
    out = [path] if path else []
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, child in items:
        out += _paths(child, (*path, k))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


_DOC = _doc()
_EXTRAS = json.loads(statement_bytes(_signed_shapes()[-1]))
# Every field of a full statement, and a new field inside each of its objects.
_PATHS = sorted(
    {*_paths(_DOC), *((*p, "future") for p in _paths(_DOC) if isinstance(_get(_DOC, p), dict)), ("future",)},
    key=repr,
)
# The optional extras (identity, health, log checkpoint, ...) not in the full statement.
_EXTRA_PATHS = sorted(set(_paths(_EXTRAS)) - set(_PATHS), key=repr)


def _mutated(doc: dict[str, Any], path: tuple[Any, ...], raw: str | None) -> bytes:
    """``doc`` with the JSON text ``raw`` at ``path``, or without that field (None)."""
    doc = copy.deepcopy(doc)
    obj = _get(doc, path[:-1])
    if raw is None:
        if isinstance(obj, list):
            del obj[path[-1]]
        else:
            obj.pop(path[-1], None)
        return json.dumps(doc).encode()
    obj[path[-1]] = "__MARK__"
    return json.dumps(doc).replace('"__MARK__"', raw).encode()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=hs.sampled_from(_PATHS), value=_json_values, delete=hs.booleans())
def test_any_value_anywhere_parses_as_the_reference_does(path: tuple[Any, ...], value: Any, delete: bool) -> None:
    _same(_mutated(_DOC, path, None if delete else json.dumps(value)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=hs.sampled_from(_EXTRA_PATHS), value=_json_values, delete=hs.booleans())
def test_any_value_in_the_optional_extras_parses_as_the_reference_does(
    path: tuple[Any, ...], value: Any, delete: bool
) -> None:
    _same(_mutated(_EXTRAS, path, None if delete else json.dumps(value)))


@pytest.mark.parametrize("path", _PATHS + _EXTRA_PATHS, ids=[".".join(map(str, p)) for p in _PATHS + _EXTRA_PATHS])
def test_each_field_null_or_absent_parses_as_the_reference_does(path: tuple[Any, ...]) -> None:
    doc = _DOC if path in _PATHS else _EXTRAS
    for raw in ("null", None, "-1", "1001", "1.0", "true", '"x"', "[]", "{}"):
        _same(_mutated(doc, path, raw))


# The rules across fields, which the fast path checks after decoding.
_CROSS_FIELD = [
    (("predicate", "chain", "prev"), '"' + "g" * 64 + '"'),
    (("predicate", "chain", "prev"), '"' + "A" * 64 + '"'),
    (("predicate", "chain", "prev"), '"' + "a" * 63 + '"'),
    (("predicate", "chain", "seq"), "0"),
    (("predicate", "chain", "prev_key_id"), '"sha256:' + "1" * 64 + '"'),
    (("predicate", "chain", "prev_key_digest"), '"' + "1" * 64 + '"'),
    (("predicate", "window", "end_ms"), "1700000040000"),
    (("predicate", "window", "end_ms"), "1700000039999"),
    (("predicate", "gpus", 0, "split_method"), '""'),
    (("predicate", "gpus", 0, "split_method"), '"by_magic"'),
    (("predicate", "gpus", 0, "split_method"), '"mig_slices"'),
    (("predicate", "gpus", 0, "sharing"), '"mps"'),
    (("predicate", "gpus", 0, "sharing"), '"shared"'),
    (("predicate", "gpus", 0, "workloads", 0, "kind"), '"vm"'),
    (("predicate", "gpus", 1, "unavailable"), '{"power_mean_mw": "x"}'),
    (("predicate", "gpus", 1, "unavailable"), "{}"),
    (("predicate", "gpus", 0, "serial"), "null"),
    (("predicate", "log_checkpoint"), '{"origin": "o", "size": 1, "root_sha256": "' + "AB" * 32 + '"}'),
    (("predicate", "log_checkpoint"), '{"origin": "o", "size": 1, "root_sha256": "' + "ab" * 32 + '"}'),
    (("subject",), "[]"),
    (("_type",), '"https://in-toto.io/Statement/v0.1"'),
    (("predicateType",), '"https://gpuaudit.dev/usage-window/v2"'),
]


@pytest.mark.parametrize(
    ("path", "raw"), _CROSS_FIELD, ids=[f"{'.'.join(map(str, p))}={r[:10]}" for p, r in _CROSS_FIELD]
)
def test_rules_across_fields_parse_as_the_reference_does(path: tuple[Any, ...], raw: str) -> None:
    _same(_mutated(_DOC, path, raw))


def test_a_chain_started_by_rotation_parses_as_the_reference_does() -> None:
    doc = copy.deepcopy(_DOC)
    doc["predicate"]["chain"].update(seq=0, prev=None, epoch=1, prev_key_id="sha256:" + "1" * 64)
    for digest in ("1" * 64, None):
        doc["predicate"]["chain"]["prev_key_digest"] = digest
        _same(json.dumps(doc).encode())
    doc["predicate"]["chain"]["epoch"] = 0
    _same(json.dumps(doc).encode())


# -- injected problems at random depths: both paths refuse, with bad_schema -------------

# Every object of a full statement (objects inside arrays included), and every value.
_OBJECT_PATHS = [(), *(p for p in _paths(_DOC) if isinstance(_get(_DOC, p), dict))]
_ANY_PATHS = sorted(_paths(_DOC), key=repr)
_LONE = ["\\ud800", "\\udbff", "\\udc00", "\\udfff", "\\udc00\\ud800", "x\\ud800y", "\\ud800\\u0041"]


def _compact_with(doc: dict[str, Any], path: tuple[Any, ...], raw: str) -> bytes:
    """``doc`` written as agents write it, with the JSON text ``raw`` at ``path``."""
    doc = copy.deepcopy(doc)
    _get(doc, path[:-1])[path[-1]] = "__MARK__"
    return json.dumps(doc, separators=(",", ":")).replace('"__MARK__"', raw).encode()


def _refused_alike(payload: bytes) -> None:
    kind, detail = _same(payload)
    assert (kind, detail[0]) == ("schema", "bad_schema"), (detail, payload[:300])
    assert statement_fast.recognise(payload) is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=hs.sampled_from(_OBJECT_PATHS), data=hs.data(), value=_json_values)
def test_a_duplicate_name_at_any_depth_is_refused_by_both(path: tuple[Any, ...], data: Any, value: Any) -> None:
    obj = _get(_DOC, path) if path else _DOC
    name = data.draw(hs.sampled_from(sorted(obj) or ["x"]) | hs.text(max_size=4), label="name")
    doc = copy.deepcopy(_DOC)
    target = _get(doc, path) if path else doc
    marker = "__DUP__"
    target[marker] = 0
    member = json.dumps(name) + ":" + json.dumps(value, separators=(",", ":"))
    text = json.dumps(doc, separators=(",", ":")).replace(f'"{marker}":0', f"{member},{member}")
    _refused_alike(text.encode())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=hs.sampled_from(_ANY_PATHS), lone=hs.sampled_from(_LONE), as_name=hs.booleans())
def test_a_lone_surrogate_at_any_depth_is_refused_by_both(path: tuple[Any, ...], lone: str, as_name: bool) -> None:
    raw = f'{{"{lone}":1}}' if as_name else f'"{lone}"'
    _refused_alike(_compact_with(_DOC, path, raw))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=hs.sampled_from(_ANY_PATHS),
    n=hs.integers(min_value=2**53, max_value=2**70) | hs.integers(min_value=-(2**70), max_value=-(2**53)),
    nest=hs.integers(min_value=0, max_value=3),
)
def test_an_integer_beyond_2_53_at_any_depth_is_refused_by_both(path: tuple[Any, ...], n: int, nest: int) -> None:
    raw = str(n)
    for _ in range(nest):
        raw = f"[{raw}]" if nest % 2 else f'{{"n":{raw}}}'
    _refused_alike(_compact_with(_DOC, path, raw))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=hs.sampled_from(_ANY_PATHS), n=hs.integers(min_value=0, max_value=2**53 - 1))
def test_an_integer_within_2_53_reads_alike(path: tuple[Any, ...], n: int) -> None:
    """The control: exact integers are read alike (accepted or refused by the schema)."""
    kind, detail = _same(_compact_with(_DOC, path, str(n)))
    assert kind == "ok" or "2**53" not in str(detail)
