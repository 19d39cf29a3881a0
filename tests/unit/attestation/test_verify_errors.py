"""Every malformed input gives a one-line reason a person can act on: no traceback, no
Python internals (``KeyError('payload')``), no long number echoed back. Table-driven:
each row is a damaged bundle (or argument) and the reason the verifier must give."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_verify_tamper import Node, Site

from attestation.verify_cli import main as verify_main

HUGE = "9" * 400
_HUGE_INDEX = re.compile(rb'"leaf_index": ?0')
Mutation = Callable[[bytes, dict[str, Any]], bytes]


def _doc(change: Callable[[dict[str, Any]], None]) -> Mutation:
    def apply(_: bytes, doc: dict[str, Any]) -> bytes:
        change(doc)
        return json.dumps(doc).encode()

    return apply


def _raw(data: bytes) -> Mutation:
    return lambda _b, _d: data


def _text(change: Callable[[bytes], bytes]) -> Mutation:
    return lambda b, _d: change(b)


def _compact(data: bytes) -> bytes:
    return json.dumps(json.loads(data), separators=(",", ":")).encode()


def _set_envelope(**fields: Any) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        env = d["entries"][0]["envelope"]
        for k, v in fields.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v

    return change


CASES: list[tuple[str, Mutation, str]] = [
    ("empty file", _raw(b""), "malformed_bundle"),
    ("not JSON", _raw(b"hello"), "malformed_bundle"),
    ("a JSON list", _raw(b"[]"), "malformed_bundle"),
    ("truncated", _text(lambda b: b[: len(b) // 2]), "malformed_bundle"),
    ("truncated in a string", _text(lambda b: b[: b.index(b'"payload"') + 20]), "malformed_bundle"),
    ("data after the object", _text(lambda b: b + b" {}"), "malformed_bundle"),
    ("byte-order mark", _text(lambda b: b"\xef\xbb\xbf" + b), "malformed_bundle"),
    ("entries twice", _text(lambda b: b[:-1] + b',"entries":[]}'), "malformed_bundle"),
    (
        "trailing comma in entries",
        _text(lambda b: _compact(b).replace(b'}}],"consistency"', b'}},],"consistency"')),
        "malformed_bundle",
    ),  # fmt: skip
    ("deeply nested", _text(lambda b: b[:-1] + b',"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "malformed_bundle"),
    ("huge number at the top", _text(lambda b: b[:-1] + f',"x":{HUGE}}}'.encode()), "malformed_bundle"),
    ("wrong media type", _doc(lambda d: d.update(media_type="application/json")), "malformed_bundle"),
    (
        "media type a huge number",
        _text(lambda b: b.replace(b'"application/vnd.gpuaudit.bundle.v1+json"', HUGE.encode(), 1)),
        "malformed_bundle",
    ),  # fmt: skip
    ("no log", _doc(lambda d: d.pop("log")), "malformed_bundle"),
    ("no nodes", _doc(lambda d: d.pop("nodes")), "malformed_bundle"),
    ("entries not a list", _doc(lambda d: d.update(entries={})), "malformed_bundle"),
    (
        "leaf index a huge number",
        _text(lambda b: re.sub(rb'"leaf_index": ?0', f'"leaf_index":{HUGE}'.encode(), b, count=1)),
        "malformed_bundle",
    ),  # fmt: skip
    ("leaf index a string", _doc(lambda d: d["entries"][0].update(leaf_index="zero")), "malformed_entry"),
    ("leaf index negative", _doc(lambda d: d["entries"][0].update(leaf_index=-1)), "malformed_entry"),
    ("leaf index 1e300", _doc(lambda d: d["entries"][0].update(leaf_index=1e300)), "malformed_entry"),
    ("envelope without payload", _doc(_set_envelope(payload=None)), "malformed_entry"),
    ("envelope without payloadType", _doc(_set_envelope(payloadType=None)), "malformed_entry"),
    ("payload not base64", _doc(_set_envelope(payload="***")), "malformed_entry"),
    ("payload a number", _doc(_set_envelope(payload=1)), "malformed_entry"),
    ("signatures not a list", _doc(_set_envelope(signatures={"sig": "AA=="})), "malformed_entry"),
    ("signature without sig", _doc(_set_envelope(signatures=[{"keyid": "k"}])), "malformed_entry"),
    ("signature keyid a number", _doc(_set_envelope(signatures=[{"keyid": 7, "sig": "AA=="}])), "malformed_entry"),
    ("envelope a string", _doc(lambda d: d["entries"][0].update(envelope="x")), "malformed_entry"),
    ("entry a number", _doc(lambda d: d["entries"].__setitem__(0, 5)), "malformed_entry"),
    ("proof hash too short", _doc(lambda d: d["entries"][0].update(inclusion_proof=["AAAA"])), "malformed_entry"),
    (
        "node revoked_ms huge",
        _text(lambda b: b.replace(b'"revoked_ms": null', f'"revoked_ms": {HUGE}'.encode(), 1)),
        "malformed_bundle",
    ),  # fmt: skip
    ("node revoked_ms a string", _doc(lambda d: d["nodes"][0].update(revoked_ms="soon")), "malformed_enrollment"),
    ("node key not base64", _doc(lambda d: d["nodes"][0].update(spki="!")), "malformed_enrollment"),
    ("checkpoint a number", _doc(lambda d: d["log"].update(checkpoint=5)), "malformed_bundle"),
    ("checkpoint garbage", _doc(lambda d: d["log"].update(checkpoint="x\n\n— y AAAA\n")), "malformed_checkpoint"),
    ("log key missing", _doc(lambda d: d["log"].pop("public_key")), "bad_log_key"),
    ("heads not a list", _doc(lambda d: d.update(heads={"a": 1})), "bad_heads"),
    ("heads with a huge seq", _doc(lambda d: d["heads"][0].update(seq=10**40)), "malformed_bundle"),
    ("heads with a seq too large", _doc(lambda d: d["heads"][0].update(seq=2**53 - 1)), "bad_heads"),
    ("heads without serials", _doc(lambda d: d["heads"][0].pop("serials")), "bad_heads"),
    ("selection a list", _doc(lambda d: d.update(selection=[1, 2])), ""),
    ("since_ms a huge number", _doc(lambda d: d["selection"].update(since_ms=10**40)), ""),
    ("consistency a string", _doc(lambda d: d.update(consistency="x")), "malformed_bundle"),
    ("seen_checkpoints a string", _doc(lambda d: d.update(seen_checkpoints="x")), "malformed_bundle"),
    ("tenant summaries junk", _doc(lambda d: d.update(tenant_summaries={"payload": 1})), "bad_tenant_summaries"),
]


@pytest.fixture(scope="module")
def honest() -> tuple[bytes, dict[str, Any]]:
    site = Site()
    a = site.enroll(Node("node-a"))
    site.send(a, 3)
    doc = site.bundle()
    site.store.close()
    return json.dumps(doc, indent=1).encode(), doc


@pytest.mark.parametrize(("name", "mutate", "reason"), CASES, ids=[c[0] for c in CASES])
def test_malformed_bundles_give_a_one_line_reason(
    name: str,
    mutate: Mutation,
    reason: str,
    honest: tuple[bytes, dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = mutate(honest[0], json.loads(honest[0]))
    path = tmp_path / "bundle.json"
    path.write_bytes(data)
    code = verify_main([str(path)])
    out, err = capsys.readouterr()
    text = out + err
    assert "Traceback" not in text and "Error(" not in text and "KeyError" not in text, text[-2000:]
    assert not re.search(r"\d{41}", text), f"{name}: a long number is echoed back: {text[-1000:]}"
    if reason:
        assert code == 1, f"{name}: exit {code}\n{text[-2000:]}"
        failures = [ln for ln in out.splitlines() if ln.startswith("  [")]
        assert any(f"] {reason}:" in ln for ln in failures), f"{name}: no {reason}:\n{out[-2000:]}"
        assert all(len(ln) < 600 for ln in failures), f"{name}: a reason is not one short line"
    else:
        assert code in (0, 1), text
    assert verify_main([str(path), "--json"]) == code
    doc = json.loads(capsys.readouterr().out)
    if reason:
        assert reason in {f["reason"] for f in doc["failures"]}
        assert all("\n" not in f["message"] for f in doc["failures"])


@pytest.mark.parametrize(
    ("option", "content", "expect"),
    [
        ("--previous-checkpoint", '{"log": {"checkpoint": ' + HUGE + "}}", "log.checkpoint is not a string"),
        ("--previous-checkpoint", b"\xff\xfe", "not UTF-8"),
        ("--log-key", '{"log": ' + "[" * 100_000 + "]" * 100_000 + "}", "not a bundle with log.public_key"),
        ("--log-key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a usable PEM public key"),
        ("--cc-root", "not a certificate", "is not a certificate"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(
    option: str, content: str | bytes, expect: str, honest: tuple[bytes, dict[str, Any]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    bundle = tmp_path / "b.json"
    bundle.write_bytes(honest[0])
    arg = tmp_path / "arg"
    arg.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert verify_main([str(bundle), option, str(arg)]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err and not re.search(r"\d{41}", err), err
    assert len(err.strip().splitlines()) == 1, err
