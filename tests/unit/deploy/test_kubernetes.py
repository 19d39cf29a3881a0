"""deploy/kubernetes: every manifest parses, carries what its kind needs, refers only to
objects that exist, validates against the Kubernetes schemas (kubernetes-validate, offline),
and its embedded configs load with the real loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import load_agent_config
from collector.config import load_collector_config
from collector.tenants import TenantDirectory

yaml = pytest.importorskip("yaml", reason="PyYAML absent: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"


def _docs() -> list[dict[str, Any]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["__file"] = path.name
                out.append(doc)
    return out


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _docs() if d["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _by_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def test_every_manifest_has_the_basics_and_is_in_the_kustomization() -> None:
    docs = _docs()
    kinds = {d["kind"] for d in docs}
    assert kinds >= {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "DaemonSet",
        "StatefulSet",
        "Service",
        "NetworkPolicy",
    }, kinds
    for d in docs:
        assert d.get("apiVersion") and d["metadata"].get("name"), d["__file"]
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "gpuaudit", (d["__file"], d["kind"], d["metadata"]["name"])
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files, f"kustomization.yaml lists {sorted(listed)}, directory has {sorted(files)}"


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items(), (
        f"{workload['kind']} selector does not match its pod labels"
    )
    return dict(spec["template"]["spec"])


def _refs_exist(pod: dict[str, Any], where: str, claims: tuple[str, ...] = ()) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in _docs()}
    assert ("ServiceAccount", pod["serviceAccountName"]) in names, where
    assert pod.get("automountServiceAccountToken") is False, f"{where}: no API token is needed"
    for v in pod.get("volumes", []):
        if "configMap" in v:
            assert ("ConfigMap", v["configMap"]["name"]) in names, (where, v)
        if "secret" in v:
            assert ("Secret", v["secret"]["secretName"]) in names, (where, v)
    volumes = {v["name"] for v in pod.get("volumes", [])} | set(claims)
    for c in pod["containers"]:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, (where, m)
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, where
        assert sc["capabilities"]["drop"] == ["ALL"], where


def test_agent_daemonset_sees_the_host_and_its_gpus() -> None:
    ds = _one("DaemonSet", "gpuaudit-agent")
    pod = _pod(ds)
    _refs_exist(pod, "agent DaemonSet")
    assert pod["hostPID"] is True, "NVML reports host PIDs: the agent needs the host PID namespace"
    assert pod["runtimeClassName"] == "nvidia"
    assert any("gpu" in k for k in pod["nodeSelector"]), pod["nodeSelector"]
    (c,) = pod["containers"]
    assert c["securityContext"]["capabilities"].get("add") == ["SYS_PTRACE"]
    assert c["securityContext"].get("privileged") is False
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    for path, target in (
        ("/host/proc", "/proc"),
        ("/var/lib/kubelet/pod-resources", "/var/lib/kubelet/pod-resources"),
        ("/var/log/pods", "/var/log/pods"),  # pod UID -> namespace/name (pod_logs_root)
        ("/var/run/cdi", "/var/run/cdi"),  # DRA: claim CDI specs -> GPU (DraDeviceMap)
    ):
        m = mounts[path]
        assert m.get("readOnly") is True, f"{path} must be mounted read-only"
        assert host[m["name"]] == target
    env = {e["name"]: e for e in c["env"]}
    assert env["GPUAUDIT_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"


def test_agent_configmap_loads_and_points_at_the_mounts(tmp_path: Path) -> None:
    text = _one("ConfigMap", "gpuaudit-agent")["data"]["agent.toml"]
    (tmp_path / "agent.toml").write_text(text)
    cfg = load_agent_config(tmp_path / "agent.toml", {"GPUAUDIT_NODE_ID": "gpu-node-1"})
    assert cfg.node_id == "gpu-node-1"
    assert cfg.proc_root == Path("/host/proc") and cfg.sys_root == Path("/host/sys")
    assert cfg.pod_logs_root == Path("/var/log/pods"), "the DaemonSet mounts the kubelet's pod logs there"
    svc = _one("Service", "gpuaudit-collector")
    grpc_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
    assert cfg.collector == f"gpuaudit-collector.gpuaudit.svc:{grpc_port}"
    c = _pod(_one("DaemonSet", "gpuaudit-agent"))["containers"][0]
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    assert str(cfg.spool.parent) in mounts and str(cfg.join_token_file.parent) in mounts  # type: ignore[union-attr]
    # Prometheus finds the agent's /metrics by the container port named "metrics"
    # (deploy/prometheus/prometheus-kubernetes.yml) or by the pod's prometheus.io annotations.
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    assert cfg.metrics_listen == f"0.0.0.0:{ports['metrics']}", "the agent must serve /metrics on the pod's port"
    annotations = _one("DaemonSet", "gpuaudit-agent")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])


def test_collector_statefulset_service_and_storage(tmp_path: Path) -> None:
    sts = _one("StatefulSet", "gpuaudit-collector")
    pod = _pod(sts)
    _refs_exist(pod, "collector StatefulSet", tuple(c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]))
    assert sts["spec"]["replicas"] == 1, "one writer per SQLite store"
    svc = _one("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    (c,) = pod["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in container_ports, p
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The detector's warm-up runs before the collector listens (minutes on a large site): a
    # startup probe must hold the liveness probe off longer than the liveness probe would wait.
    start, live = c["startupProbe"], c["livenessProbe"]
    assert start["grpc"]["port"] == container_ports["grpc"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 600
    assert start["periodSeconds"] * start["failureThreshold"] > live["periodSeconds"] * live["failureThreshold"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    data_mount = next(m for m in c["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    files = {}
    for name in ("gpuaudit-collector", "gpuaudit-tenants"):
        for fname, text in _one("ConfigMap", name)["data"].items():
            (tmp_path / fname).write_text(text)
            files[fname] = tmp_path / fname
    cfg, _ = load_collector_config(files["collector.toml"], {})
    assert str(cfg.db.parent) == data_mount["mountPath"], "the store must live on the persistent volume"
    assert cfg.listen.endswith(f":{container_ports['grpc']}")
    assert cfg.metrics_listen.endswith(f":{container_ports['metrics']}")
    assert cfg.tenants is not None
    assert any(m["mountPath"] == str(cfg.tenants.parent) for m in c["volumeMounts"])
    TenantDirectory.load(files["tenants.toml"])


def test_network_policies_select_real_pods() -> None:
    workloads = [d for d in _docs() if d["kind"] in ("DaemonSet", "StatefulSet")]
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in workloads]
    policies = _by_kind("NetworkPolicy")
    assert {p["metadata"]["name"] for p in policies} == {"gpuaudit-agent", "gpuaudit-collector"}
    for p in policies:
        sel = p["spec"]["podSelector"]["matchLabels"]
        assert any(sel.items() <= labels.items() for labels in pod_labels), p["metadata"]["name"]
        assert set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}, "default-deny both ways, then allow"
    agent = _one("NetworkPolicy", "gpuaudit-agent")
    (scrape,) = agent["spec"]["ingress"]  # nothing else connects to the agent
    assert scrape["ports"] == [{"port": 9479, "protocol": "TCP"}], "only the agent's /metrics"
    assert scrape["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert _one("NetworkPolicy", "gpuaudit-collector")["spec"]["egress"] == [], "the collector calls nobody"


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate absent: pip install -e '.[dev]'")
    for d in _docs():
        doc = {k: v for k, v in d.items() if k != "__file"}
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{d['__file']}: {d['kind']} {d['metadata']['name']}: {exc}")


def test_schema_validation_catches_a_mistake() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate absent: pip install -e '.[dev]'")
    ds = {k: v for k, v in _one("DaemonSet", "gpuaudit-agent").items() if k != "__file"}
    ds["spec"]["template"]["spec"]["hostPid"] = True  # a typo of hostPID
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, K8S_VERSION, strict=True)
