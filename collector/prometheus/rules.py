"""Tenant rules for Prometheus history: the agent's ``[tenants]`` table, one format for both.

``--tenant-rules FILE`` is a TOML file holding the ``[tenants]`` table exactly as the agent
config has it (docs/operator-guide.md, "Tenant rules"), parsed by the agent's own parser
(``core.tenantrules.parse_tenant_rules``). The file may be an agent config itself
(``/etc/gpuaudit/agent.toml``): its other keys are then checked as the agent checks them
(``core.agentconfig``).

What applies to dcgm-exporter's labels:

* ``[tenants.namespaces]``: a GPU whose series carry a pod's namespace belongs to that
  namespace's tenant (workload ``<namespace>/<pod>``, kind ``k8s_pod``, as the agent names it);
* ``[tenants.slurm_accounts]``: a GPU whose series carry ``hpc_job`` belongs to the tenant of
  the job's account, where ``--slurm-accounts FILE`` gives the job's account
  (``sacct -a -X -n -P -o JobID,Account``; workload ``slurm:<job>``, kind ``slurm_job``);
* ``uids`` and ``containers`` name what only the node sees (process owners, container ids):
  dcgm-exporter does not export them, so they are read and not used;
* a ``[[tenants.lease]]`` gives one node to a tenant. In the agent's config it is that
  node's; a site-wide file cannot say which node, so a lease here is refused.

Anything no rule claims is ``unattributed``, as on the agent.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

from core.errors import ConfigError
from core.tenantrules import TenantRules, parse_tenant_rules

_logger = logging.getLogger(__name__)


def load_tenant_rules(path: Path | None) -> TenantRules:
    """The ``[tenants]`` table of ``path`` (none: no rules, everything unattributed)."""
    from core.agentconfig import load_agent_config

    if path is None:
        return TenantRules()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--tenant-rules: cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--tenant-rules {path}: {exc}") from exc
    if "tenants" not in doc:
        raise ConfigError(f"--tenant-rules {path}: no [tenants] table (the agent config's format)")
    if set(doc) == {"tenants"}:
        rules = parse_tenant_rules(doc["tenants"])
    else:  # an agent config: checked as the agent checks it, environment left out
        rules = load_agent_config(path, env={}).tenant_rules
    if rules.leases:
        raise ConfigError(
            f"--tenant-rules {path}: [[tenants.lease]] gives one node to a tenant and belongs in that node's "
            "agent config; a site-wide rules file cannot say which node. Remove it here (a leased node's "
            "GPUs are then attributed by their pod or job labels, or unattributed)."
        )
    unused = [name for name, table in (("uids", rules.uids), ("containers", rules.containers)) if table]
    if unused:
        _logger.info(
            "tenant rules %s: [tenants.%s] not used: dcgm-exporter exports no process owners or container ids",
            path,
            "] and [tenants.".join(unused),
        )
    return rules


def load_slurm_accounts(path: Path | None) -> dict[str, str]:
    """Slurm job id -> account, from ``sacct -a -X -n -P -o JobID,Account`` output (``id|account``)."""
    if path is None:
        return {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"--slurm-accounts: cannot read {path}: {exc.strerror or exc}") from exc
    out: dict[str, str] = {}
    for n, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("|")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise ConfigError(f"--slurm-accounts {path}:{n}: expected JobID|Account (sacct -P), got {line[:80]!r}")
        out[parts[0]] = parts[1]
    return out
