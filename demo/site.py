"""``make demo`` (``gpuaudit-collector demo``): the case gpuaudit exists for, end to end on one machine.

A site of 380 GPU nodes: 300 nodes × 8 H100 leased to an opaque tenant (a local company
with nominee directors and an offshore parent) running one synchronised training job; a
Kubernetes inference cluster serving ordinary tenants; a Slurm partition with small
research jobs. The demo writes the site's telemetry as a trace, starts a real collector
(gRPC on loopback, SQLite store, detector, /metrics) in a child process, and replays the
trace through real agent code: one key, one chain and one stream per node, every statement
signed and verified. It ends with the findings and their evidence, and with commands that
go on from there (the evidence report, a bundle and its offline verification), which work
as printed: the store and files stay in the working directory after the demo ends.

It composes both sides (the agent's replay, the collector's store), so it lives in ``demo/``,
outside ``agent`` and ``collector``, neither of which imports the other.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent.replay import ReplayStats

# Real agents sample every second; the demo's simulated telemetry is one sample every 20 s
# (3 per 60 s window) so that hours of a 380-node site replay in about a minute on 2 cores.
DEMO_SAMPLE_INTERVAL_S = 20
WINDOW_S = 60
GPUS_PER_NODE = 8  # core.sim.scenarios: every demo node has 8 H100

# Files a run leaves in its working directory; the next run in the same directory replaces them.
_RUN_FILES = (
    "collector.db",
    "collector.db-wal",
    "collector.db-shm",
    "collector.db.log-key.pem",
    "collector.db.pseudonym-key",
    "collector.ready",
    "join-tokens",
    "log-key.pem",
)


@dataclass(frozen=True)
class DemoSite:
    """How many nodes of each kind the demo site has (tests run a small one)."""

    training_nodes: int = 300
    inference_nodes: int = 40
    slurm_nodes: int = 40

    @property
    def nodes(self) -> int:
        return self.training_nodes + self.inference_nodes + self.slurm_nodes


def default_workdir(env: Mapping[str, str] | None = None) -> Path:
    """Where the demo keeps its files unless told: ``$XDG_CACHE_HOME/gpuaudit/demo``
    (``~/.cache/gpuaudit/demo``). One folder, replaced by each run: a store is ~0.5 GB."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpuaudit" / "demo"


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _metric_values(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            m = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)", line)
            if m:
                out[m.group(1) or ""] = float(m.group(2))
    return out


def _label(name: str, value: str) -> str:
    return "{" + f'{name}="{value}"' + "}"


def tool(name: str, module: str) -> str:
    """How to run one of gpuaudit's commands from any shell: its name where the shell finds this
    installation's, else its full path (``make demo`` runs .venv/bin/... without activating the
    venv), else ``python -m``."""
    here = Path(sys.executable).parent / name
    found = shutil.which(name)
    if found and (not here.exists() or Path(found).resolve() == here.resolve()):
        return name
    if here.exists():
        return shlex.quote(str(here.absolute()))
    return f"{shlex.quote(sys.executable)} -m {module}"


class ProgressBar:
    """One line that redraws itself on a terminal; elsewhere (a log, a pipe) one line at the end."""

    def __init__(self, total: int, hours: float, stream: IO[str] | None = None, width: int = 30) -> None:
        self.total = max(total, 1)
        self.hours = hours
        self.stream = stream if stream is not None else sys.stdout
        self.width = width
        self.tty = self.stream.isatty()
        self._last = ""

    def line(self, s: ReplayStats) -> str:
        frac = min(1.0, s.acked / self.total)
        filled = round(frac * self.width)
        event_h = ((s.event_end_ms or 0) - (s.event_start_ms or 0)) / 3_600_000
        # Short enough for an 80-column terminal, where a wrapped line could not be redrawn.
        return (
            f"  [{'#' * filled}{'.' * (self.width - filled)}] {frac:4.0%}  {s.acked:,}/{self.total:,} stored, "
            f"{event_h:.1f}/{self.hours:g} h, {s.seconds:.0f} s"
        )

    def update(self, s: ReplayStats) -> None:
        self._last = self.line(s)
        if self.tty:
            self.stream.write("\r" + self._last)
            self.stream.flush()

    def done(self, s: ReplayStats) -> None:
        self._last = self.line(s)
        self.stream.write(("\r" if self.tty else "") + self._last + "\n")
        self.stream.flush()


