"""The gpuaudit Grafana dashboards, one module each; ``board`` holds what they share.

tools/grafana_dashboards.py writes them to deploy/grafana/ (``BOARDS``: file name -> builder).
"""

from __future__ import annotations

from collections.abc import Callable

from dashboards.agents import agents
from dashboards.board import Board
from dashboards.findings import findings
from dashboards.fleet import fleet
from dashboards.tenants import tenants
from dashboards.trust import trust

BOARDS: dict[str, Callable[[], Board]] = {
    "fleet.json": fleet,
    "tenants.json": tenants,
    "findings.json": findings,
    "trust.json": trust,
    "agents.json": agents,
}
