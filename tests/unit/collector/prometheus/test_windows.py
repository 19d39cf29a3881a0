"""Series -> windows: values, gaps, counter resets, label spellings, and the statement invariants."""

from __future__ import annotations

from pathlib import Path

import pytest

from attestation.chain import ENERGY_RESET_EVENT
from attestation.statement import UNATTRIBUTED, UsageWindow, parse_statement, statement_bytes
from collector.prometheus.client import Chunk, RangeSeries
from collector.prometheus.rules import load_slurm_accounts, load_tenant_rules
from collector.prometheus.windows import (
    UNSIGNED_CHAIN,
    Coverage,
    LabelMap,
    WindowBuilder,
    default_power_limit_mw,
)
from core.errors import ConfigError
from core.tenantrules import TenantRules

T0 = 1_772_424_000_000  # a multiple of 60 s
H100 = "NVIDIA H100 80GB HBM3"
RULES = TenantRules(namespaces={"team-a": "t-a", "team-b": "t-b"}, slurm_accounts={"physics": "t-phys"})


def gpu_labels(host: str = "n1", gpu: int = 0, **extra: str) -> dict[str, str]:
    return {"Hostname": host, "gpu": str(gpu), "UUID": f"GPU-{host}-{gpu}", "modelName": H100, **extra}


def points(step_ms: int, values: list[float | None], t0: int = T0) -> list[tuple[float, str]]:
    """Range-query points on the builder's grid: point k ends 1 ms before t0 + (k + 1) * step."""
    return [((t0 + (k + 1) * step_ms - 1) / 1000, repr(v)) for k, v in enumerate(values) if v is not None]


def series(labels: dict[str, str], step_ms: int, values: list[float | None]) -> RangeSeries:
    return RangeSeries(metric=labels, values=points(step_ms, values))


def build(
    results: dict[str, list[RangeSeries]], *, step_ms: int = 30_000, windows: int = 2, **kw: object
) -> tuple[list[UsageWindow], WindowBuilder]:
    b = WindowBuilder(kw.pop("rules", RULES), step_ms=step_ms, **kw)  # type: ignore[arg-type]
    return b.build(Chunk(T0, T0 + windows * 60_000), results), b


def roundtrip(ws: list[UsageWindow]) -> None:
    """The windows are what a signed statement may say: the strict parser gives them back."""
    for w in ws:
        assert parse_statement(statement_bytes(w)) == w, w


def test_one_busy_gpu_gives_the_agents_fields_in_their_units() -> None:
    lab = gpu_labels(namespace="team-a", pod="trainer-0", container="main")
    ws, _ = build(
        {
            "util": [series(lab, 30_000, [90.0, 100.0, 80.0, 80.0])],
            "power": [series(lab, 30_000, [500.0, 600.0, 400.0, 400.0])],
            "power_max": [series(lab, 30_000, [550.0, 650.0, 400.0, 400.0])],
            "mem_used": [series(lab, 30_000, [1000.0, 2000.0, 2000.0, 2000.0])],
            "mem_total": [series(lab, 30_000, [81559.0] * 4)],
            "energy": [series(lab, 30_000, [1000.0, 2000.0, 3000.0, 4000.0])],
            "sm": [series(lab, 30_000, [0.5, 0.7, 0.5, 0.5])],
        }
    )
    roundtrip(ws)
    assert [(w.node_id, w.start_ms, w.end_ms) for w in ws] == [
        ("n1", T0, T0 + 60_000),
        ("n1", T0 + 60_000, T0 + 120_000),
    ]
    w = ws[0]
    assert w.chain == UNSIGNED_CHAIN and "signature" in w.unavailable
    g = w.gpus[0]
    assert (g.uuid, g.index, g.model, g.samples) == ("GPU-n1-0", 0, H100, 2)
    assert g.util_mean_permille == 950
    assert (g.power_mean_mw, g.power_max_mw, g.power_limit_mw) == (550_000, 650_000, 700_000)
    assert g.mem_used_max_bytes == 2000 * 2**20 and g.mem_total_bytes == 81559 * 2**20
    assert (g.energy_start_mj, g.energy_end_mj) == (1000, 2000)
    assert ws[1].gpus[0].energy_start_mj == 2000, "the next window starts from the last reading before it"
    assert g.sm_active_mean_permille == 600
    assert g.tensor_active_mean_permille is None and "tensor_active_mean_permille" in g.unavailable
    assert g.serial is None and "serial" in g.unavailable
    assert g.series is not None and g.series.util_permille == (900, 1000) and g.series.power_mw == (500_000, 600_000)
    [wl] = g.workloads
    assert (wl.tenant, wl.kind, wl.workload, wl.share_permille, wl.gpu_ms) == (
        "t-a",
        "k8s_pod",
        "team-a/trainer-0",
        1000,
        60_000,
    )


