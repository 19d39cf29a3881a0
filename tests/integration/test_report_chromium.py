"""`gpuaudit-collector report` on a real store, rendered in headless Chromium.

A small site is replayed through real agents, gRPC, verification, storage and the online
detector; the report of its finding is written by the CLI, rendered by Chromium
(Debian package ``chromium``), and the screenshot is checked: each chart's own colours
must be on the page in quantity, so a chart that did not render fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import png_pixels
import pytest
from collector_harness import collector

from agent.replay import TokenPool, replay
from collector import cli
from collector.tenants import TenantDirectory
from core.pipeline import windows_from_records
from core.sim.scenarios import DEMO_OPAQUE_TENANT, demo_site, demo_tenants_toml
from core.trace import parse_lines

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium absent (Debian package chromium)")

WIDTH, HEIGHT = 1280, 4000


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A report written by `gpuaudit-collector report` from a replayed site's store."""
    import asyncio

    tmp = tmp_path_factory.mktemp("report")
    records = list(
        demo_site(seed=3, hours=0.6, sample_interval_s=20, training_nodes=12, inference_nodes=4, slurm_nodes=4)
    )
    lines = [json.dumps({"format": "gpuaudit-trace", "version": 1})] + [json.dumps(r) for r in records]
    tenants_file = tmp / "tenants.toml"
    tenants_file.write_text(demo_tenants_toml())

    async def scenario() -> list[dict[str, Any]]:
        async with collector(tmp, TenantDirectory.from_toml(demo_tenants_toml())) as h:
            async with grpc.aio.insecure_channel(h.address) as ch:
                stats = await replay(windows_from_records(parse_lines(lines)), ch, TokenPool(h.tokens(20)))
            assert stats.rejected == []
            return [json.loads(f.json_text) for f in h.store.findings()]

    findings = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    assert [f["tenant"] for f in findings] == [DEMO_OPAQUE_TENANT], findings
    out = tmp / "report.html"
    rc = cli.main(
        ["-q", "report", findings[0]["id"], "--db", str(tmp / "collector.db"), "--tenants", str(tenants_file)]
        + ["--out", str(out)]
    )
    assert rc == 0 and out.exists()
    return out, findings[0]


def test_the_report_says_what_was_found_and_how_to_verify_it(report: tuple[Path, dict[str, Any]]) -> None:
    path, finding = report
    text = path.read_text()
    assert finding["id"] in text and DEMO_OPAQUE_TENANT in text
    assert f"{finding['gpus']:,} GPUs" in text and f"{finding['nodes']:,} nodes" in text
    for reason in finding["opacity"]["reasons"]:
        assert reason.replace("'", "&#x27;") in text, f"opacity reason {reason!r} is not in the report"
    assert f"gpuaudit-collector export --db {path.parent / 'collector.db'} --tenant {DEMO_OPAQUE_TENANT}" in text
    assert f"gpuaudit-collector log public-key --db {path.parent / 'collector.db'} &gt; log-key.pem" in text
    assert f"gpuaudit-verify --log-key log-key.pem bundle-{DEMO_OPAQUE_TENANT}.json" in text
    assert "must be <code class=digest>sha256:" in text, "the report does not name its log key's fingerprint"
    # The site's first statement is 10 minutes before the run, the report starts 30 before it.
    assert "No node signed any statement from" in text and "It is not zero" in text
    assert not re.search(r"""(src|href)\s*=|@import|url\(|<script""", text, re.I), "the report must fetch nothing"
    assert len(text) < 2_000_000, f"the report is {len(text):,} bytes: too big to forward"


def test_the_charts_render_in_chromium(report: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, _ = report
    url = path.resolve().as_uri()
    dom = _chromium(url, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for chart in ("chart-gpus", "chart-heatmap", "chart-flop"):
        m = re.search(rf'<svg id="{chart}".*?</svg>', dom.stdout, re.S)
        assert m, f"Chromium's DOM has no <svg id={chart!r}>: the chart is missing from the report"
        assert m.group(0).count("<path") + m.group(0).count("<rect") + m.group(0).count("<polygon") >= 3, chart
    for chart in ("chart-gpus", "chart-heatmap", "chart-flop"):
        m = re.search(rf'<svg id="{chart}".*?</svg>', dom.stdout, re.S)
        assert m and m.group(0).count('class="nodata"') >= 2, f"{chart}: the time before any statement is not hatched"
    heat = re.search(r'<svg id="chart-heatmap".*?</svg>', dom.stdout, re.S)
    assert heat is not None and heat.group(0).count("<rect") >= 12 * 10, "the heat map has too few cells"

    shot = tmp_path / "report.png"
    r = _chromium(url, tmp_path / "profile-shot", f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    img = png_pixels.decode(shot.read_bytes())
    assert (img.width, img.height) == (WIDTH, HEIGHT)

    def matching(pred: Callable[[int, int, int], bool]) -> int:
        n = 0
        for y in range(0, img.height, 2):  # every other row and column: fast, and plenty
            for x in range(0, img.width, 2):
                if pred(*img.pixel(x, y)):
                    n += 1
        return n * 4

    # Each chart has colours of its own (collector/report/page.py's CSS, fmt.py's palette).
    area = matching(lambda r, g, b: abs(r - 202) < 12 and abs(g - 226) < 12 and abs(b - 239) < 12)
    heat_dark = matching(lambda r, g, b: r < 60 and g < 110 and b > 90 and b - r > 60)
    band = matching(lambda r, g, b: r > 240 and 180 < g < 225 and 130 < b < 190)
    non_white = matching(lambda r, g, b: min(r, g, b) < 235)
    where = f"(screenshot kept at {shot})"
    assert non_white > 100_000, f"the page is nearly blank: {non_white} non-white pixels {where}"
    assert area > 20_000, f"the GPUs-in-use chart's area did not render: {area} pixels {where}"
    assert heat_dark > 20_000, f"the heat map did not render: {heat_dark} dark-blue pixels {where}"
    assert band > 1_000, f"the cumulative FLOP band did not render: {band} pixels {where}"
