"""The demo ends where a person can go on: its "where to look next" commands work as printed.

A small demo site (20 nodes, 36 minutes) runs end to end: trace, a real collector in a
child process, real agents replaying it. Then every command it printed after "$ " is run
as printed, by bash, from another directory, in order: the findings, the evidence report,
the export of the tenant's bundle, the log's public key, gpuaudit-verify with --log-key and
the offline detector. Each must succeed and leave what it says it leaves.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.sim.scenarios import DEMO_OPAQUE_TENANT
from demo.site import DemoSite, ProgressBar, default_workdir, run_demo

pytestmark = pytest.mark.slow

SMALL = DemoSite(training_nodes=12, inference_nodes=4, slurm_nodes=4)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The demo's working directory after it ended, and what it printed."""
    import contextlib
    import io

    work = tmp_path_factory.mktemp("demo") / "work"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run_demo(hours=0.6, workdir=work, seed=3, site=SMALL)
    out = buf.getvalue()
    assert rc == 0, f"the demo failed:\n{out}"
    return work, out


def test_the_demo_keeps_its_store_and_prints_one_progress_line(demo: tuple[Path, str]) -> None:
    work, out = demo
    assert (work / "collector.db").is_file(), "the store must outlive the demo (it was a deleted temporary dir)"
    assert (work / "site.jsonl").is_file() and (work / "tenants.toml").is_file()
    bars = [line for line in out.splitlines() if line.lstrip().startswith("[#") or line.lstrip().startswith("[.")]
    assert len(bars) == 1, f"one progress bar, not a line every 2 s:\n{out}"
    assert "100%" in bars[0], bars[0]
    assert "replay:" not in out, "the agent's progress lines leaked into the demo's output"


def test_the_finding_names_the_tenant_and_its_signals_as_a_table(demo: tuple[Path, str]) -> None:
    _, out = demo
    assert re.search(rf"by tenant {DEMO_OPAQUE_TENANT} \(Kestrel Digital Infrastructure Sdn Bhd\)", out), out
    assert re.search(r"signal\s+measured\s+threshold\s+fired\s+unit", out), "signals are not a table"
    assert "{" not in out.split("Where to look next", 1)[0], "raw JSON in the demo's summary"
    m = re.search(r"([\d,]+) GPUs at peak(?: \(of the ([\d,]+) the tenant leases\))? on", out)
    assert m, f"no GPU count in the finding:\n{out}"
    headline = re.search(r"training on ([\d,]+) H100s", out)
    assert headline, out
    if m.group(1) != headline.group(1):
        assert m.group(2) == headline.group(1), "a GPU count beside the headline's must say how they differ"


