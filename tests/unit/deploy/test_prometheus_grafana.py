"""deploy/prometheus and deploy/grafana: rules pass their promtool unit tests, the tests can
fail, dashboards are what tools/grafana_dashboards.py writes, and every series they name
is one the collector exports (tests/fixtures/metrics/collector_series.txt)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
SERIES = ROOT / "tests" / "fixtures" / "metrics" / "collector_series.txt"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool absent (Debian package prometheus; .ci/run installs it)"
)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_rules_are_valid_and_pass_their_unit_tests() -> None:
    p = _promtool("check", "rules", "rules.yml", cwd=PROM)
    assert p.returncode == 0, p.stdout + p.stderr
    p = _promtool("test", "rules", "rules_test.yml", cwd=PROM)
    assert p.returncode == 0, "promtool test rules failed:\n" + p.stdout + p.stderr


@needs_promtool
@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            "gpuaudit_node_last_statement_end_timestamp_seconds) > 600",
            "gpuaudit_node_last_statement_end_timestamp_seconds) > 6000",
        ),
        ('severity=~"high|critical"', 'severity=~"critical"'),
        (
            "rate(gpuaudit_unattributed_gpu_seconds_total[30m])) >= 1",
            "rate(gpuaudit_unattributed_gpu_seconds_total[30m])) >= 3",
        ),
        ("unless gpuaudit_collector_chain_breaks_total offset 15m", "unless gpuaudit_collector_chain_breaks_total"),
    ],
)
def test_rule_tests_catch_a_broken_rule(tmp_path: Path, old: str, new: str) -> None:
    rules = (PROM / "rules.yml").read_text()
    assert old in rules, f"mutation target {old!r} no longer in rules.yml; update this test"
    (tmp_path / "rules.yml").write_text(rules.replace(old, new))
    shutil.copy(PROM / "rules_test.yml", tmp_path / "rules_test.yml")
    p = _promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert p.returncode != 0, f"rules_test.yml did not notice {old!r} -> {new!r}"


def _exported() -> set[str]:
    names = set()
    for line in SERIES.read_text().splitlines():
        name, kind, _ = line.split(" ")
        if kind == "counter":
            names.add(name + "_total")
        elif kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
        elif kind == "info":
            names.add(name + "_info")
        else:
            names.add(name)
    return names


def _named(text: str) -> set[str]:
    return set(re.findall(r"\bgpuaudit_[a-z_]+\b", text))


def test_rules_and_dashboards_name_only_exported_series() -> None:
    exported = _exported()
    for path in [PROM / "rules.yml", *sorted(GRAFANA.glob("*.json"))]:
        unknown = _named(path.read_text()) - exported
        assert not unknown, f"{path.name} queries series the collector does not export: {sorted(unknown)}"


def test_dashboards_are_generated_and_well_formed() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import grafana_dashboards
    finally:
        sys.path.pop(0)
    rendered = grafana_dashboards.render()
    assert sorted(rendered) == sorted(p.name for p in GRAFANA.glob("*.json"))
    for name, text in rendered.items():
        assert (GRAFANA / name).read_text() == text, f"deploy/grafana/{name} is stale: run tools/grafana_dashboards.py"
        board = json.loads(text)
        assert board["uid"].startswith("gpuaudit-") and board["panels"], name
        assert [p["id"] for p in board["panels"]] == list(range(1, len(board["panels"]) + 1)), name
        for p in board["panels"]:
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", (name, p["title"])
            assert all(t["expr"].strip() for t in p["targets"]), (name, p["title"])
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, (name, p["title"])
    titles = {json.loads(t)["title"] for t in rendered.values()}
    assert titles == {"gpuaudit / Fleet", "gpuaudit / Tenant usage", "gpuaudit / Findings", "gpuaudit / Trust health"}
