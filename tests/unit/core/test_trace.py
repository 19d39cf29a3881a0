"""Trace v1 reader/writer: header, gzip, per-line errors with line numbers, absent fields.

A malformed trace must be refused at the exact line, with a message a person can act on;
a field the trace does not carry must come out as "unavailable (absent_in_trace)", never 0.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from core.errors import TraceError
from core.samples import Attribution
from core.trace import ABSENT, NodeRecord, SampleRecord, parse_lines, read_trace, write_trace

HEADER = '{"format": "gpuaudit-trace", "version": 1}'


def node(name: str = "n1", gpus: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    if gpus is None:
        gpus = [
            {
                "index": 0,
                "uuid": "GPU-0",
                "serial": "1650",
                "model": "H100",
                "mem_total_bytes": 80 * 2**30,
                "power_limit_w": 700,
            }
        ]
    return {"type": "node", "node": name, "gpus": gpus, **extra}


def gpu_reading(index: int = 0, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "index": index,
        "util_pct": 50,
        "mem_used_bytes": 1024,
        "power_w": 300.5,
        "energy_mj": 1000,
        "sm_active_pct": 40.0,
        "tensor_active_pct": 10.0,
        "nvlink_tx_bytes_per_s": 1.0,
        "nvlink_rx_bytes_per_s": 2.0,
        "pcie_tx_bytes_per_s": 3.0,
        "pcie_rx_bytes_per_s": 4.0,
    }
    base.update(fields)
    return base


def sample(t: float, name: str = "n1", gpus: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "sample", "node": name, "t": t, "gpus": [gpu_reading()] if gpus is None else gpus, **extra}


def lines(*records: Any, header: str | None = HEADER) -> list[str]:
    out = [] if header is None else [header + "\n"]
    for r in records:
        out.append((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return out


def parse(*records: Any, header: str | None = HEADER) -> list[Any]:
    return list(parse_lines(lines(*records, header=header), "t.jsonl"))


# -- header ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        '{"format": "gpuaudit-trace", "version": 2}',
        '{"format": "gpuaudit-trace", "version": "1"}',
        '{"format": "gpuaudit-trace", "version": true}',
        '{"format": "other-trace", "version": 1}',
        '{"version": 1}',
        json.dumps(node()),
    ],
    ids=["version-2", "version-string", "version-true", "wrong-format", "no-format", "node-record-first"],
)
def test_bad_header_is_refused_at_line_1(header: str) -> None:
    with pytest.raises(TraceError, match=r"^t\.jsonl:1: not a gpuaudit-trace version 1 header"):
        parse(sample(1.0), header=header)


def test_empty_trace_is_refused() -> None:
    with pytest.raises(TraceError, match="empty trace"):
        list(parse_lines([], "t.jsonl"))


@pytest.mark.parametrize("blank", ["\n", "   \n"])
def test_blank_lines_do_not_let_a_trace_skip_its_header(blank: str) -> None:
    # The header must be the first line; a leading blank line must not make it optional.
    with pytest.raises(TraceError, match="header"):
        list(parse_lines([blank, json.dumps(node()) + "\n"], "t.jsonl"))


def test_only_blank_lines_is_not_a_trace() -> None:
    with pytest.raises(TraceError):
        list(parse_lines(["\n", "\n"], "t.jsonl"))


def test_header_alone_is_an_empty_but_valid_trace() -> None:
    assert parse() == []


# -- malformed lines -------------------------------------------------------------------

# (case id, record lines after the header, line number, text the error must contain)
MALFORMED: list[tuple[str, list[Any], int, str]] = [
    ("not-json", [node(), "{not json"], 3, "not JSON"),
    ("not-an-object", [node(), "[1, 2]"], 3, "expected a JSON object"),
    ("unknown-type", [node(), {"type": "sampel", "node": "n1"}], 3, "unknown record type 'sampel'"),
    ("no-type", [node(), {"node": "n1"}], 3, "unknown record type None"),
    ("sample-before-node", [sample(1.0)], 2, "before its node record"),
    ("sample-for-other-node", [node("n1"), sample(1.0, name="n2")], 3, "before its node record"),
    ("samples-out-of-order", [node(), sample(2.0), sample(1.0)], 4, "earlier than the previous one"),
    ("util-over-100", [node(), sample(1.0, gpus=[gpu_reading(util_pct=100.5)])], 3, "gpus[0].util_pct"),
    ("negative-util", [node(), sample(1.0, gpus=[gpu_reading(util_pct=-1)])], 3, "gpus[0].util_pct"),
    ("negative-power", [node(), sample(1.0, gpus=[gpu_reading(power_w=-0.1)])], 3, "gpus[0].power_w"),
    ("negative-energy", [node(), sample(1.0, gpus=[gpu_reading(energy_mj=-5)])], 3, "gpus[0].energy_mj"),
    ("negative-t", [node(), sample(-1.0)], 3, "t:"),
    ("nan-util", [node(), '{"type":"sample","node":"n1","t":1,"gpus":[{"index":0,"util_pct":NaN}]}'], 3, "util_pct"),
    (
        "infinite-power",
        [node(), '{"type":"sample","node":"n1","t":1,"gpus":[{"index":0,"power_w":Infinity}]}'],
        3,
        "power_w",
    ),
    ("nan-t", [node(), '{"type":"sample","node":"n1","t":NaN,"gpus":[]}'], 3, "t:"),
    ("string-util", [node(), sample(1.0, gpus=[gpu_reading(util_pct="50")])], 3, "gpus[0].util_pct"),
    ("string-t", [node(), sample("1.0")], 3, "t:"),  # type: ignore[arg-type]
    ("bool-energy", [node(), sample(1.0, gpus=[gpu_reading(energy_mj=True)])], 3, "gpus[0].energy_mj"),
    ("fractional-energy", [node(), sample(1.0, gpus=[gpu_reading(energy_mj=1.5)])], 3, "gpus[0].energy_mj"),
    ("fractional-mem", [node(), sample(1.0, gpus=[gpu_reading(mem_used_bytes=0.5)])], 3, "gpus[0].mem_used_bytes"),
    ("negative-sm", [node(), sample(1.0, gpus=[gpu_reading(sm_active_pct=-3)])], 3, "gpus[0].sm_active_pct"),
    ("string-nvlink", [node(), sample(1.0, gpus=[gpu_reading(nvlink_tx_bytes_per_s="x")])], 3, "nvlink_tx"),
    ("t-missing", [node(), {"type": "sample", "node": "n1", "gpus": []}], 3, "t:"),
    ("gpus-not-a-list", [node(), {"type": "sample", "node": "n1", "t": 1, "gpus": {}}], 3, "gpus: expected a list"),
    ("gpu-index-missing", [node(), sample(1.0, gpus=[{"util_pct": 1}])], 3, "gpus[0].index"),
    ("proc-pid-missing", [node(), sample(1.0, gpus=[gpu_reading(procs=[{"mem_bytes": 1}])])], 3, "procs[0].pid"),
    (
        "proc-kind-unknown",
        [node(), sample(1.0, gpus=[gpu_reading(procs=[{"pid": 1, "kind": "vm"}])])],
        3,
        "procs[0].kind",
    ),
    (
        "proc-tenant-empty",
        [node(), sample(1.0, gpus=[gpu_reading(procs=[{"pid": 1, "tenant": ""}])])],
        3,
        "procs[0].tenant",
    ),
    ("procs-not-a-list", [node(), sample(1.0, gpus=[gpu_reading(procs={})])], 3, "gpus[0].procs"),
    ("node-io-not-an-object", [node(), sample(1.0, node_io=[])], 3, "node_io"),
    ("node-io-negative", [node(), sample(1.0, node_io={"ib_tx_bytes_per_s": -1})], 3, "node_io.ib_tx_bytes_per_s"),
    ("duplicate-node-record", [node(), sample(1.0), node()], 4, "second node record for 'n1'"),
    (
        "duplicate-gpu-index-in-node",
        [node(gpus=[{"index": 0, "uuid": "a", "model": "m"}, {"index": 0, "uuid": "b", "model": "m"}])],
        2,
        "duplicate index 0",
    ),
    (
        "duplicate-gpu-index-in-sample",
        [node(), sample(1.0, gpus=[gpu_reading(0), gpu_reading(0)])],
        3,
        "duplicate index 0",
    ),
    ("node-uuid-missing", [node(gpus=[{"index": 0, "model": "m"}])], 2, "gpus[0].uuid"),
    (
        "node-serial-not-string",
        [node(gpus=[{"index": 0, "uuid": "u", "model": "m", "serial": 5}])],
        2,
        "gpus[0].serial",
    ),
    ("node-name-empty", [node(name="")], 2, "node:"),
    (
        "node-power-limit-string",
        [node(gpus=[{"index": 0, "uuid": "u", "model": "m", "power_limit_w": "700"}])],
        2,
        "power_limit_w",
    ),
]


@pytest.mark.parametrize(
    ("records", "lineno", "needle"), [(r, n, s) for _, r, n, s in MALFORMED], ids=[i for i, _, _, _ in MALFORMED]
)
def test_malformed_line_is_refused_with_its_line_number(records: list[Any], lineno: int, needle: str) -> None:
    with pytest.raises(TraceError) as exc:
        parse(*records)
    msg = str(exc.value)
    assert msg.startswith(f"t.jsonl:{lineno}: "), f"error should start with t.jsonl:{lineno}: — got {msg!r}"
    assert needle in msg, f"error should mention {needle!r}: {msg!r}"


def test_line_numbers_count_blank_lines() -> None:
    with pytest.raises(TraceError, match=r"^t\.jsonl:4: "):
        list(parse_lines([HEADER + "\n", json.dumps(node()) + "\n", "\n", "{oops\n"], "t.jsonl"))


# -- what a good trace yields ----------------------------------------------------------


def test_node_and_sample_records_are_parsed_with_units_converted() -> None:
    recs = parse(
        node(),
        sample(
            10.5,
            gpus=[
                gpu_reading(
                    procs=[
                        {
                            "pid": 7,
                            "mem_bytes": 2048,
                            "sm_pct": 33.0,
                            "tenant": "t-1",
                            "kind": "slurm_job",
                            "workload": "job-9",
                        },
                        {"pid": 8},
                    ]
                )
            ],
            node_io={"ib_tx_bytes_per_s": 5, "disk_read_bytes_per_s": 6.5},
        ),
    )
    n, s = recs
    assert isinstance(n, NodeRecord) and isinstance(s, SampleRecord)
    d = n.devices[0]
    assert (d.index, d.uuid, d.serial, d.model) == (0, "GPU-0", "1650", "H100")
    assert d.power_limit_mw == 700_000, "power_limit_w 700 must become 700000 mW"
    assert d.mem_total_bytes == 80 * 2**30 and d.unavailable == {}
    g = s.sample.gpus[0]
    assert s.sample.t == 10.5
    assert g.power_mw == 300_500, "power_w 300.5 must become 300500 mW"
    assert (g.util_pct, g.mem_used_bytes, g.energy_mj, g.sm_active_pct) == (50.0, 1024, 1000, 40.0)
    assert g.unavailable == {}, f"every field was present, yet unavailable={g.unavailable}"
    p1, p2 = g.procs
    assert (p1.pid, p1.mem_bytes, p1.sm_pct) == (7, 2048, 33.0)
    assert p1.attribution == Attribution("t-1", "slurm_job", "job-9")
    assert (p2.mem_bytes, p2.sm_pct) == (None, None)
    assert p2.attribution == Attribution("unattributed", "process", "pid:8")
    io = s.sample.node_io
    assert io is not None and io.ib_tx_bytes_per_s == 5.0 and io.disk_read_bytes_per_s == 6.5
    assert io.net_rx_bytes_per_s is None


GPU_FIELDS = {
    # trace field -> name in GpuSample.unavailable
    "util_pct": "util_pct",
    "mem_used_bytes": "mem_used_bytes",
    "power_w": "power_mw",
    "energy_mj": "energy_mj",
    "sm_active_pct": "sm_active_pct",
    "tensor_active_pct": "tensor_active_pct",
    "nvlink_tx_bytes_per_s": "nvlink_tx_bytes_per_s",
    "nvlink_rx_bytes_per_s": "nvlink_rx_bytes_per_s",
    "pcie_tx_bytes_per_s": "pcie_tx_bytes_per_s",
    "pcie_rx_bytes_per_s": "pcie_rx_bytes_per_s",
}
SAMPLE_ATTR = {"power_w": "power_mw"}


@pytest.mark.parametrize("how", ["absent", "null"])
@pytest.mark.parametrize("field", sorted(GPU_FIELDS))
def test_missing_gpu_reading_is_unavailable_not_zero(field: str, how: str) -> None:
    reading = gpu_reading()
    if how == "absent":
        del reading[field]
    else:
        reading[field] = None
    (_, s) = parse(node(), sample(1.0, gpus=[reading]))
    g = s.sample.gpus[0]
    value = getattr(g, SAMPLE_ATTR.get(field, field))
    assert value is None, f"{field} {how} in the trace was read as {value!r}; it must be None"
    assert g.unavailable == {GPU_FIELDS[field]: ABSENT}, f"unavailable={g.unavailable}"


def test_zero_reading_is_zero_not_unavailable() -> None:
    (_, s) = parse(node(), sample(1.0, gpus=[gpu_reading(util_pct=0, power_w=0, energy_mj=0, sm_active_pct=0)]))
    g = s.sample.gpus[0]
    assert (g.util_pct, g.power_mw, g.energy_mj, g.sm_active_pct) == (0.0, 0, 0, 0.0)
    assert g.unavailable == {}


@pytest.mark.parametrize(
    ("field", "attr", "key"),
    [
        ("serial", "serial", "serial"),
        ("mem_total_bytes", "mem_total_bytes", "mem_total_bytes"),
        ("power_limit_w", "power_limit_mw", "power_limit_mw"),
    ],
)
def test_missing_device_field_is_unavailable(field: str, attr: str, key: str) -> None:
    g = node()["gpus"][0]
    del g[field]
    (n,) = parse(node(gpus=[g]))
    d = n.devices[0]
    assert getattr(d, attr) is None, f"{field} absent must be None, got {getattr(d, attr)!r}"
    assert d.unavailable == {key: ABSENT}


def test_unknown_fields_are_ignored_everywhere() -> None:
    n = node(rack="r7")
    n["gpus"][0]["pci_bus"] = "0000:17:00.0"
    reading = gpu_reading(fan_pct=30, procs=[{"pid": 1, "cmdline": "python train.py"}])
    header = '{"format": "gpuaudit-trace", "version": 1, "writer": "test 1.0"}'
    plain = parse(node(), sample(1.0, gpus=[gpu_reading(procs=[{"pid": 1}])]))
    assert parse(n, sample(1.0, gpus=[reading], cluster="c1"), header=header) == plain


def test_nodes_may_interleave_each_in_its_own_time_order() -> None:
    recs = parse(
        node("a"),
        sample(10.0, "a"),
        node("b"),
        sample(5.0, "b"),  # earlier than a's last sample: allowed, other node
        sample(11.0, "a"),
        sample(6.0, "b"),
        sample(6.0, "b"),  # equal time is not out of order
    )
    assert [(type(r).__name__, r.node) for r in recs] == [
        ("NodeRecord", "a"),
        ("SampleRecord", "a"),
        ("NodeRecord", "b"),
        ("SampleRecord", "b"),
        ("SampleRecord", "a"),
        ("SampleRecord", "b"),
        ("SampleRecord", "b"),
    ]


# -- files -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["trace.jsonl", "trace.jsonl.gz"])
def test_write_then_read_round_trips(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    records = [node("a"), sample(1.0, "a"), sample(2.0, "a", gpus=[gpu_reading(util_pct=None)])]
    assert write_trace(path, records) == 3
    expected = parse(*records)
    assert list(read_trace(path)) == expected
    raw = path.read_bytes()
    if name.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b", "a .gz trace must be gzip-compressed"
        first = gzip.decompress(raw).splitlines()[0]
    else:
        first = raw.splitlines()[0]
    assert json.loads(first) == {"format": "gpuaudit-trace", "version": 1}


def test_read_trace_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(HEADER + "\n" + json.dumps(sample(1.0)) + "\n")
    with pytest.raises(TraceError) as exc:
        list(read_trace(path))
    assert str(exc.value).startswith(f"{path}:2: "), str(exc.value)
