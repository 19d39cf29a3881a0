"""Strict reading of decoded JSON for the reference parser: typed accessors that name the
path in every error (``Obj``), and the integer fields of a GPU and a workload, checked in
one loop (the hot path of ingest: one call per GPU per statement).
"""

from __future__ import annotations

from typing import Any

from attestation.errors import SchemaError
from attestation.statement.records import Event


class Obj:
    """Typed accessors over one JSON object, naming the path in every error."""

    __slots__ = ("d", "path")

    def __init__(self, d: Any, path: str) -> None:
        if not isinstance(d, dict):
            raise SchemaError(f"{path}: expected an object, got {type(d).__name__}")
        self.d = d
        self.path = path

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self.d:
            if optional:
                return None
            raise SchemaError(f"{self.path}.{key}: required field missing")
        return self.d[key]

    def int_(self, key: str, *, nullable: bool = False, optional: bool = False, minimum: int | None = 0) -> Any:
        v = self._get(key, optional or nullable)
        if v is None:
            if nullable or optional:
                return None
            raise SchemaError(f"{self.path}.{key}: must not be null")
        if type(v) is not int:
            raise SchemaError(f"{self.path}.{key}: expected an integer, got {type(v).__name__} ({v!r})")
        if minimum is not None and v < minimum:
            raise SchemaError(f"{self.path}.{key}: {v} is below {minimum}")
        return v

    def str_(self, key: str, *, nullable: bool = False, optional: bool = False) -> Any:
        v = self._get(key, optional or nullable)
        if v is None:
            if nullable or optional:
                return None
            raise SchemaError(f"{self.path}.{key}: must not be null")
        if not isinstance(v, str):
            raise SchemaError(f"{self.path}.{key}: expected a string, got {type(v).__name__}")
        return v

    def list_(self, key: str, *, optional: bool = False) -> list[Any]:
        v = self._get(key, optional)
        if v is None and optional:
            return []
        if not isinstance(v, list):
            raise SchemaError(f"{self.path}.{key}: expected a list")
        return v

    def obj(self, key: str, *, nullable: bool = False, optional: bool = False) -> Obj | None:
        v = self._get(key, optional or nullable)
        if v is None:
            if nullable or optional:
                return None
            raise SchemaError(f"{self.path}.{key}: must not be null")
        return Obj(v, f"{self.path}.{key}")

    def reasons(self, key: str) -> dict[str, str]:
        v = self._get(key, True)
        if v is None:
            return {}
        if type(v) is not dict:
            raise SchemaError(f"{self.path}.{key}: expected an object of field -> reason strings")
        for r in v.values():
            if type(r) is not str:  # keys of a decoded JSON object are always str
                raise SchemaError(f"{self.path}.{key}: expected an object of field -> reason strings")
        return dict(v)


def parse_events(o: Obj) -> tuple[Event, ...]:
    out = []
    for i, e in enumerate(o.list_("events", optional=True)):
        eo = Obj(e, f"{o.path}.events[{i}]")
        out.append(Event(eo.str_("kind"), eo.str_("detail")))
    return tuple(out)


def int_list(v: Any, parent: str, key: str, maximum: int | None = None) -> tuple[int | None, ...]:
    if type(v) is not list:
        raise SchemaError(f"{parent}.{key}: expected a list")
    for x in v:
        if x is not None and (type(x) is not int or x < 0 or (maximum is not None and x > maximum)):
            raise SchemaError(f"{parent}.{key}: expected integers in 0..{maximum or 'inf'} or null, got {x!r}")
    return tuple(v)


# GpuWindow integer fields: (name, nullable, optional). Checked in one loop: this is the
# hot path of ingest (one call per GPU per statement).
GPU_INTS: tuple[tuple[str, bool, bool], ...] = (
    ("index", False, False),
    ("mem_total_bytes", True, False),
    ("power_limit_mw", True, False),
    ("samples", False, False),
    ("energy_start_mj", True, False),
    ("energy_end_mj", True, False),
    ("power_mean_mw", True, False),
    ("power_max_mw", True, False),
    ("util_mean_permille", True, False),
    ("mem_used_max_bytes", True, False),
    ("sm_active_mean_permille", True, True),
    ("tensor_active_mean_permille", True, True),
    ("nvlink_tx_bytes", True, True),
    ("nvlink_rx_bytes", True, True),
    ("pcie_tx_bytes", True, True),
    ("pcie_rx_bytes", True, True),
)
# The core readings: null only with a reason (attestation.statement.gpu.parse_gpu).
GPU_CORE = tuple(n for n, _, optional in GPU_INTS if not optional)
WORKLOAD_INTS: tuple[tuple[str, bool, bool], ...] = (
    ("processes", False, False),
    ("mem_max_bytes", True, False),
    ("share_permille", False, False),
    ("gpu_ms", False, False),
)


def checked_ints(d: dict[str, Any], spec: tuple[tuple[str, bool, bool], ...], path: str) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name, nullable, optional in spec:
        v = d.get(name)
        if type(v) is int and v >= 0 and (v <= 1000 or name not in _PERMILLE):
            out[name] = v
        else:
            out[name] = _int_field(d, name, nullable, optional, v, path)
    return out


# Integer fields bounded by 1000 (their names end in _permille; MIG instances use the same names).
_PERMILLE = frozenset(n for spec in (GPU_INTS, WORKLOAD_INTS) for n, _, _ in spec if n.endswith("_permille"))


def _int_field(d: dict[str, Any], name: str, nullable: bool, optional: bool, v: Any, path: str) -> int | None:
    """The checks of ``checked_ints`` for a value that is not an integer in 0..1000."""
    if type(v) is int and v >= 0:
        if v > 1000 and name.endswith("_permille"):
            raise SchemaError(f"{path}.{name}: {v} exceeds 1000")
        return v
    if v is None:
        if name not in d and not optional:
            raise SchemaError(f"{path}.{name}: required field missing")
        if not nullable and name in d:
            raise SchemaError(f"{path}.{name}: must not be null")
        if not nullable and not optional:
            raise SchemaError(f"{path}.{name}: required field missing")
        return None
    if type(v) is int:
        raise SchemaError(f"{path}.{name}: {v} is below 0")
    raise SchemaError(f"{path}.{name}: expected an integer, got {type(v).__name__} ({v!r})")
