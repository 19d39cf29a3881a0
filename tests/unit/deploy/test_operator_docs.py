"""docs/operator-guide.md documents every config key, alert and metric that exists."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from collector.config import CollectorConfig
from core.agentconfig import AgentConfig

ROOT = Path(__file__).resolve().parents[3]
GUIDE = (ROOT / "docs" / "operator-guide.md").read_text()


def test_every_config_key_is_in_the_reference() -> None:
    for cls in (AgentConfig, CollectorConfig):
        for f in dataclasses.fields(cls):
            if f.name == "tenant_rules":  # the [tenants] table
                continue
            assert f"| `{f.name}` |" in GUIDE, f"{cls.__name__}.{f.name} is missing from the operator guide's tables"


def test_every_alert_and_metric_is_documented() -> None:
    alerts = re.findall(r"- alert: (\w+)", (ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    assert len(alerts) >= 5
    for a in alerts:
        assert f"`{a}`" in GUIDE, f"alert {a} is not in the operator guide"
    series = (ROOT / "tests" / "fixtures" / "metrics" / "collector_series.txt").read_text().splitlines()
    series += (ROOT / "tests" / "fixtures" / "metrics" / "agent_series.txt").read_text().splitlines()
    for line in series:
        name = line.split(" ")[0]
        assert name in GUIDE, f"metric {name} is not in the operator guide"
    assert (ROOT / "docs" / "threat-model.md").exists()
