"""``detect --prometheus`` against a real Prometheus holding dcgm-exporter-shaped history,
compared with ``detect --trace`` on the same simulated site.

The site (core/sim/scenarios.py components, sampled every 30 s for 2.5 hours): a
synchronised 12-node (96-GPU) training job of one opaque tenant, starting 20 minutes in, on
hosts scraped through a ServiceMonitor (``Hostname``, the workload's labels as
``exported_namespace``/``exported_pod``, the exporter's own ``namespace``/``pod`` on every
series), and a 6-node inference fleet of another tenant (``hostname``, plain
``namespace``/``pod``). collector/prometheus/sim.py writes it as OpenMetrics,
``promtool tsdb create-blocks-from openmetrics`` backfills it, and a Prometheus on loopback
serves it.

Tolerance: the same tenant, the same GPUs and nodes; ``started_at`` and ``detected_at``
within ``TOLERANCE_MS`` (two 60 s windows) of the trace's: one window for a sample that
falls on the other side of a window edge on the query grid, one for the coupling tests
crossing their threshold a window apart on step means. (In practice they agree exactly.)

Needs ``prometheus`` and ``promtool`` (Debian package ``prometheus``; .ci/run installs it).
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector import cli as collector_cli
from collector.detect.findings import parse_rfc3339_ms
from collector.prometheus.sim import write_openmetrics_file
from core.sim.scenarios import DEMO_START_S, InferenceFleet, TrainingJob, _names, site_records
from core.trace import write_trace

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus/promtool absent (Debian package prometheus; .ci/run installs it)",
)

TOLERANCE_MS = 2 * 60_000
OPAQUE = "t-kestrel"
SERVING = "t-acme-search"
NAMESPACES = {OPAQUE: "kestrel-train", SERVING: "acme-serving"}
START = "2026-03-02T03:50:00Z"
END = "2026-03-02T06:20:00Z"
TENANTS = f"""[[tenant]]
id = "{OPAQUE}"
name = "Kestrel Digital Infrastructure Sdn Bhd"
country = "MY"
nominee_directors = true
beneficial_owners_disclosed = false
ultimate_parent_country = "unknown"

