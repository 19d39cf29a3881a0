"""The command lines as a user runs them: exit codes, output, and the demo's scenario offline."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collector import cli as collector_cli
from collector.cli.serve import write_ready_file
from core.sim.scenarios import DEMO_OPAQUE_TENANT, demo_site, demo_tenants_toml
from core.trace import write_trace


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)


def test_demo_scenario_through_the_offline_detector(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's site, 36 minutes: the opaque tenant's 2,400-GPU run is found, nobody else is."""
    trace = tmp_path / "site.jsonl.gz"
    write_trace(trace, demo_site(seed=11, hours=0.6, sample_interval_s=20))
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(demo_tenants_toml())
    rc = collector_cli.main(["detect", "--trace", str(trace), "--tenants", str(tenants), "--json"])
    assert rc == 0
    findings = json.loads(capsys.readouterr().out)
    assert [f["tenant"] for f in findings] == [DEMO_OPAQUE_TENANT], [(f["tenant"], f["gpus"]) for f in findings]
    f = findings[0]
    assert (f["gpus"], f["nodes"]) == (2400, 300)
    assert f["severity"] == "critical"
    # The run starts at 04:00 (10 minutes into the trace); it must be raised within 15 minutes.
    assert f["started_at"] == "2026-03-02T04:00:00Z"
    assert f["detected_at"] <= "2026-03-02T04:15:00Z", f["detected_at"]
    low, high = f["flop_estimate"]
    assert 0 < low < high
    for key in ("id", "kind", "score", "opacity", "evidence", "gpu_hours"):
        assert key in f, f"Findings JSON lacks {key}"


def test_detect_rejects_a_malformed_trace_with_the_line_number(tmp_path: Path) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text('{"format": "gpuaudit-trace", "version": 1}\n{"type": "sample", "node": "x"}\n')
    p = run("collector.cli", "detect", "--trace", str(trace))
    assert p.returncode == 2, p.stderr
    assert "bad.jsonl:2" in p.stderr, p.stderr


def test_serve_refuses_plaintext_without_the_insecure_flag(tmp_path: Path) -> None:
    p = run("collector.cli", "serve", "--db", str(tmp_path / "c.db"), "--listen", "127.0.0.1:0", "--metrics-listen", "")
    assert p.returncode == 2
    assert "insecure" in p.stderr


def test_unknown_config_key_is_a_usage_error_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "collector.toml"
    cfg.write_text('listen = "127.0.0.1:0"\nlisten_adress = "oops"\n')
    p = run("collector.cli", "findings", "--config", str(cfg))
    assert p.returncode == 2
    assert "listen_adress" in p.stderr


def test_token_create_and_findings_on_an_empty_store(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    out = tmp_path / "tokens"
    p = run("collector.cli", "token", "create", "--db", str(db), "--count", "3", "--out", str(out))
    assert p.returncode == 0, p.stderr
    tokens = out.read_text().split()
    assert len(tokens) == 3 and len(set(tokens)) == 3
    assert stat.S_IMODE(out.stat().st_mode) == 0o600, "join tokens are secrets"
    p = run("collector.cli", "findings", "--db", str(db), "--json")
    assert p.returncode == 0 and json.loads(p.stdout) == []


def test_agent_keygen_creates_a_private_key_file(tmp_path: Path) -> None:
    key = tmp_path / "agent.key"
    p = run("agent.cli", "keygen", "--key", f"file:{key}")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("sha256:")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = run("agent.cli", "keygen", "--key", f"file:{key}")
    assert again.returncode == 0 and again.stdout == p.stdout, "keygen on an existing key prints its id"


def test_agent_run_without_a_gpu_driver_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'node_id = "n1"\nkey = "file:{tmp_path}/k"\nspool = "{tmp_path}/spool.db"\ninsecure = true\n'
        'collector = "127.0.0.1:1"\n'
    )
    p = run("agent.cli", "run", "--config", str(cfg))
    assert p.returncode == 3, f"no driver is the environment's problem (exit 3), got {p.returncode}: {p.stderr}"
    assert "nvidia-smi" in p.stderr or "NVIDIA driver" in p.stderr, p.stderr


