"""collector.report: what the evidence report computes and what its HTML may contain."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from attestation.statement import Chain, GpuWindow, UsageWindow, Workload, statement_bytes
from collector.detect import flops
from collector.detect.findings import rfc3339_ms
from collector.report import ReportError, ReportOptions, build_report, chart_heatmap, collect, store_args_for
from collector.store.base import FindingRecord, StatementRecord

T0 = 1_772_424_000_000  # 2026-03-02T04:00:00Z, a multiple of 60 s
WINDOW = 60_000
MODEL = "NVIDIA H100 80GB HBM3"


def _gpu(i: int, tenant: str, util: int) -> GpuWindow:
    return GpuWindow(
        index=i,
        uuid=f"GPU-{i:04d}",
        serial=f"16500{i:08d}",
        model=MODEL,
        mem_total_bytes=85_520_809_984,
        power_limit_mw=700_000,
        samples=60,
        energy_start_mj=0,
        energy_end_mj=36_000_000,
        power_mean_mw=600_000,
        power_max_mw=650_000,
        util_mean_permille=util,
        mem_used_max_bytes=1,
        workloads=(Workload(tenant, "k8s_pod", "ns/train-0", 1, 1, 1000, WINDOW),),
    )


@dataclass
class FakeStore:
    """The two Store methods the report reads, over hand-made statements."""

    records: list[StatementRecord] = field(default_factory=list)
    finding_records: list[FindingRecord] = field(default_factory=list)

    def add(self, node: str, key: str, seq: int, start_ms: int, tenant: str, gpus: int = 8, util: int = 900) -> None:
        w = UsageWindow(
            node_id=node,
            boot_id="b",
            agent_version="0.1.0",
            start_ms=start_ms,
            end_ms=start_ms + WINDOW,
            sample_interval_ms=1000,
            chain=Chain(key, seq, None if seq == 0 else "0" * 64),
            gpus=tuple(_gpu(i, tenant, util) for i in range(gpus)),
        )
        payload = statement_bytes(w)
        self.records.append(
            StatementRecord(
                key_id=key,
                seq=seq,
                node_id=node,
                start_ms=start_ms,
                end_ms=start_ms + WINDOW,
                digest=hashlib.sha256(payload).hexdigest(),
                payload=payload,
                payload_type="application/vnd.in-toto+json",
                signatures=(),
                received_ms=start_ms + WINDOW,
            )
        )

    def findings(self, tenant: str | None = None) -> list[FindingRecord]:
        return list(self.finding_records)

    def iter_statements(
        self,
        key_id: str | None = None,
        *,
        from_seq: int = 0,
        window_from_ms: int | None = None,
        window_to_ms: int | None = None,
    ) -> Iterator[StatementRecord]:
        for r in sorted(self.records, key=lambda r: (r.key_id, r.seq)):
            if window_from_ms is not None and r.end_ms <= window_from_ms:
                continue
            if window_to_ms is not None and r.start_ms >= window_to_ms:
                continue
            yield r


def _finding(tenant: str, windows: int, fid: str = "f-0123456789abcdef") -> FindingRecord:
    doc = {
        "id": fid,
        "kind": "large_training",
        "tenant": tenant,
        "tenants": [tenant],
        "severity": "critical",
        "started_at": "2026-03-02T04:00:00Z",
        "detected_at": "2026-03-02T04:10:00Z",
        "gpus": 16,
        "nodes": 2,
        "gpu_hours": 5.3,
        "flop_estimate": [1.0e20, 2.2e20],
        "score": 0.8,
        "opacity": {"score": 0.83, "reasons": ["nominee directors", "beneficial owners not disclosed"]},
        "evidence": {
            "last_window_end": rfc3339_ms(T0 + windows * WINDOW),
            "gpu_models": {MODEL: 16},
            "signals": {"concurrent_training_gpus": {"value": 16.0, "threshold": 64, "unit": "GPUs", "fired": False}},
        },
    }
    return FindingRecord(fid, "large_training", tenant, "critical", T0, T0 + 10 * WINDOW, json.dumps(doc))


def _site(tenant: str = "t-kestrel", windows: int = 20) -> FakeStore:
    store = FakeStore()
    for n, node in enumerate(("n1", "n2")):
        for i in range(windows):
            store.add(node, f"sha256:{n}", i, T0 + i * WINDOW, tenant)
    for i in range(windows):  # a bystander: read for the span, never counted
        store.add("n3", "sha256:9", i, T0 + i * WINDOW, "t-other", util=100)
    store.finding_records.append(_finding(tenant, windows))
    return store


def test_unknown_finding_names_the_known_ones() -> None:
    with pytest.raises(ReportError) as err:
        collect(_site(), "f-nope", ReportOptions())
    assert "f-0123456789abcdef" in err.value.diagnostics()
    assert "gpuaudit-collector findings" in err.value.diagnostics()


def test_counts_only_the_tenants_statements_and_recomputes_flop() -> None:
    store = _site()
    data = collect(store, "f-0123456789abcdef", ReportOptions(lead_in_ms=5 * WINDOW))
    assert data.statements == 40 and len(data.keys) == 2 and data.nodes == 2
    assert data.statements_scanned == 60, "the bystander's statements are read but not counted"
    assert all(k.count == 20 and k.contiguous and (k.first_seq, k.last_seq) == (0, 19) for k in data.keys)
    # 5 lead-in buckets before any statement (no data, not 0 GPUs), then 16 GPUs busy.
    assert data.bucket_ms == WINDOW
    assert data.gpus_in_use[:5] == [None] * 5 and data.covered[:5] == [False] * 5
    assert data.no_data_runs() == [(0, 4)]
    assert data.gpus_in_use[5:25] == [pytest.approx(16.0)] * 20
    assert data.gpu_equivalents[5] == pytest.approx(16.0)
    peak = flops.lookup(MODEL)
    assert peak is not None
    per_window = 16 * peak.bf16_dense_flops * 0.9 * 60
    lo, hi = data.flop_cum[-1]
    assert lo == pytest.approx(20 * per_window * 0.25) and hi == pytest.approx(20 * per_window * 0.55)
    assert [label for label, _ in data.heat_rows] == ["n1", "n2"]
    assert data.heat_rows[0][1][5] == pytest.approx(0.9) and data.heat_rows[0][1][0] is None
    lines = sorted(f"{r.key_id} {r.seq} {r.digest}\n" for r in store.records if r.node_id != "n3")
    assert data.evidence_sha256 == hashlib.sha256("".join(lines).encode()).hexdigest()


def test_charts_are_downsampled_and_nodes_grouped() -> None:
    store = FakeStore()
    for n in range(30):
        for i in range(100):
            store.add(f"n{n:02d}", f"sha256:{n:02d}", i, T0 + i * WINDOW, "t-x", gpus=1)
    store.finding_records.append(_finding("t-x", 99))
    data = collect(store, "f-0123456789abcdef", ReportOptions(lead_in_ms=0, max_time_buckets=25, max_heat_rows=10))
    assert len(data.bucket_starts) <= 25 and data.bucket_ms == 4 * WINDOW
    assert len(data.heat_rows) == 10 and data.heat_nodes_per_row == 3
    assert data.heat_rows[0][0] == "n00 … n02"
    assert data.gpus_in_use[0] == pytest.approx(30.0), "time-weighted mean over the bucket, not a sum"


def test_a_gap_in_a_keys_statements_is_shown() -> None:
    store = _site()
    store.records = [r for r in store.records if not (r.key_id == "sha256:0" and r.seq == 7)]
    data = collect(store, "f-0123456789abcdef", ReportOptions())
    gap = {k.key_id: k.contiguous for k in data.keys}
    assert gap == {"sha256:0": False, "sha256:1": True}


def test_html_is_self_contained_and_escapes_what_nodes_sent() -> None:
    evil = '<script>alert("x")</script>'
    store = _site(tenant=evil)
    text, _ = build_report(
        store, "f-0123456789abcdef", ReportOptions(store_args="--db /srv/c.db"), generated_ms=T0, version="9.9"
    )
    assert "<script" not in text.lower(), "a tenant name from a node must never become markup"
    assert "&lt;script&gt;" in text
    # Nothing to fetch: no script, stylesheet, image, font or frame from anywhere.
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", text), "the report must not reference anything"
    assert "default-src 'none'" in text
    for chart in ("chart-gpus", "chart-heatmap", "chart-flop"):
        assert f'id="{chart}"' in text
    assert "gpuaudit-collector export --db /srv/c.db --tenant" in text
    assert "gpuaudit-collector log public-key --db /srv/c.db &gt; log-key.pem" in text
    verify = re.search(r'<pre id="verify-commands">(.*?)</pre>', text, re.S)
    assert verify, "the report has no verify commands"
    assert verify.group(1).startswith("gpuaudit-verify --log-key log-key.pem bundle-"), verify.group(1)
    # Two sums of different things are never presented as one: the chart's tenant-wide FLOP and
    # the verifier's tenant-wide GPU-hours say how they differ from the run's figures.
    assert "counts only the run’s training workloads from the run’s start" in text
    assert "at least the run’s GPU-hours in this report" in text
    assert "/srv" not in verify.group(1), "the verifier's command must not carry the operator's paths"
    assert "gpuaudit-verify</code> prints its fingerprint" not in text, "no fingerprint was given"
    fp = "sha256:" + "ab" * 32
    text, _ = build_report(
        store, "f-0123456789abcdef", ReportOptions(log_key_fingerprint=fp), generated_ms=T0, version="9.9"
    )
    assert f"must be <code class=digest>{fp}</code>" in text
    assert "nominee directors" in text and "1.0&#8239;×&#8239;10<sup>20</sup>" in text


def test_no_statement_for_the_tenant_is_an_error_not_an_empty_report() -> None:
    store = _site()
    store.records = [r for r in store.records if r.node_id == "n3"]
    with pytest.raises(ReportError, match="no stored statement names"):
        collect(store, "f-0123456789abcdef", ReportOptions())


def test_other_kinds_of_finding_are_refused_with_a_reason() -> None:
    store = _site()
    doc = json.loads(store.finding_records[0].json_text) | {"kind": "equivocation", "tenant": "", "tenants": []}
    store.finding_records = [FindingRecord("f-1", "equivocation", "", "high", T0, T0, json.dumps(doc))]
    with pytest.raises(ReportError, match="cover large_training findings"):
        collect(store, "f-1", ReportOptions())


def test_time_before_any_statement_is_no_data_and_time_without_the_tenant_is_not_in_use() -> None:
    store = _site()
    # n1 signs statements of another tenant 3 windows before the run (a second key of the node);
    # before that no node signed anything.
    for i in range(3):
        store.add("n1", "sha256:0b", i, T0 - (3 - i) * WINDOW, "t-other", gpus=2)
    data = collect(store, "f-0123456789abcdef", ReportOptions(lead_in_ms=5 * WINDOW))
    assert data.gpus_in_use[:5] == [None, None, 0.0, 0.0, 0.0], "no statement: None; statements without it: 0"
    assert data.gpu_equivalents[:5] == [None, None, 0.0, 0.0, 0.0]
    assert data.no_data_runs() == [(0, 1)]
    (n1, u1), (n2, u2) = data.heat_rows
    assert (n1, n2) == ("n1", "n2")
    assert u1[:5] == [None] * 5 and data.heat_covered[0][:5] == [False, False, True, True, True]
    assert data.heat_covered[1][:5] == [False] * 5, "n2 signed nothing before the run: no data, not idle"

    svg = chart_heatmap(data, [])
    # Not in use (grey) only where the node signed statements without the tenant: 3 cells of n1.
    assert svg.count('fill="#eeeeee"') == 3 + 1, "3 grey cells and the legend's swatch"
    assert svg.count('class="nodata"') == 2 + 1, "one hatched run per row and the legend's swatch"
    assert ">no data</text>" in svg

    text, _ = build_report(
        store, "f-0123456789abcdef", ReportOptions(lead_in_ms=5 * WINDOW), generated_ms=T0, version="9.9"
    )
    gpus = re.search(r'<svg id="chart-gpus".*?</svg>', text, re.S)
    assert gpus and 'class="nodata"' in gpus.group(0) and ">no data</text>" in gpus.group(0)
    assert "No node signed any statement from 2026-03-02 03:55 UTC to 2026-03-02 03:57 UTC" in text


def test_a_report_with_statements_throughout_draws_no_no_data() -> None:
    store = _site()
    for i in range(5):
        store.add("n3", "sha256:8", i, T0 - (5 - i) * WINDOW, "t-other")
    data = collect(store, "f-0123456789abcdef", ReportOptions(lead_in_ms=5 * WINDOW))
    assert data.gpus_in_use[:5] == [0.0] * 5 and data.no_data_runs() == []
    text, _ = build_report(
        store, "f-0123456789abcdef", ReportOptions(lead_in_ms=5 * WINDOW), generated_ms=T0, version="9.9"
    )
    gpus = re.search(r'<svg id="chart-gpus".*?</svg>', text, re.S)
    assert gpus and gpus.group(0).count('class="nodata"') == 1, "only the legend's swatch is hatched"
    assert "No node signed any statement" not in text


@pytest.mark.parametrize(
    ("db", "config", "expected"),
    [
        ("/srv/c.db", None, "--db /srv/c.db"),
        ("/srv/my store/c.db", None, "--db '/srv/my store/c.db'"),
        (
            "postgresql://audit:s3cret@db.internal:5432/gpuaudit",
            None,
            "--db postgresql://audit@db.internal:5432/gpuaudit",
        ),
        (None, Path("/etc/gpuaudit/collector.toml"), "--config /etc/gpuaudit/collector.toml"),
        (None, None, ""),
    ],
)
def test_the_store_is_named_as_a_shell_reads_it_and_without_a_password(
    db: str | None, config: Path | None, expected: str
) -> None:
    assert store_args_for(db, config) == expected


def test_a_bucket_partly_without_data_is_averaged_over_the_time_with_data() -> None:
    store = _site()  # 16 GPUs busy from T0
    # 2 windows of lead-in before any statement, buckets of 4 windows: the first bucket has
    # data for half its time, all of it with 16 GPUs in use.
    data = collect(store, "f-0123456789abcdef", ReportOptions(lead_in_ms=2 * WINDOW, max_time_buckets=6))
    assert data.bucket_ms == 4 * WINDOW and data.bucket_starts[0] == T0 - 2 * WINDOW
    assert data.covered[0] and data.no_data_runs() == []
    assert data.gpus_in_use[0] == pytest.approx(16.0), "half a bucket of no data must not halve the GPUs"
    assert data.gpus_in_use[1] == pytest.approx(16.0)