[[tenant]]
id = "{SERVING}"
name = "Acme Search Inc."
country = "US"
beneficial_owners_disclosed = true
nominee_directors = false
kyc_level = "enhanced"
"""


def site() -> list[dict[str, Any]]:
    rng = random.Random(7)
    start = float(DEMO_START_S)
    end = start + 2.5 * 3600
    train = TrainingJob(rng, _names("tr", 1, 12), OPAQUE, start + 1200, end + 3600)
    infer = InferenceFleet(rng, _names("inf", 1, 6), (SERVING,))
    return list(site_records([train, infer], start, end, 30.0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("prom-history")
    records = site()
    trace = tmp / "site.jsonl"
    write_trace(trace, records)
    om = tmp / "site.om"
    write_openmetrics_file(
        om,
        records,
        namespaces=NAMESPACES,
        shape_of=lambda node: "servicemonitor" if node.startswith("tr") else "plain",
        host_label_of=lambda node: "Hostname" if node.startswith("tr") else "hostname",
    )
    data = tmp / "tsdb"
    assert PROMTOOL is not None and PROMETHEUS is not None
    p = subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, f"promtool could not backfill the OpenMetrics file:\n{p.stderr[-2000:]}"
    port = _free_port()
    log = (tmp / "prometheus.log").open("w")
    (tmp / "prometheus.yml").write_text("global:\n  scrape_interval: 1h\n")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=100y",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, f"prometheus exited:\n{(tmp / 'prometheus.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "prometheus was not ready within 30 s"
            time.sleep(0.2)
        (tmp / "tenants.toml").write_text(TENANTS)
        (tmp / "rules.toml").write_text(
            "[tenants.namespaces]\n" + "".join(f'{ns} = "{t}"\n' for t, ns in NAMESPACES.items())
        )
        yield {"url": url, "trace": trace, "tmp": tmp}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def test_prometheus_history_finds_what_the_trace_finds(
    history: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = history["tmp"]
    tenants = str(tmp / "tenants.toml")
    rc = collector_cli.main(["detect", "--trace", str(history["trace"]), "--tenants", tenants, "--json"])
    assert rc == 0
    by_trace = json.loads(capsys.readouterr().out)
    rc = collector_cli.main(
        [
            "detect",
            "--prometheus",
            history["url"],
            "--start",
            START,
            "--end",
            END,
            "--tenants",
            tenants,
            "--tenant-rules",
            str(tmp / "rules.toml"),
            "--json",
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    by_prom = json.loads(out.out)
    assert [f["tenant"] for f in by_trace] == [OPAQUE], "the scenario itself must raise the opaque tenant's run"
    assert [f["tenant"] for f in by_prom] == [OPAQUE], [(f["tenant"], f["gpus"]) for f in by_prom]
    t, p = by_trace[0], by_prom[0]
    assert (p["gpus"], p["nodes"]) == (t["gpus"], t["nodes"]) == (96, 12)
    for key in ("started_at", "detected_at"):
        delta = abs(parse_rfc3339_ms(p[key]) - parse_rfc3339_ms(t[key]))
        assert delta <= TOLERANCE_MS, f"{key}: prometheus {p[key]}, trace {t[key]} (tolerance {TOLERANCE_MS} ms)"
    assert p["source"] == "prometheus" and "unsigned" in p["note"].lower() and "process-level" in p["note"]
    assert "source" not in t
    cov = p["prometheus"]["coverage"]
    assert cov["hosts"] == 18 and cov["gpus"] == 144 and cov["series_skipped"] == {}
    assert "DCGM_FI_PROF_SM_ACTIVE" in cov["metrics_absent"]
    assert "not in Prometheus" in out.err and "read 18 hosts" in out.err


def test_a_relabelled_host_label_needs_the_label_map(
    history: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = history["tmp"]
    args = ["detect", "--prometheus", history["url"], "--start", START, "--end", "2026-03-02T04:00:00Z"]
    args += ["--tenants", str(tmp / "tenants.toml")]
    rc = collector_cli.main([*args, "--label-map", "host=node"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "no DCGM_FI_DEV_GPU_UTIL series with a node label" in err and "--label-map" in err


def test_exit_codes_of_the_command_line(history: dict[str, Any], tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "collector.cli", "detect", *args], capture_output=True, text=True, timeout=120
        )

    tenants = str(history["tmp"] / "tenants.toml")
    span = ["--start", START, "--end", END, "--tenants", tenants]
    p = run("--prometheus", "http://127.0.0.1:9", *span, "--timeout-s", "3")
    assert p.returncode == 3 and "cannot reach Prometheus" in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = run("--prometheus", history["url"], *span, "--step", "45")
    assert p.returncode == 2 and "divide" in p.stderr, p.stderr
    p = run("--prometheus", history["url"], "--start", "yesterday", "--end", END, "--tenants", tenants)
    assert p.returncode == 2 and "RFC 3339" in p.stderr, p.stderr
    bad = tmp_path / "rules.toml"
    bad.write_text('[[tenants.lease]]\ntenant = "t-x"\n')
    p = run("--prometheus", history["url"], *span, "--tenant-rules", str(bad))
    assert p.returncode == 2 and "lease" in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = run("--trace", str(history["trace"]), "--start", START)
    assert p.returncode == 2 and "--start is for --prometheus" in p.stderr, p.stderr
    rules = str(history["tmp"] / "rules.toml")
    p = run("--prometheus", history["url"], *span, "--tenant-rules", rules, "--fail-on-findings")
    assert p.returncode == 1, p.stderr
    assert "source: prometheus" in p.stdout and "tenant t-kestrel" in p.stdout, p.stdout
    # Without the rules nobody is attributed: the run is still found, as unattributed GPU use.
    p = run("--prometheus", history["url"], *span)
    assert p.returncode == 0 and "tenant unattributed" in p.stdout, p.stdout


def test_the_pipeline_changes_nothing_in_the_findings(
    history: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """By default a second process reads and windows the next chunk while the detector runs
    (collector/prometheus/pipeline.py); --no-pipeline does it all in one. Same findings, same
    coverage, to the byte."""
    tmp = history["tmp"]
    args = ["detect", "--prometheus", history["url"], "--start", START, "--end", END]
    args += ["--tenants", str(tmp / "tenants.toml"), "--tenant-rules", str(tmp / "rules.toml"), "--json"]
    outs = []
    for extra in ([], ["--no-pipeline"]):
        rc = collector_cli.main([*args, *extra])
        out = capsys.readouterr()
        assert rc == 0, out.err
        outs.append((out.out, out.err))
    assert json.loads(outs[0][0]), "the run must be found, or this compares nothing"
    assert outs[0] == outs[1], "the pipelined and the sequential path differ"
