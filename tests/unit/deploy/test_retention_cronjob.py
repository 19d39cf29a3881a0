"""deploy/kubernetes/retention-cronjob.yaml: retention runs daily by default, on the
collector's store, with the collector's config, and validates against the Kubernetes schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from collector.cli import build_parser
from collector.config import load_collector_config

yaml = pytest.importorskip("yaml", reason="PyYAML absent: pip install -e '.[dev]'")

K8S = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _one(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs(name) if d["kind"] == kind]
    return doc


def _cronjob_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    cj = _one("retention-cronjob.yaml", "CronJob")
    return cj, cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_retention_is_scheduled_daily_one_run_at_a_time() -> None:
    cj, pod = _cronjob_pod()
    assert cj["metadata"]["namespace"] == "gpuaudit"
    minute, hour, dom, month, dow = cj["spec"]["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and (dom, month, dow) == ("*", "*", "*"), "once a day"
    assert cj["spec"]["concurrencyPolicy"] == "Forbid", "two overlapping runs would only retry each other's chunks"
    assert pod["restartPolicy"] in ("OnFailure", "Never")


def test_retention_runs_the_collectors_retention_on_the_collectors_store(tmp_path: Path) -> None:
    _, pod = _cronjob_pod()
    (c,) = pod["containers"]
    ns = build_parser().parse_args(c["command"][1:])
    assert c["command"][0] == "gpuaudit-collector" and ns.cmd == "retention" and ns.older_than > 0
    sts = _one("collector-statefulset.yaml", "StatefulSet")
    sts_pod = sts["spec"]["template"]["spec"]
    (collector,) = sts_pod["containers"]
    assert c["image"] == collector["image"], "the same release as the collector"
    assert pod["serviceAccountName"] == sts_pod["serviceAccountName"]
    assert pod["securityContext"] == sts_pod["securityContext"], "the same user owns the store's files"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    # The claim is the StatefulSet's first replica's (<template>-<statefulset>-0), mounted where
    # the collector mounts it, and the config is the collector's: its db lies on that volume.
    (template,) = sts["spec"]["volumeClaimTemplates"]
    claim = f"{template['metadata']['name']}-{sts['metadata']['name']}-0"
    volumes = {v["name"]: v for v in pod["volumes"]}
    data = next(n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") == claim)
    mount = next(m for m in c["volumeMounts"] if m["name"] == data)
    collector_mount = next(m for m in collector["volumeMounts"] if m["name"] == template["metadata"]["name"])
    assert mount["mountPath"] == collector_mount["mountPath"]
    config_mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(ns.config))
    config_map = volumes[config_mount["name"]]["configMap"]["name"]
    cm = next(d for d in _docs("configmaps.yaml") if d["kind"] == "ConfigMap" and d["metadata"]["name"] == config_map)
    (tmp_path / "collector.toml").write_text(cm["data"][config_mount["subPath"]])
    cfg, _ = load_collector_config(tmp_path / "collector.toml", {})
    assert str(cfg.db.parent) == mount["mountPath"], "retention must age the store the collector writes"
    # A ReadWriteOnce volume is mounted on one node: the job must run where the collector runs.
    (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


def test_retention_cronjob_validates_against_the_kubernetes_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate absent: pip install -e '.[dev]'")
    for doc in _docs("retention-cronjob.yaml"):
        kv.validate(doc, K8S_VERSION, strict=True)
    bad = _one("retention-cronjob.yaml", "CronJob")
    bad["spec"]["schedul"] = bad["spec"].pop("schedule")  # a typo: the schedule is then missing
    with pytest.raises(kv.ValidationError, match="schedule"):
        kv.validate(bad, K8S_VERSION, strict=True)