def _replay(trace: Path, address: str, tokens: list[str], bar: ProgressBar) -> ReplayStats:
    """Replay the trace through real agent code in this process (the collector is another)."""
    from agent.replay import replay_trace

    stats = ReplayStats()
    try:
        asyncio.run(replay_trace(trace, address, tokens, window_s=WINDOW_S, progress=bar.update, stats=stats))
    finally:
        bar.done(stats)
    return stats


def run_demo(
    *,
    hours: float = 2.0,
    workdir: Path | None = None,
    keep: bool = False,
    seed: int = 7,
    site: DemoSite = DemoSite(),
) -> int:
    from collector.store.sqlite import SqliteStore
    from collector.tenants import TenantDirectory
    from core.sim.scenarios import demo_site, demo_tenants_toml
    from core.trace import write_trace

    work = (workdir if workdir is not None else default_workdir()).absolute()
    work.mkdir(parents=True, exist_ok=True)
    trace = work / "site.jsonl"
    tenants = work / "tenants.toml"
    db = work / "collector.db"
    for name in _RUN_FILES:
        (work / name).unlink(missing_ok=True)
    for old in (*work.glob("report-*.html"), *work.glob("bundle-*.json")):
        old.unlink()

    training_gpus = site.training_nodes * GPUS_PER_NODE
    _say(
        f"gpuaudit demo: a {site.nodes}-node GPU site, one opaque tenant training on {training_gpus:,} H100s "
        f"({site.training_nodes} nodes × {GPUS_PER_NODE})"
    )
    _say(f"  working directory: {work} (kept after the demo; the next run replaces it)")
    t0 = time.monotonic()
    nodes = 0

    def count_nodes(records: Any) -> Any:
        nonlocal nodes
        for r in records:
            if r.get("type") == "node":
                nodes += 1
            yield r

    records = demo_site(
        seed=seed,
        hours=hours,
        sample_interval_s=DEMO_SAMPLE_INTERVAL_S,
        training_nodes=site.training_nodes,
        inference_nodes=site.inference_nodes,
        slurm_nodes=site.slurm_nodes,
    )
    lines = write_trace(trace, count_nodes(records))
    tenants_text = demo_tenants_toml()
    tenants.write_text(tenants_text)
    names = {t.id: t.name for t in TenantDirectory.from_toml(tenants_text) if t.name}
    _say(
        f"[1/4] telemetry of {nodes} nodes over {hours:g} h written as a trace ({lines:,} records, "
        f"{time.monotonic() - t0:.0f} s)"
    )

    store = SqliteStore(db)
    now_ms = time.time_ns() // 1_000_000
    tokens = [store.create_token(3600, now_ms) for _ in range(nodes)]
    store.close()
    token_file = work / "join-tokens"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(tokens) + "\n")

    ready = work / "collector.ready"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    collector = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector.cli",
            "-q",
            "serve",
            "--db",
            str(db),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--tenants",
            str(tenants),
            "--insecure",
            "--ready-file",
            str(ready),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if collector.poll() is not None or time.monotonic() > deadline:
                _say("error: the collector did not start")
                return 1
            time.sleep(0.1)
        info = json.loads(ready.read_text())
        port, mport = info["port"], info["metrics_port"]
        metrics_url = f"http://127.0.0.1:{mport}/metrics"
        _say(f"[2/4] collector serving gRPC on 127.0.0.1:{port}; metrics at {metrics_url}")
        _say(f"[3/4] {nodes} agents (one key and chain each) enroll with one-time tokens and stream signed statements")
        t1 = time.monotonic()
        bar = ProgressBar(round(nodes * hours * 3600 / WINDOW_S), hours)
        try:
            stats = _replay(trace, f"127.0.0.1:{port}", tokens, bar)
        except Exception as exc:  # the agent's errors, reported as one line like the agent CLI does
            _say(f"error: the replay failed: {exc}")
            return 1
        if stats.rejected:
            _say(f"error: the collector refused statements of {len(stats.rejected)} node(s): {stats.rejected[0]}")
            return 1
        replay_s = time.monotonic() - t1
        # The collector acks only after storing, so every statement is stored by now.
        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            metrics_text = resp.read().decode()
        accepted = _metric_values(metrics_text, "gpuaudit_collector_statements_accepted_total").get("", 0)
        refused = sum(_metric_values(metrics_text, "gpuaudit_collector_statements_refused_total").values())
        gpu_s = _metric_values(metrics_text, "gpuaudit_tenant_gpu_seconds_total")
        if not keep:
            # A collector that stops stores the latest state of every finding: what the demo
            # prints, `findings`, the report and offline `detect` then say the same.
            collector.send_signal(signal.SIGTERM)
            try:
                collector.wait(timeout=60)
            except subprocess.TimeoutExpired:
                collector.kill()
        store = SqliteStore(db)
        try:
            findings = [json.loads(r.json_text) for r in store.findings()]
            stored = store.statement_count()
        finally:
            store.close()

        _say(
            f"[4/4] {int(accepted):,} statements verified (Ed25519 over DSSE PAE, chains checked) and stored "
            f"({stored:,} in the store), {int(refused)} refused, in {replay_s:.0f} s "
            f"({hours * 3600 / max(replay_s, 1e-9):.0f}x real time)"
        )
        _say()
        flagged = {t for f in findings for t in f.get("tenants", [f["tenant"]])}
        for f in findings:
            _print_finding(f, names, training_gpus)
        seen = sorted({m.group(1) for k in gpu_s if (m := re.search(r'tenant="([^"]*)"', k))})
        quiet = [t for t in seen if t not in flagged]
        _say(
            f"No finding for the other {len(quiet)} tenants: "
            + ", ".join(_who(t, names, f"{gpu_s.get(_label('tenant', t), 0.0) / 3600:,.0f} GPU-h") for t in quiet)
        )
        _say()
        for line in next_steps(work, findings, metrics_url if keep else None):
            _say(line)
        if keep:
            _say("Collector still running; Ctrl-C to stop.")
            try:
                collector.wait()
            except KeyboardInterrupt:
                pass
        opaque_found = any(f.get("kind") == "large_training" for f in findings)
        return 0 if opaque_found else 1
    finally:
        if collector.poll() is None:
            collector.send_signal(signal.SIGTERM)
            try:
                collector.wait(timeout=15)
            except subprocess.TimeoutExpired:
                collector.kill()
        ready.unlink(missing_ok=True)