def test_a_gpu_with_no_point_in_a_window_is_absent_not_zero() -> None:
    a, b = gpu_labels(gpu=0), gpu_labels(gpu=1)
    ws, builder = build(
        {
            "util": [series(a, 30_000, [50.0, 50.0, None, None]), series(b, 30_000, [50.0, None, 40.0, 40.0])],
            "power": [series(a, 30_000, [300.0, 300.0, None, None]), series(b, 30_000, [300.0, None, 300.0, 300.0])],
        }
    )
    roundtrip(ws)
    assert [len(w.gpus) for w in ws] == [2, 1]
    assert ws[1].gpus[0].uuid == "GPU-n1-1"
    assert ws[0].gpus[1].samples == 1, "a step without a point is not a sample"
    assert ws[0].gpus[1].series is not None and ws[0].gpus[1].series.util_permille == (500, None)
    assert builder.coverage.host_windows == {"n1": 2}


def test_a_host_missing_for_a_window_is_reported() -> None:
    ws, builder = build(
        {"util": [series(gpu_labels("n1"), 30_000, [10.0] * 4), series(gpu_labels("n2"), 30_000, [10.0, 10.0])]}
    )
    assert [(w.node_id, w.start_ms) for w in ws] == [("n1", T0), ("n2", T0), ("n1", T0 + 60_000)]
    builder.coverage.windows_in_span = 2
    assert builder.coverage.to_json()["hosts_with_windows_missing"] == {"n2": 1}
    assert any("n2 1" in line for line in builder.coverage.summary_lines())


def test_energy_counter_reset_is_an_event_not_a_negative_use() -> None:
    lab = gpu_labels()
    ws, _ = build(
        {
            "util": [series(lab, 30_000, [10.0] * 6)],
            "energy": [series(lab, 30_000, [5000.0, 6000.0, 100.0, 200.0, 300.0, 400.0])],
        },
        windows=3,
    )
    roundtrip(ws)
    g0, g1, g2 = (w.gpus[0] for w in ws)
    assert (g0.energy_start_mj, g0.energy_end_mj, g0.events) == (5000, 6000, ())
    assert (g1.energy_start_mj, g1.energy_end_mj) == (6000, 200)
    assert [e.kind for e in g1.events] == [ENERGY_RESET_EVENT]
    assert (g2.energy_start_mj, g2.energy_end_mj, g2.events) == (200, 400, ())


def test_energy_carries_over_chunks_and_gaps() -> None:
    lab = gpu_labels()
    b = WindowBuilder(RULES, step_ms=30_000)
    b.build(
        Chunk(T0, T0 + 60_000),
        {"util": [series(lab, 30_000, [1.0, 1.0])], "energy": [series(lab, 30_000, [10.0, 20.0])]},
    )
    t1 = T0 + 120_000  # a window with no point in between
    later = [RangeSeries(lab, points(30_000, [1.0], t0=t1))]
    energy = [RangeSeries(lab, points(30_000, [25.0], t0=t1))]
    [w] = b.build(Chunk(t1, t1 + 60_000), {"util": later, "energy": energy})
    assert (w.gpus[0].energy_start_mj, w.gpus[0].energy_end_mj) == (20, 25)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # ServiceMonitor without honorLabels: the workload's labels renamed, plain ones the exporter's.
        (
            {
                "exported_namespace": "team-a",
                "exported_pod": "p1",
                "namespace": "gpu-operator",
                "pod": "nvidia-dcgm-exporter-x",
            },
            ("t-a", "k8s_pod", "team-a/p1"),
        ),
        ({"namespace": "team-b", "pod": "p2"}, ("t-b", "k8s_pod", "team-b/p2")),
        ({"pod_namespace": "team-a", "pod_name": "p3"}, ("t-a", "k8s_pod", "team-a/p3")),  # --use-old-namespace
        ({"namespace": "elsewhere", "pod": "p4"}, (UNATTRIBUTED, "k8s_pod", "elsewhere/p4")),
        ({"hpc_job": "4242"}, ("t-phys", "slurm_job", "slurm:4242")),
        ({"hpc_job": "9999"}, (UNATTRIBUTED, "slurm_job", "slurm:9999")),  # account unknown
        # The exporter's own pod labels on an idle-looking busy GPU: busy time nobody claims.
        ({"namespace": "gpu-operator", "pod": "dcgm-exporter-abcde"}, (UNATTRIBUTED, "process", "no-visible-process")),
        ({}, (UNATTRIBUTED, "process", "no-visible-process")),
    ],
)
def test_label_spellings_attribute_the_gpu(extra: dict[str, str], expected: tuple[str, str, str]) -> None:
    lab = gpu_labels(**extra)
    ws, _ = build({"util": [series(lab, 30_000, [60.0, 60.0])]}, windows=1, slurm_accounts={"4242": "physics"})
    roundtrip(ws)
    [wl] = ws[0].gpus[0].workloads
    assert (wl.tenant, wl.kind, wl.workload) == expected


