"""The reference parser's checks of one GPU's object and what it holds: its workloads,
its per-bucket series, its health and identity maps and, with MIG mode on, its ``mig``
instances. Every null reading must have its reason beside it.
"""

from __future__ import annotations

from typing import Any

from attestation.errors import SchemaError
from attestation.statement.fields import GPU_CORE, GPU_INTS, WORKLOAD_INTS, Obj, checked_ints, int_list, parse_events
from attestation.statement.records import (
    SHARING_MODES,
    SPLIT_METHODS,
    WORKLOAD_KINDS,
    GpuWindow,
    Mig,
    MigInstance,
    Series,
    Workload,
)


def _parse_workload(w: Any, path: str) -> Workload:
    if not isinstance(w, dict):
        raise SchemaError(f"{path}: expected an object, got {type(w).__name__}")
    ints = checked_ints(w, WORKLOAD_INTS, path)
    kind = w.get("kind")
    if kind not in WORKLOAD_KINDS:
        raise SchemaError(f"{path}.kind: unknown workload kind {kind!r}")
    tenant, workload = w.get("tenant"), w.get("workload")
    if not isinstance(tenant, str):
        raise SchemaError(f"{path}.tenant: expected a string, got {type(tenant).__name__}")
    if not isinstance(workload, str):
        raise SchemaError(f"{path}.workload: expected a string, got {type(workload).__name__}")
    share = ints["share_permille"]
    assert share is not None
    if share > 1000:
        raise SchemaError(f"{path}.share_permille: {share} exceeds 1000")
    ints["tenant"], ints["kind"], ints["workload"] = tenant, kind, workload  # type: ignore[assignment]
    return Workload(**ints)  # type: ignore[arg-type]


_MIG_INSTANCE_INTS: tuple[tuple[str, bool, bool], ...] = (
    ("gpu_instance_id", False, False),
    ("compute_instance_id", True, False),
    ("slices", True, False),
    ("samples", False, False),
    ("mem_total_bytes", True, False),
    ("mem_used_max_bytes", True, False),
    ("sm_active_mean_permille", True, False),
    ("tensor_active_mean_permille", True, False),
    ("processes", False, False),
)


def _parse_mig(o: Obj) -> Mig:
    """The optional ``mig`` object: every null reading MUST have its reason beside it."""
    un = o.reasons("unavailable")
    slices_total = o.int_("slices_total", nullable=True, minimum=1)
    if slices_total is None and "slices_total" not in un:
        raise SchemaError(f"{o.path}.slices_total: null with no reason in unavailable")
    instances = []
    for k, raw in enumerate(o.list_("instances")):
        io = Obj(raw, f"{o.path}.instances[{k}]")
        ints = checked_ints(io.d, _MIG_INSTANCE_INTS, io.path)
        iun = io.reasons("unavailable")
        uuid = io.str_("uuid", nullable=True)
        nulls = [n for n, nullable, _ in _MIG_INSTANCE_INTS if nullable and ints[n] is None]
        nulls += ["uuid"] if uuid is None else []
        unexplained = [n for n in nulls if n not in iun]
        if unexplained:
            raise SchemaError(f"{io.path}: null field(s) {', '.join(unexplained)} with no reason in unavailable")
        if ints["slices"] is not None and (ints["slices"] < 1 or (slices_total and ints["slices"] > slices_total)):
            raise SchemaError(f"{io.path}.slices: {ints['slices']} is not in 1..slices_total ({slices_total})")
        workloads = []
        for j, w in enumerate(io.list_("workloads", optional=True)):
            wo = Obj(w, f"{io.path}.workloads[{j}]")
            kind = wo.str_("kind")
            if kind not in WORKLOAD_KINDS:
                raise SchemaError(f"{wo.path}.kind: unknown workload kind {kind!r}")
            workloads.append((wo.str_("tenant"), kind, wo.str_("workload")))
        instances.append(
            MigInstance(
                uuid=uuid,
                workloads=tuple(workloads),
                unavailable=iun,
                **ints,  # type: ignore[arg-type]
            )
        )
    return Mig(slices_total=slices_total, instances=tuple(instances), unavailable=un)


def parse_gpu(o: Obj) -> GpuWindow:
    d = o.d
    ints = checked_ints(d, GPU_INTS, o.path)
    workloads = tuple(_parse_workload(w, f"{o.path}.workloads[{i}]") for i, w in enumerate(o.list_("workloads")))
    so = o.obj("series", nullable=True, optional=True)
    series = None
    if so is not None:
        series = Series(
            so.int_("bucket_ms", minimum=1),
            int_list(so.d.get("util_permille"), so.path, "util_permille", 1000),
            int_list(so.d.get("power_mw"), so.path, "power_mw"),
        )
    split = o.str_("split_method", optional=True) or "exclusive"
    if split not in SPLIT_METHODS:
        raise SchemaError(f"{o.path}.split_method: unknown method {split!r}")
    unavailable = o.reasons("unavailable")
    serial = o.str_("serial", nullable=True)
    # A core reading that is null must say why (its own reason, or "readings": the GPU was
    # not read in this window), so "not measured" is never mistaken for a number.
    missing = [n for n in GPU_CORE if ints[n] is None]
    if serial is None:
        missing.append("serial")
    if missing and "readings" not in unavailable:
        unexplained = [n for n in missing if n not in unavailable]
        if unexplained:
            raise SchemaError(f"{o.path}: null reading(s) {', '.join(unexplained)} with no reason in unavailable")
    health = d.get("health", {})
    if type(health) is not dict:
        raise SchemaError(f"{o.path}.health: expected an object of key -> non-negative integer")
    for v in health.values():  # keys of a decoded JSON object are always str
        if type(v) is not int or v < 0:
            raise SchemaError(f"{o.path}.health: expected an object of key -> non-negative integer")
    sharing = mig = None
    if "sharing" in d or "mig" in d:  # optional, additive within v1
        sharing = o.str_("sharing", nullable=True, optional=True)
        if sharing is not None and sharing not in SHARING_MODES:
            raise SchemaError(f"{o.path}.sharing: unknown sharing mode {sharing!r}")
        mo = o.obj("mig", nullable=True, optional=True)
        mig = _parse_mig(mo) if mo is not None else None
    if split == "mig_slices":
        if mig is None or mig.slices_total is None:
            raise SchemaError(f"{o.path}.split_method: mig_slices needs mig.slices_total")
        if sum(w.share_permille for w in workloads) > 1000:
            raise SchemaError(f"{o.path}.workloads: mig_slices shares add up to more than 1000")
    values: dict[str, Any] = ints
    values.update(
        uuid=o.str_("uuid"),
        serial=serial,
        model=o.str_("model"),
        series=series,
        split_method=split,
        workloads=workloads,
        unavailable=unavailable,
        events=parse_events(o),
        identity=o.reasons("identity"),
        health=dict(health),
        mem_reserved_bytes=o.int_("mem_reserved_bytes", nullable=True, optional=True),
        sharing=sharing,
        mig=mig,
    )
    return GpuWindow(**values)