@pytest.mark.parametrize(
    "cmd", [["findings"], ["export", "--all", "--out", "x.json"], ["log", "checkpoint"], ["log", "audit"]]
)
def test_reading_commands_do_not_create_a_store(tmp_path: Path, cmd: list[str]) -> None:
    """A mistyped --db must be an error, not a fresh empty database that hides the real one."""
    db = tmp_path / "typo.db"
    p = run("collector.cli", *cmd, "--db", str(db))
    assert p.returncode == 3, f"a missing store is a missing file (exit 3), got {p.returncode}: {p.stderr}"
    assert "no store at" in p.stderr
    assert not db.exists(), "a reading command created a database"


def test_log_audit_exits_1_when_the_signed_root_is_not_what_the_leaves_hash_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from attestation.checkpoint import Checkpoint, sign_checkpoint
    from attestation.keys import Ed25519Signer
    from collector.store.base import CheckpointRecord
    from collector.store.sqlite import SqliteStore

    db = tmp_path / "c.db"
    SqliteStore(db).close()
    assert collector_cli.main(["-q", "log", "checkpoint", "--sign", "--db", str(db)]) == 0
    capsys.readouterr()
    assert collector_cli.main(["-q", "log", "audit", "--db", str(db)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["leaves"], report["checkpoint_size"], report["checkpoint_ok"], report["ok"]) == (0, 0, True, True)
    # A checkpoint row claiming leaves the store does not hold.
    origin = "gpuaudit/forged"
    note = sign_checkpoint(Checkpoint(origin, 5, b"\x07" * 32), origin, Ed25519Signer.generate()).note
    with SqliteStore(db) as store:
        store.save_checkpoint(CheckpointRecord(5, b"\x07" * 32, 0, note))
    assert collector_cli.main(["-q", "log", "audit", "--db", str(db)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["checkpoint_size"], report["checkpoint_ok"], report["ok"]) == (5, False, False)


def test_serve_refuses_to_sign_the_stores_log_with_another_key(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    base = [sys.executable, "-m", "collector.cli", "-q", "serve", "--db", str(db), "--listen", "127.0.0.1:0"]
    base += ["--metrics-listen", "", "--insecure", "--ready-file", str(tmp_path / "ready")]

    def serve(*extra: str, key: str) -> subprocess.Popen[str]:
        env = {**os.environ, "GPUAUDIT_LOG_KEY": str(tmp_path / key)}
        return subprocess.Popen([*base, *extra], env=env, stderr=subprocess.PIPE, text=True)

    def until_ready(p: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").exists():
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.stderr else ""
            time.sleep(0.05)
        p.terminate()
        assert p.wait(timeout=30) == 0
        (tmp_path / "ready").unlink()

    until_ready(serve(key="a.pem"))  # signs the first checkpoint with key a
    refused = serve(key="b.pem")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2, err
    assert "log_identity" in err and "--accept-log-key-change" in err
    until_ready(serve("--accept-log-key-change", key="b.pem"))
    until_ready(serve(key="b.pem"))  # from now on b is the log's key


def test_the_ready_file_is_never_seen_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Supervisors, the demo and the benches read the ready file as soon as it exists: it
    is written under another name and renamed into place, never written where it is read."""
    written: list[Path] = []
    real_write_text = Path.write_text

    def recording(self: Path, data: str, *args: object, **kwargs: object) -> int:
        written.append(self)
        return real_write_text(self, data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", recording)
    ready = tmp_path / "ready"
    write_ready_file(ready, {"port": 50051, "metrics_port": None})
    assert ready not in written and written, written
    assert json.loads(ready.read_text()) == {"port": 50051, "metrics_port": None}
    assert [p.name for p in tmp_path.iterdir()] == ["ready"]
