"""Golden /metrics of the agent: a live agent (simulated source) streaming to a real collector.

Checks the exposition with ``promtool check metrics`` where promtool exists, against the
checked-in list of series (tests/fixtures/metrics/agent_series.txt), and the values against
what the agent did.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_harness import agent_config, start_agent, write_agent_config
from collector_harness import collector
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import AgentMetrics
from agent.spool import Spool
from attestation.keys import load_key_file
from core import __version__

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "metrics" / "agent_series.txt"
ALLOWED_LABELS = {"source", "gpu", "field", "reason", "direction"}
INFO_LABELS = {"version", "python_version"}
SIGNED = "gpuaudit_agent_statements_signed_total"
# Present exactly while the spool holds a statement: acknowledgements come within
# milliseconds, so a scrape may find the spool empty.
OLDEST = "gpuaudit_agent_spool_oldest_window_end_timestamp_seconds"


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def _series_list(text: str) -> list[str]:
    lines = set()
    for fam in text_string_to_metric_families(text):
        if fam.name.startswith("gpuaudit_"):
            labels = sorted({k for s in fam.samples for k in s.labels})
            lines.add(f"{fam.name} {fam.type} {','.join(labels) or '-'}")
    return sorted(lines)


def _value(text: str, name: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("agent-metrics")
    cfg_file = write_agent_config(tmp, 'metrics_listen = "127.0.0.1:0"')

    async def scenario() -> dict[str, Any]:
        async with collector(tmp) as h:
            (token,) = h.tokens(1)
            cfg = agent_config(cfg_file, token, h.address)
            metrics = AgentMetrics(__version__)
            started_s = time.time()
            agent = start_agent(cfg, metrics=metrics)
            for _ in range(100):  # until the agent has signed and been acknowledged
                await asyncio.sleep(0.1)
                if metrics.port is not None and (metrics.registry.get_sample_value(SIGNED) or 0) >= 3:
                    break
            await asyncio.sleep(1.0)
            assert metrics.port is not None, "the agent did not serve /metrics"
            before_s = time.time()
            text = await asyncio.to_thread(_scrape, metrics.port)
            after_s = time.time()
            await agent.stop()
            return {
                "text": text,
                "stored": h.store.statement_count(),
                "key": load_key_file(tmp / "agent.key"),
                "started_s": started_s,
                "scraped_s": (before_s, after_s),
            }

    out: dict[str, Any] = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    spool = Spool(tmp / "spool.db")
    out["spool_left"] = spool.count()
    spool.close()
    return out


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool absent (Debian package prometheus)")
def test_promtool_check_metrics_is_clean(scraped: dict[str, Any]) -> None:
    p = subprocess.run(["promtool", "check", "metrics"], input=scraped["text"], capture_output=True, text=True)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), (
        "promtool check metrics found problems in the agent's /metrics:\n" + p.stdout + p.stderr
    )


def test_series_match_the_golden_list(scraped: dict[str, Any]) -> None:
    got = _series_list(scraped["text"])
    want = GOLDEN.read_text().splitlines()
    if _value(scraped["text"], "gpuaudit_agent_spool_statements") == 0:  # nothing waits: no oldest
        want = [line for line in want if not line.startswith(OLDEST + " ")]
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, (
        f"the agent's series changed: missing {missing}, new {extra}. A new series needs a line in "
        f"{GOLDEN} and a row in docs/operator-guide.md; a renamed one breaks dashboards."
    )


def test_labels_are_bounded_and_counters_end_in_total(scraped: dict[str, Any]) -> None:
    for fam in text_string_to_metric_families(scraped["text"]):
        if not fam.name.startswith("gpuaudit_"):
            continue
        for s in fam.samples:
            extra = set(s.labels) - ALLOWED_LABELS - (INFO_LABELS if fam.name == "gpuaudit_agent_build_info" else set())
            assert not extra, f"{s.name} has label(s) {extra}: only bounded labels belong in Prometheus"
            if fam.type == "counter":
                assert s.name.endswith("_total"), s.name


def test_values_say_what_the_agent_did(scraped: dict[str, Any]) -> None:
    text = scraped["text"]
    assert _value(text, "gpuaudit_agent_build_info", version=__version__) == 1
    for source in ("gpu", "attribution"):
        assert _value(text, "gpuaudit_agent_source_scrape_success", source=source) == 1, source
        duration = _value(text, "gpuaudit_agent_source_scrape_duration_seconds", source=source)
        assert duration is not None and 0 <= duration < 5, (source, duration)
    samples = _value(text, "gpuaudit_agent_samples_total") or 0
    signed = _value(text, "gpuaudit_agent_statements_signed_total") or 0
    acks = _value(text, "gpuaudit_agent_acks_total") or 0
    assert samples >= 10 and signed >= 3, (samples, signed)
    assert 1 <= acks <= signed <= scraped["stored"] + 1, (acks, signed, scraped["stored"])
    depth = _value(text, "gpuaudit_agent_spool_statements")
    assert depth is not None and 0 <= depth <= signed
    size = _value(text, "gpuaudit_agent_spool_bytes")
    assert size is not None and (size > 0) == (depth > 0)
    assert _value(text, "gpuaudit_agent_stream_reconnects_total") == 0
    oldest = _value(text, OLDEST)
    assert (oldest is not None) == (depth > 0), (
        f"the oldest statement's end must be present iff the spool holds one: {oldest}, {depth}"
    )
    before_s, after_s = scraped["scraped_s"]
    if oldest is not None:
        assert scraped["started_s"] <= oldest <= after_s + 1, (scraped["started_s"], oldest, after_s)
    # Nothing dropped, no clock step, the enrolled key (epoch 0) with the default rotation
    # schedule (key_rotation_days = 90), its first window after the agent started.
    for reason in ("spool_size", "spool_age"):
        assert _value(text, "gpuaudit_agent_statements_dropped_total", reason=reason) == 0, reason
    for direction in ("back", "forward"):
        assert _value(text, "gpuaudit_agent_clock_jumps_total", direction=direction) == 0, direction
    assert _value(text, "gpuaudit_agent_key_epoch") == 0
    assert _value(text, "gpuaudit_agent_key_rotation_period_seconds") == 90 * 86400
    first = _value(text, "gpuaudit_agent_key_first_window_timestamp_seconds")
    assert first is not None and scraped["started_s"] - 1 <= first <= before_s, (scraped["started_s"], first)
    utils = [
        float(s.value)
        for fam in text_string_to_metric_families(text)
        if fam.name == "gpuaudit_agent_gpu_utilization_ratio"
        for s in fam.samples
    ]
    assert len(utils) == 8 and all(0 <= u <= 1 for u in utils), utils
    assert scraped["spool_left"] == 0


def test_metrics_listen_empty_serves_nothing(run_async: Callable[[Any], Any]) -> None:
    m = AgentMetrics(__version__)
    assert m.serve("") is None and m.port is None
