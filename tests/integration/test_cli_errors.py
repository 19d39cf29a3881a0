"""Every command's error paths as a person meets them: one ``error:`` line that names the
problem, an exit code that means one thing (attestation/exitcodes.py), never a traceback.
Each case runs the real command in a subprocess. Also: replay over mTLS, and an
interrupted replay saying what it left unsent."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.stream import enroll, tls_channel
from attestation import exitcodes
from attestation.keys import Ed25519Signer
from collector import cli as collector_cli
from collector.ca import init_ca, issue
from collector.cli import findings as collector_cli_findings
from collector.store.sqlite import SqliteStore
from core.sim.scenarios import demo_site
from core.trace import write_trace

MODULES = {"agent": "agent.cli", "collector": "collector.cli", "verify": "attestation.verify_cli"}
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING) ")


def run(cli: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", MODULES[cli], *args], capture_output=True, text=True, timeout=timeout)


def error_line(p: subprocess.CompletedProcess[str], *, logs: bool = False) -> str:
    """The one ``error:`` line of a failed command; fails the test on a traceback, on a second
    error line, or on anything else on stderr (except, with ``logs``, the daemon's log lines)."""
    assert "Traceback" not in p.stderr + p.stdout, f"a traceback instead of one line:\n{p.stderr}"
    lines = p.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, f"expected exactly one 'error:' line on stderr, got:\n{p.stderr}"
    assert lines[-1] == errors[0], f"the error line must come last:\n{p.stderr}"
    others = lines[:-1]
    if logs:
        assert all(LOG_LINE.match(line) for line in others), (
            f"stderr has more than log lines and the error:\n{p.stderr}"
        )
    else:
        assert not others, f"stderr must be the one error line, got:\n{p.stderr}"
    return errors[0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Site:
    dir: Path
    busy_port: int
    mtls_port: int
    used_token: str
    db: Path  # the mTLS collector's store

    def fresh_token(self) -> str:
        store = SqliteStore(self.db)
        try:
            return store.create_token(600, time.time_ns() // 1_000_000)
        finally:
            store.close()


def _wait_ready(proc: subprocess.Popen[str], ready: Path) -> int:
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, f"the collector exited with {proc.returncode}: {proc.stderr and proc.stderr.read()}"
        assert time.monotonic() < deadline, "the collector did not start within 60 s"
        time.sleep(0.05)
    import json

    return int(json.loads(ready.read_text())["port"])


def _agent_toml(d: Path, name: str, **extra: str) -> Path:
    node = d / name
    node.mkdir()
    lines = [
        'node_id = "kl1-n0001"',
        f'key = "file:{node}/agent.key"',
        f'spool = "{node}/spool.db"',
        'source = "sim"',
        f'sim_trace = "{d}/one.jsonl"',
        'metrics_listen = ""',
        "window_s = 1",
        "bucket_s = 1",
        "sample_interval_s = 0.1",
    ] + [f'{k} = "{v}"' for k, v in extra.items()]
    path = d / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    d = tmp_path_factory.mktemp("cli-errors")
    write_trace(
        d / "one.jsonl",
        demo_site(seed=5, hours=0.1, sample_interval_s=10, training_nodes=1, inference_nodes=0, slurm_nodes=0),
    )
    write_trace(
        d / "two.jsonl",
        demo_site(seed=6, hours=0.1, sample_interval_s=10, training_nodes=2, inference_nodes=0, slurm_nodes=0),
    )
    (d / "plain.jsonl.gz").write_text('{"format": "gpuaudit-trace", "version": 1}\n')
    (d / "tenants-bad.toml").write_text("[[tenant]]\nid = 'a'\nkyc_level = 'maybe'\n")
    (d / "out").mkdir()
    ca = d / "ca"
    init_ca(ca)
    issue(ca, "collector", server=True, hosts=("127.0.0.1",))
    for node in ("kl1-n0001", "kl1-n0002", "other"):
        issue(ca, node, server=False)
    tls = {"tls_cert": f"{ca}/collector.crt", "tls_key": f"{ca}/collector.key", "tls_client_ca": f"{ca}/ca.crt"}
    db = d / "m.db"
    (d / "m.toml").write_text(
        f'listen = "127.0.0.1:0"\nmetrics_listen = ""\ndb = "{db}"\n'
        + "".join(f'{k} = "{v}"\n' for k, v in tls.items())
    )
    (d / "serve-nokey.toml").write_text(
        f'listen = "127.0.0.1:0"\nmetrics_listen = ""\ndb = "{d}/serve-nokey.db"\n'
        + "".join(f'{k} = "{v}"\n' for k, v in {**tls, "tls_key": f"{ca}/missing.key"}.items())
    )
    # A store that only ever had tokens created: a failed export must leave it as it is.
    tokens_only = SqliteStore(d / "tokens-only.db")
    tokens_only.create_token(600, time.time_ns() // 1_000_000)
    tokens_only.close()
    store = SqliteStore(db)
    used = store.create_token(600, time.time_ns() // 1_000_000)
    store.close()

    ready = d / "ready.json"
    collector = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector.cli",
            "-q",
            "serve",
            "--config",
            str(d / "m.toml"),
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    busy = socket.socket()
    try:
        port = _wait_ready(collector, ready)

        async def use_token() -> None:
            ch = tls_channel(
                f"127.0.0.1:{port}",
                (ca / "ca.crt").read_bytes(),
                (ca / "kl1-n0001.crt").read_bytes(),
                (ca / "kl1-n0001.key").read_bytes(),
            )
            async with ch:
                await enroll(ch, "kl1-n0001", Ed25519Signer.generate(), used, attempts=1)

        asyncio.run(use_token())
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        site = Site(d, busy.getsockname()[1], port, used, db)
        _agent_toml(d, "nokey", tls_ca=f"{ca}/ca.crt", tls_cert=f"{ca}/kl1-n0001.crt", tls_key=f"{ca}/missing.key")
        _agent_toml(d, "other", tls_ca=f"{ca}/ca.crt", tls_cert=f"{ca}/other.crt", tls_key=f"{ca}/other.key")
        good = {"tls_ca": f"{ca}/ca.crt", "tls_cert": f"{ca}/kl1-n0001.crt", "tls_key": f"{ca}/kl1-n0001.key"}
        _agent_toml(d, "notoken", collector=f"127.0.0.1:{port}", **good)
        _agent_toml(d, "used", collector=f"127.0.0.1:{port}", join_token=used, **good)
        yield site
    finally:
        busy.close()
        collector.terminate()
        collector.wait(timeout=30)


@dataclass(frozen=True)
class Case:
    id: str
    cli: str
    args: tuple[str, ...]  # {dir}, {busy}, {mtls}, {used} are filled in from the site
    code: int
    says: tuple[str, ...]  # each in the error line
    logs: bool = False  # a daemon that logs before it fails (agent run)
    creates_nothing: tuple[str, ...] = ()  # paths that must not exist afterwards

    def argv(self, s: Site) -> list[str]:
        return [a.format(dir=s.dir, busy=s.busy_port, mtls=s.mtls_port, used=s.used_token) for a in self.args]


U, E, F = exitcodes.USAGE, exitcodes.UNAVAILABLE, exitcodes.FAILED
SERVE_FILES = ("{dir}/s.db", "{dir}/s.db.log-key.pem", "{dir}/s.db.pseudonym-key")
CASES = [
    # gpuaudit-collector
    Case(
        "detect-missing-trace", "collector", ("detect", "--trace", "{dir}/nope.jsonl"), E, ("cannot read", "nope.jsonl")
    ),
    Case(
        "detect-plain-file-named-gz",
        "collector",
        ("detect", "--trace", "{dir}/plain.jsonl.gz"),
        U,
        ("not a gzip file",),
    ),
    Case("detect-trace-is-a-folder", "collector", ("detect", "--trace", "{dir}/out"), E, ("cannot read", "out")),
    Case(
        "detect-missing-tenants-file",
        "collector",
        ("detect", "--trace", "{dir}/one.jsonl", "--tenants", "{dir}/nope.toml"),
        E,
        ("tenants file", "nope.toml"),
    ),
    Case(
        "detect-bad-tenants-file",
        "collector",
        ("detect", "--trace", "{dir}/one.jsonl", "--tenants", "{dir}/tenants-bad.toml"),
        U,
        ("tenants file", "kyc_level", "fix the file"),
    ),
    Case(
        "serve-grpc-port-in-use",
        "collector",
        ("serve", "--insecure", "--db", "{dir}/s.db", "--listen", "127.0.0.1:{busy}", "--metrics-listen", ""),
        E,
        ("127.0.0.1:{busy}", "in use"),
        creates_nothing=SERVE_FILES,
    ),
    Case(
        "serve-metrics-port-in-use",
        "collector",
        (
            "serve",
            "--insecure",
            "--db",
            "{dir}/s.db",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:{busy}",
        ),
        E,
        ("metrics", "127.0.0.1:{busy}", "in use"),
        creates_nothing=SERVE_FILES,
    ),
    Case(
        "serve-missing-tls-key",
        "collector",
        ("serve", "--config", "{dir}/serve-nokey.toml"),
        E,
        ("tls_key", "missing.key"),
        creates_nothing=("{dir}/serve-nokey.db", "{dir}/serve-nokey.db.log-key.pem"),
    ),
    Case(
        "serve-plaintext-without-insecure",
        "collector",
        ("serve", "--db", "{dir}/s.db", "--listen", "127.0.0.1:0", "--metrics-listen", ""),
        U,
        ("insecure",),
        creates_nothing=SERVE_FILES,
    ),
    Case(
        "serve-bad-listen-address",
        "collector",
        ("serve", "--insecure", "--db", "{dir}/s.db", "--listen", "nowhere"),
        U,
        ("HOST:PORT",),
        creates_nothing=SERVE_FILES,
    ),  # fmt: skip
    Case(
        "report-out-into-missing-folder",
        "collector",
        ("report", "--db", "{dir}/m.db", "f-1", "--out", "{dir}/nope/r.html"),
        E,
        ("does not exist", "mkdir -p"),
    ),
    Case(
        "report-unknown-finding",
        "collector",
        ("report", "--db", "{dir}/m.db", "f-1", "--out", "{dir}/out/r.html"),
        F,
        ("no finding",),
    ),  # fmt: skip
    Case(
        "export-out-into-missing-folder",
        "collector",
        ("export", "--db", "{dir}/m.db", "--all", "--out", "{dir}/nope/b.json"),
        E,
        ("does not exist",),
    ),
    Case(
        "export-previous-checkpoint-of-another-log",
        "collector",
        (
            "export",
            "--db",
            "{dir}/tokens-only.db",
            "--all",
            "--out",
            "{dir}/out/b.json",
            "--previous-checkpoint",
            "{dir}/tenants-bad.toml",
        ),
        U,
        ("--previous-checkpoint", "not signed by this log"),
        logs=True,
        creates_nothing=("{dir}/out/b.json",),
    ),  # fmt: skip
    Case(
        "export-missing-previous-checkpoint",
        "collector",
        (
            "export",
            "--db",
            "{dir}/tokens-only.db",
            "--all",
            "--out",
            "{dir}/out/b.json",
            "--previous-checkpoint",
            "{dir}/nope.txt",
        ),
        E,
        ("previous checkpoint", "nope.txt"),
        creates_nothing=("{dir}/out/b.json",),
    ),  # fmt: skip
    Case(
        "findings-missing-store",
        "collector",
        ("findings", "--db", "{dir}/typo.db"),
        E,
        ("no store at",),
        creates_nothing=("{dir}/typo.db",),
    ),  # fmt: skip
    Case(
        "token-out-into-missing-folder",
        "collector",
        ("token", "create", "--db", "{dir}/t.db", "--out", "{dir}/nope/tokens"),
        E,
        ("does not exist",),
        creates_nothing=("{dir}/t.db",),
    ),  # fmt: skip
    # gpuaudit-agent
    Case("run-missing-tls-key", "agent", ("run", "--config", "{dir}/nokey.toml"), E, ("tls_key", "missing.key")),
    Case(
        "run-certificate-for-another-node",
        "agent",
        ("run", "--config", "{dir}/other.toml"),
        U,
        ("for node other, not kl1-n0001", "ca issue --client --name kl1-n0001"),
    ),
    Case("run-missing-join-token", "agent", ("run", "--config", "{dir}/notoken.toml"), U, ("join token",), logs=True),
    Case(
        "run-used-join-token",
        "agent",
        ("run", "--config", "{dir}/used.toml"),
        U,
        ("token_used", "token create"),
        logs=True,
    ),  # fmt: skip
    Case("run-missing-config", "agent", ("run", "--config", "{dir}/nope.toml"), E, ("nope.toml",)),
    Case(
        "replay-unreachable-collector",
        "agent",
        ("replay", "{dir}/one.jsonl", "--collector", "127.0.0.1:1", "--join-token", "t"),
        E,
        ("cannot reach the collector at 127.0.0.1:1",),
    ),
    Case(
        "replay-plaintext-to-an-mtls-collector",
        "agent",
        ("replay", "{dir}/one.jsonl", "--collector", "127.0.0.1:{mtls}", "--join-token", "t"),
        E,
        ("cannot reach the collector", "--tls-ca"),
    ),
    Case(
        "replay-used-join-token",
        "agent",
        (
            "replay",
            "{dir}/one.jsonl",
            "--collector",
            "127.0.0.1:{mtls}",
            "--join-token",
            "{used}",
            "--tls-ca",
            "{dir}/ca/ca.crt",
            "--tls-cert",
            "{dir}/ca/kl1-n0001.crt",
            "--tls-key",
            "{dir}/ca/kl1-n0001.key",
        ),
        U,
        ("refused to enroll node kl1-n0001", "token_used"),
    ),  # fmt: skip
    Case(
        "replay-certificate-for-another-node",
        "agent",
        (
            "replay",
            "{dir}/one.jsonl",
            "--collector",
            "127.0.0.1:{mtls}",
            "--join-token",
            "t",
            "--tls-ca",
            "{dir}/ca/ca.crt",
            "--tls-cert",
            "{dir}/ca/other.crt",
            "--tls-key",
            "{dir}/ca/other.key",
        ),
        U,
        ("for node other, not kl1-n0001", "--tls-cert-dir"),
    ),  # fmt: skip
    Case(
        "replay-key-of-another-certificate",
        "agent",
        (
            "replay",
            "{dir}/one.jsonl",
            "--collector",
            "127.0.0.1:{mtls}",
            "--join-token",
            "t",
            "--tls-ca",
            "{dir}/ca/ca.crt",
            "--tls-cert",
            "{dir}/ca/kl1-n0001.crt",
            "--tls-key",
            "{dir}/ca/other.key",
        ),
        U,
        ("other.key is not the key of",),
    ),  # fmt: skip
    Case(
        "replay-tls-cert-without-ca",
        "agent",
        ("replay", "{dir}/one.jsonl", "--collector", "127.0.0.1:1", "--join-token", "t", "--tls-cert", "x"),
        U,
        ("need --tls-ca",),
    ),
    Case(
        "replay-missing-trace",
        "agent",
        ("replay", "{dir}/nope.jsonl", "--collector", "127.0.0.1:1", "--join-token", "t"),
        E,
        ("nope.jsonl",),
    ),  # fmt: skip
    Case(
        "replay-no-join-token",
        "agent",
        ("replay", "{dir}/one.jsonl", "--collector", "127.0.0.1:1"),
        U,
        ("--join-token",),
    ),  # fmt: skip
    Case("keygen-bad-key-uri", "agent", ("keygen", "--key", "bogus:x"), U, ("unknown key URI",)),
    # gpuaudit-verify
    Case("verify-missing-bundle", "verify", ("{dir}/nope.json",), E, ("cannot read", "nope.json")),
    Case(
        "verify-log-key-that-is-not-one", "verify", ("{dir}/one.jsonl", "--log-key", "{dir}/one.jsonl"), U, ("log key",)
    ),  # fmt: skip
    Case(
        "verify-missing-log-key",
        "verify",
        ("{dir}/one.jsonl", "--log-key", "{dir}/nope.pem"),
        E,
        ("cannot read the log key",),
    ),  # fmt: skip
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_is_one_line_with_its_exit_code(site: Site, case: Case) -> None:
    before = {p: _digest(p) for p in (site.dir / "tokens-only.db",)}
    p = run(case.cli, *case.argv(site))
    line = error_line(p, logs=case.logs)
    assert p.returncode == case.code, (
        f"{case.id}: exit {p.returncode}, expected {case.code} ({dict(exitcodes.CODES)[case.code]}): {line}"
    )
    for text in case.says:
        wanted = text.format(busy=site.busy_port)
        assert wanted in line, f"{case.id}: the error line does not say {wanted!r}: {line}"
    assert "restart" not in line, f"{case.id}: nothing here was running, nothing to restart: {line}"
    for path in case.creates_nothing:
        made = Path(path.format(dir=site.dir))
        assert not made.exists(), f"{case.id}: the failed command created {made}"
    for store_file, digest in before.items():
        assert _digest(store_file) == digest, f"{case.id}: the failed command wrote to {store_file}"


def test_exit_codes_are_in_every_help(site: Site) -> None:
    for cli, sub in (("agent", ("replay",)), ("collector", ("serve",)), ("verify", ())):
        p = run(cli, *sub, "--help")
        assert p.returncode == 0, p.stderr
        for code, _ in exitcodes.CODES:
            assert re.search(rf"^\s+{code}\s+\S", p.stdout, re.M), (
                f"{cli} {' '.join(sub)} --help lacks exit code {code}"
            )


def test_an_unexpected_error_is_one_line_and_verbose_shows_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(ns: object) -> int:
        raise KeyError("wat")

    monkeypatch.setattr(collector_cli_findings, "_cmd_findings", broken)
    assert collector_cli.main(["findings", "--db", str(tmp_path / "x.db")]) == exitcodes.INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unexpected KeyError"), err
    assert "--verbose" in err and "Traceback" not in err
    assert collector_cli.main(["-v", "findings", "--db", str(tmp_path / "x.db")]) == exitcodes.INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("error: unexpected KeyError"), err


def test_replay_speaks_mtls_with_one_certificate_or_one_per_node(site: Site) -> None:
    ca = site.dir / "ca"
    p = run(
        "agent",
        "replay",
        str(site.dir / "one.jsonl"),
        "--collector",
        f"127.0.0.1:{site.mtls_port}",
        "--join-token",
        site.fresh_token(),
        "--tls-ca",
        str(ca / "ca.crt"),
        "--tls-cert",
        str(ca / "kl1-n0001.crt"),
        "--tls-key",
        str(ca / "kl1-n0001.key"),
    )
    assert p.returncode == 0, p.stderr
    last = p.stdout.strip().splitlines()[-1]
    m = re.search(r"(\d+) nodes, (\d+) statements signed, (\d+) acknowledged", last)
    assert m and m.group(1) == "1" and int(m.group(2)) > 0 and m.group(2) == m.group(3), last
    # A trace of two nodes: one certificate each, from the folder `ca issue --client` writes to.
    p = run(
        "agent",
        "replay",
        str(site.dir / "two.jsonl"),
        "--collector",
        f"127.0.0.1:{site.mtls_port}",
        "--join-token",
        site.fresh_token(),
        "--join-token",
        site.fresh_token(),
        "--tls-ca",
        str(ca / "ca.crt"),
        "--tls-cert-dir",
        str(ca),
    )
    assert p.returncode == 0, p.stderr
    m = re.search(r"(\d+) nodes, (\d+) statements signed, (\d+) acknowledged", p.stdout.strip().splitlines()[-1])
    assert m and m.group(1) == "2" and int(m.group(2)) > 0 and m.group(2) == m.group(3), p.stdout


def test_an_interrupted_replay_says_what_it_left_unsent(tmp_path: Path) -> None:
    """The collector freezes mid-replay (SIGSTOP); Ctrl-C then ends the replay with one line
    that counts what was signed, acknowledged and left unsent, and names the nodes' seqs."""
    trace = tmp_path / "site.jsonl.gz"
    write_trace(
        trace, demo_site(seed=5, hours=3, sample_interval_s=20, training_nodes=12, inference_nodes=0, slurm_nodes=0)
    )
    db = tmp_path / "c.db"
    store = SqliteStore(db)
    now = time.time_ns() // 1_000_000
    (tmp_path / "tokens").write_text("\n".join(store.create_token(600, now) for _ in range(12)) + "\n")
    store.close()
    ready = tmp_path / "ready.json"
    collector = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "-q", "serve", "--insecure", "--db", str(db), "--listen",
         "127.0.0.1:0", "--metrics-listen", "", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    replay: subprocess.Popen[str] | None = None
    try:
        port = _wait_ready(collector, ready)
        replay = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "replay", str(trace), "--collector", f"127.0.0.1:{port}",
             "--join-token-file", str(tmp_path / "tokens"), "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while _stored(db) == 0:
            assert replay.poll() is None, f"the replay ended early: {replay.stderr and replay.stderr.read()}"
            assert time.monotonic() < deadline, "nothing was stored within 60 s"
            time.sleep(0.02)
        os.kill(collector.pid, signal.SIGSTOP)
        time.sleep(1.0)  # the replay signs ahead until its backlog is full, then waits
        assert replay.poll() is None, "the replay finished before it could be interrupted: make the trace longer"
        replay.send_signal(signal.SIGINT)
        out, err = replay.communicate(timeout=60)
        os.kill(collector.pid, signal.SIGCONT)
    finally:
        if replay is not None and replay.poll() is None:
            replay.kill()
        os.kill(collector.pid, signal.SIGCONT)
        collector.terminate()
        collector.wait(timeout=30)
    p = subprocess.CompletedProcess(replay.args, replay.returncode, out, err)
    line = error_line(p, logs=True)
    assert p.returncode == exitcodes.INTERRUPTED, (p.returncode, line)
    m = re.search(r"replay interrupted: (\d+) statements? of \d+ nodes? signed, (\d+) acknowledged by the collector, "
                  r"(\d+) left unsent \((kl1-n\d+ seq \d+)", line)  # fmt: skip
    assert m, f"the line must count what was signed, acknowledged and left unsent, by node and seq: {line}"
    signed, acked, unsent = (int(m.group(i)) for i in (1, 2, 3))
    assert unsent > 0 and signed == acked + unsent, line
    assert "was not replayed" in line, "it must say how far into the trace it got"
    assert _stored(db) >= acked, "every statement acknowledged is in the store"


def _stored(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return int(c.execute("SELECT count(*) FROM statements").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
