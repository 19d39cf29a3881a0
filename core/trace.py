"""Trace v1: JSON Lines telemetry that the simulated source plays and outside tools write.

Line 1 is ``{"format": "gpuaudit-trace", "version": 1}``. Then ``node`` records (a node's
GPUs) and ``sample`` records (one reading of a node's GPUs at Unix time ``t``), in any
interleaving as long as each node's ``node`` record comes before its samples and each
node's samples are in time order. The file is gzip-compressed when its name ends in
``.gz``. Readers ignore unknown fields and reject malformed lines with the line number.
See docs/formats.md for every field.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from core.errors import TraceError, TraceUnreadableError
from core.samples import Attribution, DeviceInfo, GpuSample, NodeIoSample, NodeSample, ProcessSample

FORMAT = "gpuaudit-trace"
VERSION = 1
ABSENT = "absent_in_trace"

_PROC_KINDS = ("k8s_pod", "container", "slurm_job", "user", "lease", "process")
_NODE_IO_FIELDS = (
    "ib_tx_bytes_per_s",
    "ib_rx_bytes_per_s",
    "net_rx_bytes_per_s",
    "net_tx_bytes_per_s",
    "disk_read_bytes_per_s",
    "disk_write_bytes_per_s",
)
_OPTIONAL_GPU_FLOATS = (
    "sm_active_pct",
    "tensor_active_pct",
    "nvlink_tx_bytes_per_s",
    "nvlink_rx_bytes_per_s",
    "pcie_tx_bytes_per_s",
    "pcie_rx_bytes_per_s",
)


@dataclass(frozen=True)
class NodeRecord:
    node: str
    devices: tuple[DeviceInfo, ...]


@dataclass(frozen=True)
class SampleRecord:
    node: str
    sample: NodeSample


TraceRecord = NodeRecord | SampleRecord


def _num(v: Any, what: str, *, allow_none: bool = True) -> float | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{what}: expected a finite number, got {v!r}")
    if v < 0:
        raise ValueError(f"{what}: negative value {v!r}")
    return float(v)


def _int(v: Any, what: str, *, allow_none: bool = True) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{what}: expected a non-negative integer, got {v!r}")
    if isinstance(v, float) and not v.is_integer():
        raise ValueError(f"{what}: expected an integer, got {v!r}")
    return int(v)


def _gnum(v: Any, i: int, name: str) -> float | None:
    """Fast path of ``_num`` for per-GPU fields: the error path is formatted only on error."""
    if v is None:
        return None
    if (type(v) is float or type(v) is int) and 0 <= v < math.inf:
        return float(v)
    return _num(v, f"gpus[{i}].{name}")


def _gint(v: Any, i: int, name: str) -> int | None:
    if v is None:
        return None
    if type(v) is int and v >= 0:
        return v
    return _int(v, f"gpus[{i}].{name}")


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{what}: expected a non-empty string, got {v!r}")
    return v


def _parse_node(obj: dict[str, Any]) -> NodeRecord:
    node = _str(obj.get("node"), "node")
    gpus = obj.get("gpus")
    if not isinstance(gpus, list):
        raise ValueError("gpus: expected a list")
    devices = []
    seen: set[int] = set()
    for i, g in enumerate(gpus):
        if not isinstance(g, dict):
            raise ValueError(f"gpus[{i}]: expected an object")
        index = _int(g.get("index"), f"gpus[{i}].index", allow_none=False)
        assert index is not None
        if index in seen:
            raise ValueError(f"gpus[{i}].index: duplicate index {index}")
        seen.add(index)
        unavailable = {}
        serial = g.get("serial")
        if serial is not None and not isinstance(serial, str):
            raise ValueError(f"gpus[{i}].serial: expected a string")
        if serial is None:
            unavailable["serial"] = ABSENT
        mem_total = _int(g.get("mem_total_bytes"), f"gpus[{i}].mem_total_bytes")
        if mem_total is None:
            unavailable["mem_total_bytes"] = ABSENT
        limit_w = _num(g.get("power_limit_w"), f"gpus[{i}].power_limit_w")
        if limit_w is None:
            unavailable["power_limit_mw"] = ABSENT
        devices.append(
            DeviceInfo(
                index=index,
                uuid=_str(g.get("uuid"), f"gpus[{i}].uuid"),
                serial=serial,
                model=_str(g.get("model"), f"gpus[{i}].model"),
                mem_total_bytes=mem_total,
                power_limit_mw=None if limit_w is None else round(limit_w * 1000),
                unavailable=unavailable,
            )
        )
    return NodeRecord(node=node, devices=tuple(devices))


def _parse_proc(p: Any, i: int, j: int) -> ProcessSample:
    what = f"gpus[{i}].procs[{j}]"  # cheap next to the rest; keeps every error precise
    if not isinstance(p, dict):
        raise ValueError(f"{what}: expected an object")
    pid = p.get("pid")
    if type(pid) is not int or pid < 0:
        pid = _int(pid, f"{what}.pid", allow_none=False)
        assert pid is not None
    kind = p.get("kind", "process")
    if kind not in _PROC_KINDS:
        raise ValueError(f"{what}.kind: unknown kind {kind!r}")
    tenant = p.get("tenant")
    workload = p.get("workload")
    mem = p.get("mem_bytes")
    sm = p.get("sm_pct")
    return ProcessSample(
        pid=pid,
        mem_bytes=mem if type(mem) is int and mem >= 0 else _int(mem, f"{what}.mem_bytes"),
        sm_pct=None if sm is None else _num(sm, f"{what}.sm_pct"),
        attribution=Attribution(
            tenant=_str(tenant, f"{what}.tenant") if tenant is not None else "unattributed",
            kind=kind,
            workload=_str(workload, f"{what}.workload") if workload is not None else f"pid:{pid}",
        ),
    )


def _parse_sample(obj: dict[str, Any]) -> SampleRecord:
    node = _str(obj.get("node"), "node")
    t = _num(obj.get("t"), "t", allow_none=False)
    assert t is not None
    gpus = obj.get("gpus")
    if not isinstance(gpus, list):
        raise ValueError("gpus: expected a list")
    out = []
    seen: set[int] = set()
    for i, g in enumerate(gpus):
        if not isinstance(g, dict):
            raise ValueError(f"gpus[{i}]: expected an object")
        index = g.get("index")
        if type(index) is not int or index < 0:
            index = _int(index, f"gpus[{i}].index", allow_none=False)
            assert index is not None
        if index in seen:
            raise ValueError(f"gpus[{i}].index: duplicate index {index}")
        seen.add(index)
        unavailable: dict[str, str] = {}
        util = _gnum(g.get("util_pct"), i, "util_pct")
        if util is None:
            unavailable["util_pct"] = ABSENT
        elif util > 100:
            raise ValueError(f"gpus[{i}].util_pct: {util} exceeds 100")
        mem = _gint(g.get("mem_used_bytes"), i, "mem_used_bytes")
        if mem is None:
            unavailable["mem_used_bytes"] = ABSENT
        power_w = _gnum(g.get("power_w"), i, "power_w")
        if power_w is None:
            unavailable["power_mw"] = ABSENT
        energy = _gint(g.get("energy_mj"), i, "energy_mj")
        if energy is None:
            unavailable["energy_mj"] = ABSENT
        extra: dict[str, Any] = {}  # the optional float fields of GpuSample
        for k in _OPTIONAL_GPU_FLOATS:
            v = g.get(k)
            if v is None:
                unavailable[k] = ABSENT
            else:
                extra[k] = _gnum(v, i, k)
        procs_raw = g.get("procs", ())
        if not isinstance(procs_raw, (list, tuple)):
            raise ValueError(f"gpus[{i}].procs: expected a list")
        procs = tuple(_parse_proc(p, i, j) for j, p in enumerate(procs_raw)) if procs_raw else ()
        out.append(
            GpuSample(
                index=index,
                util_pct=util,
                mem_used_bytes=mem,
                power_mw=None if power_w is None else round(power_w * 1000),
                energy_mj=energy,
                procs=procs,
                unavailable=unavailable,
                **extra,
            )
        )
    node_io = None
    raw_io = obj.get("node_io")
    if raw_io is not None:
        if not isinstance(raw_io, dict):
            raise ValueError("node_io: expected an object")
        node_io = NodeIoSample(**{k: _num(raw_io.get(k), f"node_io.{k}") for k in _NODE_IO_FIELDS})
    return SampleRecord(node=node, sample=NodeSample(t=t, gpus=tuple(out), node_io=node_io))


def _open_text(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def parse_lines(lines: Iterable[str], name: str = "<trace>") -> Iterator[TraceRecord]:
    """Parse trace lines, checking the header and per-node ordering."""
    last_t: dict[str, float] = {}
    lineno = 0
    for lineno, line in enumerate(lines, start=1):
        if lineno > 1 and not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == 1:
                raise TraceError(f"{name}:1: not a {FORMAT} version {VERSION} header: {line.strip()[:80]}") from exc
            raise TraceError(f"{name}:{lineno}: not JSON: {exc.msg}") from exc
        if not isinstance(obj, dict):
            if lineno == 1:
                raise TraceError(f"{name}:1: not a {FORMAT} version {VERSION} header: {line.strip()[:80]}")
            raise TraceError(f"{name}:{lineno}: expected a JSON object")
        if lineno == 1:
            version = obj.get("version")
            if obj.get("format") != FORMAT or type(version) is not int or version != VERSION:
                raise TraceError(f"{name}:1: not a {FORMAT} version {VERSION} header: {line.strip()[:80]}")
            continue
        kind = obj.get("type")
        try:
            if kind == "node":
                rec: TraceRecord = _parse_node(obj)
                if rec.node in last_t:
                    raise ValueError(f"second node record for {rec.node!r}")
                last_t[rec.node] = -math.inf
            elif kind == "sample":
                rec = _parse_sample(obj)
                prev = last_t.get(rec.node)
                if prev is None:
                    raise ValueError(f"sample for node {rec.node!r} before its node record")
                if rec.sample.t < prev:
                    raise ValueError(
                        f"sample at t={rec.sample.t} is earlier than the previous one ({prev}) for {rec.node}"
                    )
                last_t[rec.node] = rec.sample.t
            else:
                raise ValueError(f"unknown record type {kind!r}")
        except ValueError as exc:
            raise TraceError(f"{name}:{lineno}: {exc}") from exc
        yield rec
    if lineno == 0:
        raise TraceError(f"{name}: empty trace (no header line)")


def read_trace(path: Path | str) -> Iterator[TraceRecord]:
    """Records of the trace at ``path``. A file that cannot be read raises
    TraceUnreadableError; one that is not what its name says (a plain file named .gz, a
    truncated gzip stream, bytes that are not UTF-8) raises TraceError."""
    p = Path(path)
    try:
        fh = _open_text(p)
    except OSError as exc:
        raise TraceUnreadableError(f"cannot read {p}: {exc.strerror or exc}") from exc
    with fh:
        try:
            yield from parse_lines(fh, str(p))
        except gzip.BadGzipFile as exc:
            raise TraceError(f"{p}: not a gzip file, though its name ends in .gz ({exc})") from exc
        except (EOFError, zlib.error) as exc:
            raise TraceError(f"{p}: the gzip stream is truncated or corrupt ({exc})") from exc
        except UnicodeDecodeError as exc:
            raise TraceError(f"{p}: not UTF-8 text at byte {exc.start} (compressed? name it .gz)") from exc
        except OSError as exc:
            raise TraceUnreadableError(f"cannot read {p}: {exc.strerror or exc}") from exc


def header() -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION}


def write_trace(path: Path | str, records: Iterable[dict[str, Any]]) -> int:
    """Write ``records`` (node/sample dicts, without the header) as a trace; returns lines written."""
    p = Path(path)
    opener = (
        gzip.open(p, "wt", encoding="utf-8", compresslevel=3)
        if p.name.endswith(".gz")
        else open(p, "w", encoding="utf-8")
    )
    n = 0
    with opener as fh:
        fh.write(json.dumps(header()) + "\n")
        for r in records:
            fh.write(json.dumps(r, separators=(",", ":")) + "\n")
            n += 1
    return n