def test_every_next_step_works_as_printed(demo: tuple[Path, str], tmp_path: Path) -> None:
    work, out = demo
    commands = [line.split("$ ", 1)[1] for line in out.splitlines() if line.startswith("    $ ")]
    text = "\n".join(commands)
    for needed in (" findings ", " report ", " export ", " log public-key ", "gpuaudit-verify", " detect "):
        assert needed in text or needed.strip() in text, f"no {needed.strip()!r} command in:\n{out}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    results = {}
    for cmd in commands:
        r = subprocess.run(
            ["bash", "-c", cmd], cwd=elsewhere, env=os.environ, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, f"`{cmd}` exited {r.returncode}:\n{r.stderr[-3000:]}"
        results[cmd] = r
    assert not list(elsewhere.iterdir()), "a printed command wrote into the current directory, not the demo's"

    findings = json.loads(next(r.stdout for c, r in results.items() if " findings " in c))
    fid = next(f["id"] for f in findings if f["kind"] == "large_training")
    report = work / f"report-{fid}.html"
    html = report.read_text()
    assert fid in html and DEMO_OPAQUE_TENANT in html
    # The demo's trace starts 10 minutes before the run; the report's lead-in is 30: no data first.
    assert "No node signed any statement from" in html and ">no data</text>" in html
    bundle = next(work.glob("bundle-*.json"))
    assert bundle.stat().st_size > 0 and (work / "log-key.pem").read_text().startswith("-----BEGIN PUBLIC KEY")
    verified = next(r for c, r in results.items() if "--log-key" in c)
    assert "pinned" in (verified.stdout + verified.stderr).lower(), verified.stdout[-2000:]


def test_the_report_prints_a_verify_command_that_works_as_printed(demo: tuple[Path, str], tmp_path: Path) -> None:
    """The report's own commands: the operator's (with the store) and the verifier's, which must
    work in an empty directory with only the two files it names."""
    import html as html_mod

    work, out = demo
    fid = re.search(r"FINDING (f-[0-9a-f]+)", out)
    assert fid, out
    report = tmp_path / "report.html"
    subprocess.run(
        [
            *_collector(),
            "-q",
            "report",
            fid.group(1),
            "--db",
            str(work / "collector.db"),
            "--out",
            str(report),
        ],
        check=True,
        timeout=300,
    )
    page = report.read_text()
    export = re.search(r'<pre id="export-commands">(.*?)</pre>', page, re.S)
    verify = re.search(r'<pre id="verify-commands">(.*?)</pre>', page, re.S)
    assert export and verify, "the report has no verification commands"
    operator = tmp_path / "operator"
    verifier = tmp_path / "verifier"
    operator.mkdir()
    verifier.mkdir()
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path}
    r = subprocess.run(
        ["bash", "-c", html_mod.unescape(export.group(1))],
        cwd=operator,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for f in operator.iterdir():  # the operator hands the files over; nothing else travels
        (verifier / f.name).write_bytes(f.read_bytes())
    verify_text = html_mod.unescape(verify.group(1))
    assert "--log-key" in verify_text and str(work) not in verify_text, verify_text
    r = subprocess.run(["bash", "-c", verify_text], cwd=verifier, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"`{verify_text}` exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    fp = re.search(r"must be <code class=digest>(sha256:[0-9a-f]{64})</code>", page)
    assert fp, "the report does not name its log key's fingerprint"
    assert f"fingerprint {fp.group(1)}" in r.stdout, f"gpuaudit-verify printed another log key:\n{r.stdout[-2000:]}"


def test_the_stored_finding_says_what_offline_detect_says_on_the_same_trace(demo: tuple[Path, str]) -> None:
    """A collector that stops stores each finding's latest state: `findings` on the demo's store
    and offline `detect` on the demo's trace give the same id, start, size, GPU-hours and FLOP."""
    work, _ = demo
    run = {"capture_output": True, "text": True, "timeout": 300}
    stored = subprocess.run([*_collector(), "findings", "--db", str(work / "collector.db"), "--json"], **run)
    offline = subprocess.run(
        [
            *_collector(),
            "detect",
            "--trace",
            str(work / "site.jsonl"),
            "--tenants",
            str(work / "tenants.toml"),
            "--json",
        ],
        **run,
    )
    assert stored.returncode == 0 and offline.returncode in (0, 1), stored.stderr + offline.stderr
    big = [f for f in json.loads(stored.stdout) if f["kind"] == "large_training"]
    off = [f for f in json.loads(offline.stdout) if f["kind"] == "large_training"]
    assert len(big) == len(off) == 1, (big, off)
    a, b = big[0], off[0]
    for key in ("id", "tenant", "tenants", "started_at", "gpus", "nodes", "severity", "gpu_hours", "flop_estimate"):
        assert a[key] == b[key], f"{key}: stored {a[key]!r}, offline detect {b[key]!r}"


def _collector() -> list[str]:
    return [sys.executable, "-m", "collector.cli"]


def test_progress_bar_is_one_line_off_a_terminal() -> None:
    import io

    from agent.replay import ReplayStats

    stream = io.StringIO()
    bar = ProgressBar(total=100, hours=1.0, stream=stream, width=10)
    for acked in (10, 50, 90):
        bar.update(ReplayStats(acked=acked, event_start_ms=0, event_end_ms=acked * 36_000, seconds=acked / 10))
    bar.done(ReplayStats(acked=100, event_start_ms=0, event_end_ms=3_600_000, seconds=10))
    assert stream.getvalue().count("\n") == 1 and "[##########] 100%" in stream.getvalue(), stream.getvalue()


def test_default_workdir_is_kept_under_the_users_cache() -> None:
    assert default_workdir({"XDG_CACHE_HOME": "/x/cache"}) == Path("/x/cache/gpuaudit/demo")
    assert default_workdir({"HOME": "/ignored"}).parts[-3:] == (".cache", "gpuaudit", "demo")
