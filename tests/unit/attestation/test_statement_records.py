"""The statement's records (attestation/statement/records.py) are msgspec structs that the fast
parser decodes into directly: immutable values, untracked by the cyclic garbage collector,
whose annotated integer bounds are the reference parser's."""

from __future__ import annotations

import gc
from typing import Any

import msgspec
import pytest
from test_statement import full_gpu, full_window

from attestation import statement as st
from attestation.statement import Event, GpuWindow, Mig, MigInstance, Series, UsageWindow, Workload
from attestation.statement.fields import GPU_INTS, WORKLOAD_INTS

RECORDS = [Workload, Series, Event, MigInstance, Mig, GpuWindow, st.NodeIo, st.Chain, st.Rotation, st.Dropped]


@pytest.mark.parametrize("cls", RECORDS + [st.LogCheckpointRef, UsageWindow], ids=lambda c: c.__name__)
def test_records_are_immutable_and_untracked_by_the_cyclic_collector(cls: type) -> None:
    assert issubclass(cls, msgspec.Struct)
    config = cls.__struct_config__  # type: ignore[attr-defined]
    assert config.frozen and not config.gc


def test_a_window_is_an_immutable_value() -> None:
    w = full_window()
    assert w == full_window() and w is not full_window()
    with pytest.raises(AttributeError):
        w.node_id = "other"  # type: ignore[misc]
    changed = msgspec.structs.replace(w, node_id="other")
    assert changed.node_id == "other" and w.node_id != "other"
    assert not gc.is_tracked(w) and not gc.is_tracked(w.gpus[0])


def test_default_containers_are_not_shared() -> None:
    a = GpuWindow(**_required(full_gpu(0)))
    b = GpuWindow(**_required(full_gpu(1)))
    assert a.unavailable == {} and a.unavailable is not b.unavailable
    assert a.health is not b.health and a.identity is not b.identity


def _required(g: GpuWindow) -> dict[str, Any]:
    return {f.name: getattr(g, f.name) for f in msgspec.structs.fields(g) if f.required}


def test_workloads_and_gpu_ms_are_required_as_the_reference_requires_them() -> None:
    with pytest.raises(TypeError, match="workloads"):
        GpuWindow(**{k: v for k, v in _required(full_gpu(0)).items() if k != "workloads"})
    with pytest.raises(TypeError):
        Workload("t", "user", "w", 1, None, 1000)  # type: ignore[call-arg]


def _gpu_json(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.json.decode(st.statement_bytes(full_window()))["predicate"]["gpus"][0]
    doc.update(changes)
    return doc


@pytest.mark.parametrize(("name", "nullable", "optional"), GPU_INTS, ids=[n for n, _, _ in GPU_INTS])
def test_gpu_integer_bounds_in_the_types_are_the_reference_parsers(name: str, nullable: bool, optional: bool) -> None:
    """The reference's table of GPU integers (name, nullable, optional) and the bounds it
    applies (>= 0; <= 1000 for *_permille) are what the record's annotations say."""
    decode = msgspec.json.Decoder(GpuWindow)

    def ok(**changes: Any) -> bool:
        try:
            decode.decode(msgspec.json.encode(_gpu_json(**changes)))
        except msgspec.ValidationError:
            return False
        return True

    assert ok(**{name: 0}) and not ok(**{name: -1})
    assert ok(**{name: 1000}) and ok(**{name: 1001}) != name.endswith("_permille")
    assert ok(**{name: None}) == nullable
    doc = _gpu_json()
    del doc[name]
    try:
        decode.decode(msgspec.json.encode(doc))
        absent_ok = True
    except msgspec.ValidationError:
        absent_ok = False
    assert absent_ok == optional


@pytest.mark.parametrize(("name", "nullable", "optional"), WORKLOAD_INTS, ids=[n for n, _, _ in WORKLOAD_INTS])
def test_workload_integer_bounds_in_the_types_are_the_reference_parsers(
    name: str, nullable: bool, optional: bool
) -> None:
    base = msgspec.json.decode(msgspec.json.encode(full_gpu(0).workloads[0]))

    def ok(value: Any) -> bool:
        try:
            msgspec.json.decode(msgspec.json.encode({**base, name: value}), type=Workload)
        except msgspec.ValidationError:
            return False
        return True

    assert ok(0) and not ok(-1) and ok(None) == nullable
    assert ok(1001) != name.endswith("_permille")
    try:
        msgspec.json.decode(msgspec.json.encode({k: v for k, v in base.items() if k != name}), type=Workload)
        absent_ok = True
    except msgspec.ValidationError:
        absent_ok = False
    assert absent_ok == optional