def next_steps(work: Path, findings: list[dict[str, Any]], metrics_url: str | None) -> list[str]:
    """ "Where to look next": each command on a line of its own after "$ ", runnable as printed
    from any directory, in order (the verify command reads what the export wrote)."""
    collector = tool("gpuaudit-collector", "collector.cli")
    verify = tool("gpuaudit-verify", "attestation.verify_cli")
    q = shlex.quote
    store = f"--db {q(str(work / 'collector.db'))}"
    out = [f"Where to look next (everything stays in {work}):"]

    def step(what: str, *commands: str) -> None:
        out.append(f"  {what}:")
        out.extend(f"    $ {c}" for c in commands)

    step("the findings as JSON", f"{collector} findings {store} --json")
    run = next((f for f in findings if f.get("kind") == "large_training"), None)
    if run is not None:
        fid = str(run["id"])
        report = work / f"report-{fid}.html"
        step(
            "its evidence report, for compliance staff (one HTML file; open it in a browser)",
            f"{collector} report {q(fid)} {store} --tenants {q(str(work / 'tenants.toml'))} --out {q(str(report))}",
        )
        tenant = str(run["tenant"])
        bundle = work / ("bundle-" + re.sub(r"[^A-Za-z0-9._-]", "_", tenant) + ".json")
        key = work / "log-key.pem"
        step(
            "the tenant's signed statements as a bundle anyone can verify, and the log's public key to pin",
            f"{collector} export {store} --tenant {q(tenant)} --out {q(str(bundle))}",
            f"{collector} log public-key {store} > {q(str(key))}",
        )
        step(
            "verify the bundle offline, as a chip vendor would (exit status 0: verified)",
            f"{verify} --log-key {q(str(key))} {q(str(bundle))}",
        )
    step(
        "the detector alone, offline, over the site's trace",
        f"{collector} detect --trace {q(str(work / 'site.jsonl'))} --tenants {q(str(work / 'tenants.toml'))}",
    )
    out.append(
        f"  metrics: {metrics_url}" if metrics_url else "  metrics: run the demo with --keep to leave the collector up"
    )
    return out


