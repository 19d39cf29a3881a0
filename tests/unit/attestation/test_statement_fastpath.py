"""The parser builds its frozen dataclasses without their generated ``__init__``
(attestation.statement._new). These tests hold that shortcut to the constructor's result."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from attestation import statement as st
from attestation.statement import Event, GpuWindow, Mig, MigInstance, Series, Workload, _new


def _sample_values(cls: type) -> dict[str, Any]:
    """A value for every field of ``cls``, of a plausible type."""
    out: dict[str, Any] = {}
    for i, f in enumerate(dataclasses.fields(cls)):
        t = str(f.type)
        if t.startswith("dict"):
            out[f.name] = {f"k{i}": "v"} if "str]" in t else {f"k{i}": i}
        elif t.startswith("tuple"):
            out[f.name] = ()
        elif "int" in t:
            out[f.name] = i + 1
        else:
            out[f.name] = f"s{i}"
    return out


@pytest.mark.parametrize("cls", [Workload, Series, Event, GpuWindow, MigInstance, Mig])
def test_new_equals_the_constructor_with_every_field(cls: type) -> None:
    values = _sample_values(cls)
    built, constructed = _new(cls, dict(values)), cls(**values)
    assert built == constructed
    assert repr(built) == repr(constructed)
    assert vars(built) == vars(constructed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.__setattr__(dataclasses.fields(cls)[0].name, None)


@pytest.mark.parametrize("cls", [Workload, GpuWindow, MigInstance, Mig])
def test_new_fills_defaults_and_factories_like_the_constructor(cls: type) -> None:
    required = {
        f.name: v
        for f, v in zip(dataclasses.fields(cls), _sample_values(cls).values(), strict=True)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    a, b = _new(cls, dict(required)), _new(cls, dict(required))
    assert a == cls(**required)
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            assert getattr(a, f.name) is not getattr(b, f.name), f"{f.name}: factory default shared"


def test_new_refuses_a_missing_required_field() -> None:
    with pytest.raises(TypeError, match="share_permille"):
        _new(Workload, {"tenant": "t", "kind": "user", "workload": "w", "processes": 1, "mem_max_bytes": None})


def test_classes_built_by_the_parser_have_no_post_init_or_slots() -> None:
    # _new is only equivalent to the constructor while this holds.
    for cls in (Workload, Series, Event, GpuWindow, MigInstance, Mig):
        assert not hasattr(cls, "__post_init__"), cls
        assert not hasattr(cls, "__slots__"), cls
    assert st._new is _new