def test_plain_labels_are_the_exporters_where_the_host_has_renamed_ones() -> None:
    busy = gpu_labels(gpu=0, exported_namespace="team-a", exported_pod="p", namespace="monitoring", pod="exp-1")
    idle = gpu_labels(gpu=1, namespace="monitoring", pod="exp-1")
    ws, _ = build({"util": [series(busy, 30_000, [90.0, 90.0]), series(idle, 30_000, [0.0, 0.0])]}, windows=1)
    g0, g1 = ws[0].gpus
    assert [w.workload for w in g0.workloads] == ["team-a/p"]
    assert g1.workloads == (), "an idle GPU under the exporter's own labels has no workload"


def test_idle_gpu_without_pod_labels_has_no_workload_and_lowercase_hostname_works() -> None:
    lab = {"hostname": "n7", "gpu": "3", "UUID": "GPU-x", "modelName": H100}
    ws, _ = build({"util": [series(lab, 30_000, [0.0, 0.0])]}, windows=1)
    assert ws[0].node_id == "n7" and ws[0].gpus[0].index == 3 and ws[0].gpus[0].workloads == ()


def test_two_jobs_on_one_gpu_share_it_equally() -> None:
    a, b = gpu_labels(hpc_job="1"), gpu_labels(hpc_job="2")
    ws, _ = build({"util": [series(a, 30_000, [80.0, 80.0]), series(b, 30_000, [80.0, None])]}, windows=1)
    roundtrip(ws)
    g = ws[0].gpus[0]
    assert g.split_method == "equal"
    # Step 1: both jobs (half each); step 2: job 1 alone.
    assert {w.workload: (w.share_permille, w.gpu_ms) for w in g.workloads} == {
        "slurm:1": (750, 45_000),
        "slurm:2": (250, 15_000),
    }


def test_label_map_reads_renamed_labels() -> None:
    lab = {"instance": "n9:9400", "gpu_uuid": "GPU-9", "gpu": "0", "modelName": H100, "ns": "team-a", "pod": "p"}
    lm = LabelMap.parse(["host=instance,uuid=gpu_uuid", "namespace=ns"])
    ws, _ = build({"util": [series(lab, 30_000, [90.0, 90.0])]}, windows=1, labels=lm)
    assert ws[0].node_id == "n9:9400" and ws[0].gpus[0].uuid == "GPU-9"
    assert ws[0].gpus[0].workloads[0].workload == "team-a/p"


@pytest.mark.parametrize("bad", ["host", "colour=x", "host=", "host=a,host=b"])
def test_label_map_rejects_what_it_cannot_use(bad: str) -> None:
    with pytest.raises(ConfigError):
        LabelMap.parse([bad])


def test_series_without_host_or_uuid_and_nan_points_are_counted() -> None:
    good = gpu_labels()
    nohost = {"gpu": "0", "UUID": "GPU-z", "modelName": H100}
    nouuid = {"Hostname": "n1", "gpu": "1"}
    nan = RangeSeries(gpu_labels(gpu=2), [((T0 + 30_000 - 1) / 1000, "NaN")])
    cov = Coverage()
    build(
        {"util": [series(good, 30_000, [1.0, 1.0]), RangeSeries(nohost, []), RangeSeries(nouuid, []), nan]},
        windows=1,
        coverage=cov,
    )
    d = cov.to_json()
    assert d["series_skipped"] == {
        "DCGM_FI_DEV_GPU_UTIL without a host label (Hostname/hostname)": 1,
        "DCGM_FI_DEV_GPU_UTIL without a GPU UUID label (UUID)": 1,
    }
    assert d["points_not_finite"] == {"util": 1}
    assert "DCGM_FI_DEV_POWER_USAGE" in d["metrics_absent"]


