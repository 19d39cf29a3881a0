"""deploy/systemd units are hardened and pass ``systemd-analyze verify``; deploy/config
examples load with the real config loaders."""

from __future__ import annotations

import configparser
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from collector.cli import detect_config_from_table
from collector.config import load_collector_config
from collector.tenants import TenantDirectory
from core.agentconfig import load_agent_config

ROOT = Path(__file__).resolve().parents[3]
SYSTEMD = ROOT / "deploy" / "systemd"
CONFIG = ROOT / "deploy" / "config"
UNITS = ("gpuaudit-agent.service", "gpuaudit-collector.service")
# Started by its timer, not at boot: no [Install] section of its own.
RETENTION = ("gpuaudit-retention.service", "gpuaudit-retention.timer")


def _unit(name: str) -> dict[str, list[str]]:
    """Directives of a unit's [Service] section, each with every value it is given."""
    out: dict[str, list[str]] = {}
    section = None
    for line in (SYSTEMD / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


@pytest.mark.parametrize("name", [*UNITS, RETENTION[0]])
def test_units_are_hardened(name: str) -> None:
    u = _unit(name)
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
    }.items():
        assert u.get(key) == [value], f"{name}: {key}={value} expected, got {u.get(key)}"
    assert u["ReadWritePaths"] == ["/var/lib/gpuaudit"], f"{name}: only the state directory may be writable"
    assert u["User"] != ["root"] and u["User"], f"{name} must run as its own user"
    assert "CapabilityBoundingSet" in u, f"{name}: the capability bounding set must be explicit"


def test_agent_reaches_nvidia_devices_and_the_hosts_proc_only() -> None:
    u = _unit("gpuaudit-agent.service")
    assert u["CapabilityBoundingSet"] == ["CAP_SYS_PTRACE"]
    assert u["DevicePolicy"] == ["closed"]
    allowed = [v.split()[0] for v in u["DeviceAllow"]]
    assert "/dev/nvidiactl" in allowed and "char-nvidia-frontend" in allowed, allowed
    assert all("nvidia" in d for d in allowed), f"only NVIDIA devices: {allowed}"
    assert u["ProcSubset"] == ["all"], "attribution reads every process's /proc entry"


@pytest.mark.parametrize("name", ["gpuaudit-collector.service", RETENTION[0]])
def test_collector_has_no_capabilities(name: str) -> None:
    u = _unit(name)
    assert u["CapabilityBoundingSet"] == [""]
    assert u["PrivateDevices"] == ["yes"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent (Debian package systemd)")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # ExecStart names the install location (/opt/gpuaudit/bin); verify checks it exists, so
    # point it at stand-ins and verify everything else as written.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in UNITS:
        exe = bindir / name.replace(".service", "")
        exe.write_text("#!/bin/sh\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    for name in (*UNITS, *RETENTION):
        (tmp_path / name).write_text((SYSTEMD / name).read_text().replace("/opt/gpuaudit/bin/", f"{bindir}/"))
    p = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in (*UNITS, *RETENTION))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and not p.stderr.strip(), "systemd-analyze verify:\n" + p.stdout + p.stderr
    # ... and it does fail on a unit with a mistake.
    bad = tmp_path / "gpuaudit-bad.service"
    bad.write_text((tmp_path / UNITS[1]).read_text().replace("ProtectSystem=strict", "ProtectSystem=stricter"))
    p = subprocess.run(["systemd-analyze", "verify", "--man=no", str(bad)], capture_output=True, text=True, timeout=60)
    assert "stricter" in p.stderr, p.stderr
    # ... and on a timer whose schedule does not parse.
    bad_timer = tmp_path / "gpuaudit-bad.timer"
    bad_timer.write_text((tmp_path / RETENTION[1]).read_text().replace("03:30:00", "25:99:00"))
    p = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(bad_timer)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode != 0 and "calendar" in p.stderr, p.stderr


def _sections(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string("\n".join(x for x in (SYSTEMD / name).read_text().splitlines() if not x.startswith("#")))
    return cp


def test_retention_runs_daily_from_its_timer_with_the_collectors_config() -> None:
    service, timer = (_sections(n) for n in RETENTION)
    assert service["Service"]["Type"] == "oneshot", "retention runs to the end and exits"
    assert "Install" not in service, "the timer starts it, not boot"
    assert timer["Timer"]["Unit"] == RETENTION[0]
    assert timer["Timer"]["Persistent"] == "true", "a run missed while the host was down must happen at boot"
    assert timer["Install"]["WantedBy"] == "timers.target"
    # A daily calendar spec: systemd-analyze normalises it and names the next elapse.
    if shutil.which("systemd-analyze") is not None:
        p = subprocess.run(
            ["systemd-analyze", "calendar", timer["Timer"]["OnCalendar"]], capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 0 and "Normalized form: *-*-* 03:30:00" in p.stdout, p.stdout + p.stderr
    # The command it runs is the collector's own retention subcommand, with the collector's
    # config (its store) and a default age that a drop-in can override.
    argv = service["Service"]["ExecStart"].split()
    assert argv[:2] == ["/opt/gpuaudit/bin/gpuaudit-collector", "retention"], argv
    assert argv[argv.index("--config") + 1] == "/etc/gpuaudit/collector.toml"
    assert argv[argv.index("--older-than") + 1] == "${RETENTION_DAYS}"
    assert "RETENTION_DAYS=90" in _unit(RETENTION[0])["Environment"]
    from collector.cli import build_parser

    ns = build_parser().parse_args([a.replace("${RETENTION_DAYS}", "90") for a in argv[1:]])
    assert ns.cmd == "retention" and ns.older_than == 90.0 and str(ns.config) == "/etc/gpuaudit/collector.toml"


def test_install_sections() -> None:
    for name in UNITS:
        cp = configparser.ConfigParser(strict=False, interpolation=None)
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        cp.read_string("\n".join(x for x in (SYSTEMD / name).read_text().splitlines() if not x.startswith("#")))
        assert cp["Install"]["WantedBy"] == "multi-user.target", name
        assert "gpuaudit-" in cp["Service"]["ExecStart"] and "--config /etc/gpuaudit/" in cp["Service"]["ExecStart"]


def test_example_configs_load_with_the_real_loaders() -> None:
    agent = load_agent_config(CONFIG / "agent.toml", {})
    assert agent.source == "nvml" and not agent.insecure and agent.tls_cert is not None and agent.window_s == 60
    assert agent.spool == Path("/var/lib/gpuaudit/spool.db") and agent.key.startswith("file:/var/lib/gpuaudit/")
    rules = agent.tenant_rules
    assert rules.namespaces and rules.slurm_accounts and rules.uids and rules.containers and rules.leases
    cfg, detect = load_collector_config(CONFIG / "collector.toml", {})
    assert cfg.db == Path("/var/lib/gpuaudit/collector.db") and not cfg.insecure and cfg.tls_client_ca is not None
    assert cfg.tenants == Path("/etc/gpuaudit/tenants.toml")
    dcfg = detect_config_from_table(detect)
    assert dcfg.min_gpus == 64
    tenants = TenantDirectory.load(CONFIG / "tenants.toml")
    assert tenants is not None
    # Paths the units make writable are the paths the configs write to.
    for unit in UNITS:
        assert _unit(unit)["ReadWritePaths"] == [str(agent.spool.parent)] == [str(cfg.db.parent)]


def test_environment_overrides_the_example_file() -> None:
    agent = load_agent_config(CONFIG / "agent.toml", {"GPUAUDIT_COLLECTOR": "10.0.0.5:7443"})
    assert agent.collector == "10.0.0.5:7443"
