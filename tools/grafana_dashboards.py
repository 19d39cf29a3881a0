"""Generate deploy/grafana/*.json: the gpuaudit Grafana dashboards.

Run ``python tools/grafana_dashboards.py`` after changing a panel; a test checks that the
committed JSON is what this script writes, and a real Prometheus runs every panel's and
annotation's query (tests/integration/test_prometheus_dashboards.py). Dashboards use a
``datasource`` variable (any Prometheus that scrapes the collector and loads
deploy/prometheus/rules.yml); the Agents dashboard also needs the agents scraped as job
``gpuaudit-agent`` (deploy/prometheus/prometheus.yml).

The dashboards are built with Grafana's Foundation SDK (``grafana-foundation-sdk``, generated
from Grafana's own schemas; pinned in pyproject.toml's dev extra, since another version may
write other JSON), one module per dashboard in tools/dashboards/; ``Board.panel``
(tools/dashboards/board.py) is the one place a panel's shape is decided.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dashboards import BOARDS

OUT = Path(__file__).resolve().parents[1] / "deploy" / "grafana"


def render() -> dict[str, str]:
    return {name: json.dumps(make().json(), indent=2, sort_keys=True) + "\n" for name, make in BOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
