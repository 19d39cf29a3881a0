"""deploy/prometheus and deploy/grafana: rules pass their promtool unit tests, the tests can
fail, dashboards are what tools/grafana_dashboards.py writes, every series they name is one
the collector or the agent exports (tests/fixtures/metrics/*_series.txt), and the example
scrape configs give the jobs the names the rules and dashboards look for."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
SERIES = ROOT / "tests" / "fixtures" / "metrics" / "collector_series.txt"
AGENT_SERIES = ROOT / "tests" / "fixtures" / "metrics" / "agent_series.txt"
GUIDE = ROOT / "docs" / "operator-guide.md"
SCRAPE_EXAMPLES = (PROM / "prometheus.yml", PROM / "prometheus-kubernetes.yml")
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
        ('kind=~"equivocation|rollback|unexplained_reboot|energy_reset"', 'kind=~"rollback|energy_reset"'),
        # The agents' alerts: a blip shorter than for: must not fire ...
        ('up{job="gpuaudit-agent"} == 0\n        for: 10m', 'up{job="gpuaudit-agent"} == 0\n        for: 2m'),
        ("statements_signed_total[15m]) == 0\n        for: 10m", "statements_signed_total[15m]) == 0"),
        ("> 0.8\n        for: 15m", "> 0.8\n        for: 5m"),
        (
            "gpuaudit_agent_spool_oldest_window_end_timestamp_seconds > 600",
            "gpuaudit_agent_spool_oldest_window_end_timestamp_seconds > 6000",
        ),
        (
            '(up{job="gpuaudit-collector"} == 0)\n        for: 15m',
            '(up{job="gpuaudit-collector"} == 0)\n        for: 5m',
        ),
        # ... nor a key restarted with a shorter period, which hands over at its first window,
        # nor one rotated on time; and a key that was not rotated is seen within hours ...
        ("key_rotation_period_seconds + 3600\n        for: 15m", "key_rotation_period_seconds + 3600"),
        ("key_rotation_period_seconds + 3600", "key_rotation_period_seconds"),
        ("key_rotation_period_seconds + 3600", "key_rotation_period_seconds + 86400"),
        # ... nor a backlog per node while the collector itself is down ...
        ('\n            unless on () (up{job="gpuaudit-collector"} == 0)', ""),
        # ... nor an unsupported field, one or two restarts; and the first refusal is seen
        # although its series is born at 1 (which increase() cannot see).
        (
            '(rate(gpuaudit_agent_readings_unavailable_total{field="gpu"}[5m]))',
            "(rate(gpuaudit_agent_readings_unavailable_total[5m]))",
        ),
        ("resets(gpuaudit_agent_samples_total[1h]) >= 3", "resets(gpuaudit_agent_samples_total[1h]) >= 1"),
        (
            "sum by (instance, job, reason) (gpuaudit_agent_rejects_total) > 0",
            "sum by (instance, job, reason) (increase(gpuaudit_agent_rejects_total[15m])) > 0",
        ),
        ("dropped_by_agents_total[1h])) > 0", "dropped_by_agents_total[5m])) > 0"),
        # The large-training alert names the finding and its tenant's pseudonym, and fires for
        # the whole run: not only the hour after the finding was raised.
        ("max by (finding_id, kind, severity, tenant_pseudonym) (", "max by (kind, severity) ("),
        (
            '{kind="large_training",severity=~"high|critical"}\n          ) == 1',
            '{kind="large_training",severity=~"high|critical"}\n          ) == 1\n'
            "          unless max by (finding_id, kind, severity, tenant_pseudonym) (gpuaudit_finding_open offset 1h)",
        ),
        # A clock step and a spool drop are seen for an hour, by direction and by reason, and an
        # agent restart (counters back to 0) is neither.
        ("increase(gpuaudit_agent_clock_jumps_total[1h]) > 0", "increase(gpuaudit_agent_clock_jumps_total[5m]) > 0"),
        ("increase(gpuaudit_agent_clock_jumps_total[1h]) > 0", "changes(gpuaudit_agent_clock_jumps_total[1h]) > 0"),
        (
            "increase(gpuaudit_agent_clock_jumps_total[1h]) > 0",
            "sum by (instance, job) (increase(gpuaudit_agent_clock_jumps_total[1h])) > 0",
        ),
        (
            "increase(gpuaudit_agent_statements_dropped_total[1h]) > 0",
            "increase(gpuaudit_agent_statements_dropped_total[5m]) > 0",
        ),
        (
            "increase(gpuaudit_agent_statements_dropped_total[1h]) > 0",
            "changes(gpuaudit_agent_statements_dropped_total[1h]) > 0",
        ),
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
    for line in [*SERIES.read_text().splitlines(), *AGENT_SERIES.read_text().splitlines()]:
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
        assert not unknown, f"{path.name} queries series neither the collector nor the agent exports: {sorted(unknown)}"


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
        # Links between the dashboards: by tag, resolved by Grafana, so they work under a
        # sub-path (root_url .../grafana/); a fixed "/d/uid" URL would not.
        assert board["links"] and all(
            link["type"] == "dashboards" and link["tags"] == ["gpuaudit"] for link in board["links"]
        ), (name, board["links"])
        assert not re.search(r'"url": "/', text), f"{name}: an absolute URL breaks under a sub-path"
    titles = {json.loads(t)["title"] for t in rendered.values()}
    assert titles == {
        "gpuaudit / Fleet",
        "gpuaudit / Tenant usage",
        "gpuaudit / Findings",
        "gpuaudit / Trust health",
        "gpuaudit / Agents",
    }


def test_per_node_panels_show_the_top_k_only() -> None:
    """A site has thousands of nodes and GPUs: a panel with one series per node or GPU shows the
    top $top (or top 10), never all of them. (The Agents dashboard's per-agent panels are top 10
    or list only agents at fault.)"""
    per_node = 0
    for path in sorted(GRAFANA.glob("*.json")):
        board = json.loads(path.read_text())
        for p in board["panels"]:
            for t in p["targets"]:
                expr = t["expr"]
                if not re.search(r"by \(node\b", expr) and not re.search(r"(?<![(\w])gpuaudit_gpu_\w+\{", expr):
                    continue
                if expr.startswith(("count(", "sum(", "max(", "avg(")) or " > 0" in expr or "> on (" in expr:
                    continue  # one number over all nodes, or only the nodes at fault
                per_node += 1
                assert re.search(r"\b(topk|bottomk)\((\$top|10), ", expr), (path.name, p["title"], expr)
        variables = {v["name"]: v for v in board["templating"]["list"]}
        if "$top" in path.read_text():
            assert variables["top"]["type"] == "custom" and variables["top"]["current"]["value"] == "10", path.name
    assert per_node >= 7, f"found {per_node} per-node queries; the dashboards have 7"


def test_findings_dashboard_lists_open_findings_and_marks_them_on_the_graphs() -> None:
    board = json.loads((GRAFANA / "findings.json").read_text())
    (table,) = [p for p in board["panels"] if p["title"].startswith("Open findings")]
    (target,) = table["targets"]
    assert "gpuaudit_finding_open" in target["expr"] and target["format"] == "table" and target["instant"]
    organize = table["transformations"][0]["options"]
    assert set(organize["indexByName"]) == {"finding_id", "severity", "kind", "tenant_pseudonym"}
    for name in ("findings.json", "fleet.json", "tenants.json"):
        (annotation,) = json.loads((GRAFANA / name).read_text())["annotations"]["list"]
        assert "gpuaudit_finding_open" in annotation["expr"], name
        assert annotation["titleFormat"] == "Finding {{finding_id}} ({{severity}})", name
        assert "{{tenant_pseudonym}}" in annotation["textFormat"], name
        assert annotation["datasource"]["uid"] == "${datasource}" and annotation["enable"], name


def _yaml(text: str) -> Any:
    yaml = pytest.importorskip("yaml", reason="PyYAML absent: pip install -e '.[dev]'")
    return yaml.safe_load(text)


def _rules() -> list[dict[str, Any]]:
    doc = _yaml((PROM / "rules.yml").read_text())
    return [dict(r, group=g["name"]) for g in doc["groups"] for r in g["rules"]]


def test_every_alert_says_what_and_the_agent_alerts_have_a_runbook() -> None:
    guide = GUIDE.read_text()
    runbook = guide[guide.index("### Agent alerts") :]
    for r in _rules():
        if "alert" not in r:
            continue
        a = r["annotations"]
        assert a.get("summary") and a.get("description"), f"{r['alert']} needs a summary and a description"
        if r["group"] == "gpuaudit.agents":
            assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
            assert '"Agent alerts"' in a["description"], f"{r['alert']}: point the description at the runbook"
            assert f"#### `{r['alert']}`" in runbook, f"{r['alert']} has no runbook in {GUIDE.name}, Agent alerts"


def test_example_scrape_configs_name_the_jobs_the_rules_and_dashboards_use() -> None:
    used = set()
    for path in [PROM / "rules.yml", *sorted(GRAFANA.glob("*.json"))]:
        used |= set(re.findall(r'job=\\?"(gpuaudit-[a-z-]+)\\?"', path.read_text()))
    assert used == {"gpuaudit-collector", "gpuaudit-agent"}, used
    for path in SCRAPE_EXAMPLES:
        doc = _yaml(path.read_text())
        jobs = {c["job_name"] for c in doc["scrape_configs"]}
        assert jobs == used, f"{path.name} scrapes {sorted(jobs)}; the rules and dashboards query {sorted(used)}"
        assert doc["rule_files"] == ["rules.yml"], path.name


@needs_promtool
@pytest.mark.parametrize("path", SCRAPE_EXAMPLES, ids=lambda p: p.name)
def test_example_scrape_configs_are_valid(path: Path, tmp_path: Path) -> None:
    p = _promtool("check", "config", path.name, cwd=PROM)
    if p.returncode != 0 and "field kubernetes_sd_configs not found" in p.stdout + p.stderr:
        # Debian's promtool is built without Kubernetes service discovery. Check everything
        # else (relabelling, rule files, job settings) with the discovery block swapped for a
        # static target, and the discovery block itself here.
        doc = _yaml(path.read_text())
        for job in doc["scrape_configs"]:
            sd = job.pop("kubernetes_sd_configs")
            assert [c["role"] for c in sd] == ["pod"], f"{job['job_name']}: discovers pods"
            assert all(c["namespaces"]["names"] == ["gpuaudit"] for c in sd), job["job_name"]
            job["static_configs"] = [{"targets": ["127.0.0.1:9479"]}]
        (tmp_path / path.name).write_text(json.dumps(doc))  # JSON is YAML
        shutil.copy(PROM / "rules.yml", tmp_path / "rules.yml")
        p = _promtool("check", "config", path.name, cwd=tmp_path)
    assert p.returncode == 0, f"promtool check config {path.name}:\n" + p.stdout + p.stderr


def test_kubernetes_example_keeps_pods_that_exist() -> None:
    """Each job of prometheus-kubernetes.yml keeps pods by app label and container port name:
    both must be in deploy/kubernetes, or the job finds no target."""
    pods = set()
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for doc in [_yaml(t) for t in path.read_text().split("\n---\n")]:
            if doc and doc.get("kind") in ("DaemonSet", "StatefulSet"):
                tpl = doc["spec"]["template"]
                for c in tpl["spec"]["containers"]:
                    for port in c.get("ports", []):
                        pods.add(f"{tpl['metadata']['labels']['app.kubernetes.io/name']};{port['name']}")
    doc = _yaml((PROM / "prometheus-kubernetes.yml").read_text())
    for job in doc["scrape_configs"]:
        (keep,) = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        assert keep["source_labels"] == [
            "__meta_kubernetes_pod_label_app_kubernetes_io_name",
            "__meta_kubernetes_pod_container_port_name",
        ], job["job_name"]
        assert keep["regex"] in pods, f"{job['job_name']} keeps {keep['regex']}; the manifests have {sorted(pods)}"
