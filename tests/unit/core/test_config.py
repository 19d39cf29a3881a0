"""Agent and collector configuration: precedence, errors that name the key, [tenants] tables."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from collector.config import CollectorConfig, load_collector_config
from core.agentconfig import AgentConfig, load_agent_config
from core.errors import ConfigError
from core.tenantrules import Lease


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


# -- precedence ------------------------------------------------------------------------

# (which sources are given) -> the window_s that must win
PRECEDENCE = [
    ({}, 60),
    ({"file": 120}, 120),
    ({"file": 120, "env": 180}, 180),
    ({"file": 120, "env": 180, "flag": 240}, 240),
    ({"env": 180, "flag": 240}, 240),
    ({"file": 120, "flag": 240}, 240),
    ({"env": 180}, 180),
]


@pytest.mark.parametrize(("given", "expected"), PRECEDENCE, ids=["-".join(g) or "default" for g, _ in PRECEDENCE])
def test_agent_precedence_is_flag_env_file_default(tmp_path: Path, given: dict[str, int], expected: int) -> None:
    path = toml(tmp_path, f"window_s = {given['file']}\n") if "file" in given else None
    env = {"GPUAUDIT_WINDOW_S": str(given["env"])} if "env" in given else {}
    overrides = {"window_s": given["flag"]} if "flag" in given else None
    cfg = load_agent_config(path, env, overrides)
    assert cfg.window_s == expected, f"sources {given}: window_s={cfg.window_s}, expected {expected}"


def test_agent_defaults_without_any_source() -> None:
    assert load_agent_config(None, {}) == AgentConfig()


def test_agent_every_kind_of_value_from_file_and_env(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'node_id = "kl1-n0001"\nspool = "/srv/spool.db"\ninsecure = true\nsample_interval_s = 2\n'
        'join_token_file = "/etc/gpuaudit/join-token"\n',
    )
    cfg = load_agent_config(
        path,
        {"GPUAUDIT_COLLECTOR": "c:1", "GPUAUDIT_BUCKET_S": "20", "GPUAUDIT_JOIN_TOKEN": "tok", "PATH": "/bin"},
    )
    assert cfg.node_id == "kl1-n0001" and cfg.resolved_node_id() == "kl1-n0001"
    assert cfg.spool == Path("/srv/spool.db") and isinstance(cfg.spool, Path)
    assert cfg.insecure is True
    assert cfg.sample_interval_s == 2.0 and isinstance(cfg.sample_interval_s, float)
    assert cfg.join_token_file == Path("/etc/gpuaudit/join-token")
    assert (cfg.collector, cfg.bucket_s, cfg.join_token) == ("c:1", 20, "tok")


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("true", True), ("YES", True), ("0", False), ("false", False), ("no", False)]
)
def test_boolean_from_env(value: str, expected: bool) -> None:
    assert load_agent_config(None, {"GPUAUDIT_INSECURE": value}).insecure is expected


def test_empty_env_clears_an_optional_setting(tmp_path: Path) -> None:
    path = toml(tmp_path, 'join_token = "from-file"\n')
    assert load_agent_config(path, {"GPUAUDIT_JOIN_TOKEN": ""}).join_token is None


def test_flag_given_as_none_means_not_given(tmp_path: Path) -> None:
    path = toml(tmp_path, "insecure = true\n")
    assert load_agent_config(path, {}, {"insecure": None}).insecure is True


# -- errors name the key ---------------------------------------------------------------

# (case id, TOML text, env, overrides, text the error must contain)
AGENT_ERRORS: list[tuple[str, str, dict[str, str], dict[str, Any] | None, str]] = [
    ("unknown-toml-key", "windw_s = 60\n", {}, None, "'windw_s'"),
    ("unknown-flag", "", {}, {"windw_s": 60}, "'windw_s'"),
    ("env-int-not-a-number", "", {"GPUAUDIT_WINDOW_S": "abc"}, None, "GPUAUDIT_WINDOW_S"),
    ("env-int-float-text", "", {"GPUAUDIT_WINDOW_S": "60.0"}, None, "GPUAUDIT_WINDOW_S"),
    ("env-float-not-a-number", "", {"GPUAUDIT_SAMPLE_INTERVAL_S": "fast"}, None, "GPUAUDIT_SAMPLE_INTERVAL_S"),
    ("env-bool-maybe", "", {"GPUAUDIT_INSECURE": "maybe"}, None, "GPUAUDIT_INSECURE"),
    ("toml-int-as-string", 'window_s = "60"\n', {}, None, "window_s"),
    ("toml-int-as-float", "window_s = 60.0\n", {}, None, "window_s"),
    ("toml-int-as-bool", "window_s = true\n", {}, None, "window_s"),
    ("toml-bool-as-string", 'insecure = "yes"\n', {}, None, "insecure"),
    ("toml-string-as-int", "collector = 7443\n", {}, None, "collector"),
    ("toml-path-as-int", "spool = 5\n", {}, None, "spool"),
    ("flag-int-as-string", "", {}, {"window_s": "60"}, "window_s"),
    ("not-toml", "window_s = \n", {}, None, "config.toml"),
    ("tenant-rules-as-key", '[tenant_rules]\nx = "y"\n', {}, None, "tenant_rules"),
    ("unknown-source", 'source = "dcgm"\n', {}, None, "source"),
    ("sim-without-trace", 'source = "sim"\n', {}, None, "sim_trace"),
    ("window-not-multiple-of-bucket", "window_s = 65\n", {}, None, "window_s must be a positive multiple of bucket_s"),
    ("bucket-zero", "bucket_s = 0\n", {}, None, "bucket_s"),
    ("negative-window", "window_s = -60\n", {}, None, "window_s"),
    ("interval-over-bucket", "sample_interval_s = 11\n", {}, None, "sample_interval_s"),
    ("interval-zero", "sample_interval_s = 0\n", {}, None, "sample_interval_s"),
    ("interval-nan-from-env", "", {"GPUAUDIT_SAMPLE_INTERVAL_S": "nan"}, None, "sample_interval_s"),
]


@pytest.mark.parametrize(
    ("text", "env", "overrides", "needle"),
    [(t, e, o, n) for _, t, e, o, n in AGENT_ERRORS],
    ids=[i for i, *_ in AGENT_ERRORS],
)
def test_agent_config_error_names_the_key(
    tmp_path: Path, text: str, env: dict[str, str], overrides: dict[str, Any] | None, needle: str
) -> None:
    path = toml(tmp_path, text) if text else None
    with pytest.raises(ConfigError) as exc:
        load_agent_config(path, env, overrides)
    assert needle in str(exc.value), f"error should mention {needle!r}: {exc.value}"


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_agent_config(tmp_path / "nope.toml", {})


def test_sim_with_a_trace_is_accepted(tmp_path: Path) -> None:
    cfg = load_agent_config(toml(tmp_path, 'source = "sim"\nsim_trace = "t.jsonl.gz"\nsim_node = "n3"\n'), {})
    assert (cfg.source, cfg.sim_trace, cfg.sim_node) == ("sim", Path("t.jsonl.gz"), "n3")


def test_env_cannot_set_tenant_rules() -> None:
    cfg = load_agent_config(None, {"GPUAUDIT_TENANT_RULES": "x", "GPUAUDIT_TENANTS": "y"})
    assert cfg.tenant_rules == AgentConfig().tenant_rules


# -- [tenants] -------------------------------------------------------------------------

TENANTS = """
[tenants.namespaces]
team-a = "t-17"
[tenants.slurm_accounts]
physics = "t-3"
[tenants.uids]
1000 = "t-4"
[tenants.containers]
abc123 = "t-5"
[[tenants.lease]]
tenant = "t-17"
start = 2026-03-01T00:00:00Z
end = 2026-04-01T00:00:00+02:00
[[tenants.lease]]
tenant = "t-18"
start = 2026-04-01T00:00:00Z
"""


def test_tenant_tables_are_parsed(tmp_path: Path) -> None:
    rules = load_agent_config(toml(tmp_path, TENANTS), {}).tenant_rules
    assert rules.namespaces == {"team-a": "t-17"}
    assert rules.slurm_accounts == {"physics": "t-3"}
    assert rules.uids == {1000: "t-4"}, "uid keys must become integers"
    assert rules.containers == {"abc123": "t-5"}
    march = dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp()
    april_plus2 = dt.datetime(2026, 3, 31, 22, tzinfo=dt.UTC).timestamp()  # 2026-04-01T00:00+02:00
    april = dt.datetime(2026, 4, 1, tzinfo=dt.UTC).timestamp()
    assert rules.leases == (Lease("t-17", march, april_plus2), Lease("t-18", april, None))


def test_no_tenants_table_means_no_rules() -> None:
    rules = load_agent_config(None, {}).tenant_rules
    assert (rules.namespaces, rules.uids, rules.leases) == ({}, {}, ())


LEASE = '[[tenants.lease]]\ntenant = "t-1"\n'
TENANT_ERRORS: list[tuple[str, str, str]] = [
    ("naive-start", LEASE + "start = 2026-03-01T00:00:00\n", "tenants.lease[0].start"),
    ("naive-end", LEASE + "end = 2026-03-01T00:00:00\n", "tenants.lease[0].end"),
    ("date-only", LEASE + "start = 2026-03-01\n", "tenants.lease[0].start"),
    ("string-time", LEASE + 'start = "2026-03-01T00:00:00Z"\n', "tenants.lease[0].start"),
    ("no-tenant", "[[tenants.lease]]\nstart = 2026-03-01T00:00:00Z\n", "tenants.lease[0]"),
    ("unknown-lease-key", LEASE + 'node = "n1"\n', "'node'"),
    (
        "overlapping-leases",
        LEASE + "start = 2026-03-01T00:00:00Z\nend = 2026-03-10T00:00:00Z\n"
        '[[tenants.lease]]\ntenant = "t-2"\nstart = 2026-03-09T00:00:00Z\n',
        "overlap",
    ),
    ("two-unbounded-leases", LEASE + '[[tenants.lease]]\ntenant = "t-2"\n', "overlap"),
    (
        "lease-ends-before-it-starts",
        LEASE + "start = 2026-03-02T00:00:00Z\nend = 2026-03-01T00:00:00Z\n",
        "tenants.lease[0]",
    ),
    ("lease-empty-tenant", '[[tenants.lease]]\ntenant = ""\n', "tenants.lease[0]"),
    ("lease-not-array", '[tenants.lease]\ntenant = "t-1"\n', "tenants.lease"),
    ("unknown-tenants-key", '[tenants.projects]\nx = "t-1"\n', "'projects'"),
    ("uid-not-a-number", '[tenants.uids]\nalice = "t-1"\n', "tenants.uids"),
    ("namespace-tenant-not-string", "[tenants.namespaces]\nteam-a = 17\n", "tenants.namespaces"),
    ("unattributed-as-tenant", '[tenants.namespaces]\nteam-a = "unattributed"\n', "tenants"),
    ("empty-container-prefix", '[tenants.containers]\n"" = "t-1"\n', "tenants"),
    ("tenants-not-a-table", 'tenants = "t-1"\n', "[tenants]"),
]


@pytest.mark.parametrize(
    ("text", "needle"), [(t, n) for _, t, n in TENANT_ERRORS], ids=[i for i, _, _ in TENANT_ERRORS]
)
def test_bad_tenants_table_is_a_config_error_naming_where(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_agent_config(toml(tmp_path, text), {})
    assert needle in str(exc.value), f"error should mention {needle!r}: {exc.value}"


def test_adjacent_leases_do_not_overlap(tmp_path: Path) -> None:
    text = LEASE + 'end = 2026-03-01T00:00:00Z\n[[tenants.lease]]\ntenant = "t-2"\nstart = 2026-03-01T00:00:00Z\n'
    assert len(load_agent_config(toml(tmp_path, text), {}).tenant_rules.leases) == 2


# -- collector -------------------------------------------------------------------------


def test_collector_precedence_and_detect_table(tmp_path: Path) -> None:
    path = toml(tmp_path, 'listen = "0.0.0.0:7443"\nmax_batch = 64\ntenants = "t.toml"\n[detect]\nmin_gpus = 8\n')
    cfg, detect = load_collector_config(path, {"GPUAUDIT_MAX_BATCH": "128"}, {"insecure": True})
    assert cfg.listen == "0.0.0.0:7443"
    assert cfg.max_batch == 128, "env must beat the file"
    assert cfg.insecure is True
    assert cfg.tenants == Path("t.toml")
    assert detect == {"min_gpus": 8}, "the [detect] table is returned raw for DetectConfig"


def test_collector_defaults() -> None:
    cfg, detect = load_collector_config(None, {})
    assert cfg == CollectorConfig() and detect == {}


COLLECTOR_ERRORS: list[tuple[str, str, dict[str, str], str]] = [
    ("unknown-key", "lisen = 1\n", {}, "'lisen'"),
    ("env-int-abc", "", {"GPUAUDIT_MAX_BATCH": "abc"}, "GPUAUDIT_MAX_BATCH"),
    ("env-bool-junk", "", {"GPUAUDIT_INSECURE": "sure"}, "GPUAUDIT_INSECURE"),
    ("max-batch-zero", "max_batch = 0\n", {}, "max_batch"),
    ("payload-too-small", "max_payload_bytes = 10\n", {}, "max_payload_bytes"),
    ("detect-not-a-table", 'detect = "on"\n', {}, "[detect]"),
    ("ttl-as-string", 'token_ttl_s = "1d"\n', {}, "token_ttl_s"),
]


@pytest.mark.parametrize(
    ("text", "env", "needle"), [(t, e, n) for _, t, e, n in COLLECTOR_ERRORS], ids=[i for i, *_ in COLLECTOR_ERRORS]
)
def test_collector_config_error_names_the_key(tmp_path: Path, text: str, env: dict[str, str], needle: str) -> None:
    path = toml(tmp_path, text) if text else None
    with pytest.raises(ConfigError) as exc:
        load_collector_config(path, env)
    assert needle in str(exc.value), f"error should mention {needle!r}: {exc.value}"