def test_power_limit_series_beats_the_table_and_an_unknown_model_says_why() -> None:
    a = gpu_labels(gpu=0)
    b = {**gpu_labels(gpu=1), "modelName": "Tesla K80"}
    ws, _ = build(
        {
            "util": [series(a, 30_000, [1.0, 1.0]), series(b, 30_000, [1.0, 1.0])],
            "power_limit": [series(a, 30_000, [500.0, 500.0])],
        },
        windows=1,
    )
    roundtrip(ws)
    ga, gb = ws[0].gpus
    assert ga.power_limit_mw == 500_000
    assert gb.power_limit_mw is None and "power_limit_mw" in gb.unavailable


@pytest.mark.parametrize(
    ("model", "watts"),
    [
        ("NVIDIA H100 80GB HBM3", 700),
        ("NVIDIA H100 PCIe", 350),
        ("NVIDIA H100 NVL", 400),
        ("NVIDIA A100-SXM4-80GB", 400),
        ("NVIDIA A100-PCIE-40GB", 250),
        ("NVIDIA A100 80GB PCIe", 300),
        ("NVIDIA L40S", 350),
        ("NVIDIA L4", 72),
        ("NVIDIA H200", 700),
        ("NVIDIA B200", 1000),
        ("NVIDIA GB200", 1200),
        ("Tesla K80", None),
    ],
)
def test_default_power_limits(model: str, watts: int | None) -> None:
    assert default_power_limit_mw(model) == (None if watts is None else watts * 1000)


def test_a_step_of_a_whole_window_gives_no_series_and_says_why() -> None:
    lab = gpu_labels()
    ws, _ = build({"util": [series(lab, 60_000, [90.0, 90.0])]}, step_ms=60_000)
    roundtrip(ws)
    assert ws[0].gpus[0].series is None and "series" in ws[0].gpus[0].unavailable


def test_a_step_that_does_not_divide_the_window_is_refused() -> None:
    with pytest.raises(ConfigError, match="divide"):
        WindowBuilder(RULES, step_ms=45_000)


# ---------------------------------------------------------------------------
# Rules files


def test_rules_file_is_the_agents_tenants_table(tmp_path: Path) -> None:
    p = tmp_path / "rules.toml"
    p.write_text('[tenants.namespaces]\nteam-a = "t-a"\n[tenants.slurm_accounts]\nphysics = "t-p"\n')
    rules = load_tenant_rules(p)
    assert rules.namespaces == {"team-a": "t-a"} and rules.slurm_accounts == {"physics": "t-p"}


def test_an_agent_config_is_a_rules_file(tmp_path: Path) -> None:
    p = tmp_path / "agent.toml"
    p.write_text('node_id = "n1"\nwindow_s = 60\n[tenants.namespaces]\nteam-a = "t-a"\n')
    assert load_tenant_rules(p).namespaces == {"team-a": "t-a"}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[[tenants.lease]]\ntenant = "t-a"\n', "lease"),
        ('[tenants.namespace]\nx = "t"\n', "unknown key"),
        ('node_id = "n1"\n', "no \\[tenants\\]"),
        ("[tenants\n", "rules"),
    ],
)
def test_rules_file_errors_name_the_problem(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "rules.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_tenant_rules(p)


def test_slurm_accounts_file_is_sacct_parsable_output(tmp_path: Path) -> None:
    p = tmp_path / "jobs.txt"
    p.write_text("4242|physics\n# comment\n\n4243|biology|extra\n")
    assert load_slurm_accounts(p) == {"4242": "physics", "4243": "biology"}
    p.write_text("4242 physics\n")
    with pytest.raises(ConfigError, match=":1:"):
        load_slurm_accounts(p)


def test_columns_are_arrays_and_a_value_past_64_bits_keeps_its_value() -> None:
    """The rows travel as ``array('q')`` columns (-1: no value); a value that does not fit in
    64 bits (a reading of 10^14 MiB) keeps the GPU's columns a list, with the same windows."""
    from array import array

    lab = gpu_labels(namespace="team-a", pod="trainer-0")
    results = {
        "util": [series(lab, 30_000, [90.0, 90.0, 90.0, 90.0]), series(gpu_labels(gpu=1), 30_000, [50.0] * 4)],
        "mem_total": [series(lab, 30_000, [1e14, 1e14, 81559.0, None])],
    }
    ws, _ = build(results)
    assert [g.mem_total_bytes for w in ws for g in w.gpus] == [round(1e14 * (1 << 20)), None, 81559 << 20, None]
    rows = WindowBuilder(RULES, step_ms=30_000).compute(Chunk(T0, T0 + 120_000), results)
    (_host, gpus), = rows.hosts  # fmt: skip
    assert [type(g[4]) for g in gpus] == [list, array]
    assert WindowBuilder(RULES, step_ms=30_000).assemble(rows) == ws