def _who(tenant: str, names: Mapping[str, str], more: str = "") -> str:
    """``t-kestrel (Kestrel Digital Infrastructure Sdn Bhd)``: the id the nodes report, and the name
    the tenants file gives it (``more`` joins them in the parentheses)."""
    inside = ", ".join(x for x in (names.get(tenant), more) if x)
    return f"{tenant} ({inside})" if inside else tenant


def _print_finding(f: dict[str, Any], names: Mapping[str, str], training_gpus: int) -> None:
    _say(
        f"FINDING {f['id']}: {f['kind']} by tenant {_who(f['tenant'], names)} — severity "
        f"{f['severity'].upper()} (score {f['score']})"
    )
    if len(f.get("tenants", [])) > 1:
        _say(f"  linked tenants: {', '.join(_who(t, names) for t in f['tenants'])}")
    gpus = int(f["gpus"])
    of = "" if gpus == training_gpus else f" (of the {training_gpus:,} the tenant leases)"
    _say(
        f"  {gpus:,} GPUs at peak{of} on {int(f['nodes']):,} nodes; run started {f['started_at']}, "
        f"detected {f['detected_at']}"
    )
    flop = f.get("flop_estimate")
    if flop:
        _say(f"  {float(f['gpu_hours']):,.0f} GPU-hours so far; estimated {flop[0]:.2e} to {flop[1]:.2e} FLOP")
    op = f.get("opacity", {})
    _say(f"  tenant opacity {op.get('score')}:")
    for r in op.get("reasons", []):
        _say(f"    - {r}")
    ev = f.get("evidence", {})
    if isinstance(ev, dict) and ev.get("severity_reason"):
        _say(f"  severity: {ev['severity_reason']}")
    signals = ev.get("signals") if isinstance(ev, dict) else None
    if isinstance(signals, dict):
        _say("  signals:")
        for line in signal_table(signals):
            _say(f"    {line}")
    _say()


def _cell(v: Any) -> str:
    if v is None:
        return "unknown"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def signal_table(signals: dict[str, Any]) -> list[str]:
    """The finding's signals as aligned text rows: measured, threshold, fired, unit."""
    rows = [("signal", "measured", "threshold", "fired", "unit")]
    for name, s in signals.items():
        if not isinstance(s, dict):
            continue
        fired = s.get("fired")
        rows.append(
            (
                name.replace("_", " "),
                _cell(s.get("value")),
                "" if s.get("threshold") is None else _cell(s.get("threshold")),
                "-" if fired is None else _cell(bool(fired)),
                str(s.get("unit", "")) + (f" ({s['state']})" if s.get("state") else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
