"""deploy/kubernetes: every manifest parses, carries what its kind needs, refers only to
objects that exist (or that kustomization.yaml generates), validates against the Kubernetes
schemas (kubernetes-validate, offline), and its embedded configs load with the real loaders;
both sides speak mTLS, agents enroll with their pod's projected token, and the image is the
one the Dockerfile builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from collector.config import load_collector_config
from collector.tenants import TenantDirectory
from core.agentconfig import load_agent_config

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


def _kustomization() -> dict[str, Any]:
    return dict(yaml.safe_load((K8S / "kustomization.yaml").read_text()))


def _generated() -> set[tuple[str, str]]:
    k = _kustomization()
    assert k["generatorOptions"]["disableNameSuffixHash"] is True, "manifests name the generated objects as is"
    return {("Secret", g["name"]) for g in k["secretGenerator"]} | {
        ("ConfigMap", g["name"]) for g in k["configMapGenerator"]
    }


def _generated_files(kind: str, name: str) -> set[str]:
    """The keys of a generated Secret or ConfigMap (``key=path`` or a path's file name)."""
    gens = _kustomization()["secretGenerator" if kind == "Secret" else "configMapGenerator"]
    (gen,) = [g for g in gens if g["name"] == name]
    return {f.split("=", 1)[0] if "=" in f else f.rsplit("/", 1)[-1] for f in gen["files"]}


def _refs_exist(pod: dict[str, Any], where: str, claims: tuple[str, ...] = ()) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in _docs()} | _generated()
    assert ("ServiceAccount", pod["serviceAccountName"]) in names, where
    assert pod.get("automountServiceAccountToken") is False, f"{where}: no API token is needed"
    for v in pod.get("volumes", []):
        for src in v.get("projected", {}).get("sources", []):
            token = src.get("serviceAccountToken")
            assert token is None or token.get("audience"), f"{where}: a projected token must not be for the API"
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
    assert str(cfg.spool.parent) in mounts
    # Key, spool and the node's issued client certificate live on the node's state directory.
    assert cfg.tls_cert is not None and cfg.tls_key is not None
    assert str(cfg.tls_cert.parent.parent) in mounts and str(cfg.tls_key.parent.parent) in mounts
    for path in (cfg.k8s_token_file, cfg.tls_ca, cfg.tls_bootstrap_cert, cfg.tls_bootstrap_key):
        assert path is not None and str(path.parent) in mounts, f"{path} is not on a mounted volume"
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
    assert start["grpc"]["port"] == container_ports["health"]
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


def _configs(tmp_path: Path) -> tuple[Any, Any]:
    (tmp_path / "agent.toml").write_text(_one("ConfigMap", "gpuaudit-agent")["data"]["agent.toml"])
    (tmp_path / "collector.toml").write_text(_one("ConfigMap", "gpuaudit-collector")["data"]["collector.toml"])
    agent = load_agent_config(tmp_path / "agent.toml", {"GPUAUDIT_NODE_ID": "gpu-node-1"})
    collector, _ = load_collector_config(tmp_path / "collector.toml", {})
    return agent, collector


def _mounted_from(pod: dict[str, Any], path: Path) -> dict[str, Any]:
    """The volume a file path of the container is on, and the key inside it."""
    (c,) = pod["containers"]
    m = next(m for m in c["volumeMounts"] if str(path.parent) == m["mountPath"])
    return next(v for v in pod["volumes"] if v["name"] == m["name"])


def test_mtls_on_both_sides_and_nobody_runs_insecure(tmp_path: Path) -> None:
    agent, collector = _configs(tmp_path)
    assert agent.insecure is False and collector.insecure is False, "the shipped configs must not be plaintext"
    assert None not in (agent.tls_ca, agent.tls_cert, agent.tls_key), "the agent must speak mTLS"
    assert None not in (collector.tls_cert, collector.tls_key, collector.tls_client_ca)
    # Every TLS file the configs name comes from a generated Secret key that exists.
    sts_pod = _pod(_one("StatefulSet", "gpuaudit-collector"))
    for path in (collector.tls_cert, collector.tls_key, collector.tls_client_ca, collector.issue_ca_key):
        vol = _mounted_from(sts_pod, path)
        assert path.name in _generated_files("Secret", vol["secret"]["secretName"]), path
    jwks = _mounted_from(sts_pod, collector.k8s_jwks)
    assert collector.k8s_jwks.name in _generated_files("ConfigMap", jwks["configMap"]["name"])
    ds_pod = _pod(_one("DaemonSet", "gpuaudit-agent"))
    for path in (agent.tls_ca, agent.tls_bootstrap_cert, agent.tls_bootstrap_key):
        vol = _mounted_from(ds_pod, path)
        assert path.name in _generated_files("Secret", vol["secret"]["secretName"]), path
    # The server certificate must name the address agents dial.
    assert "--host gpuaudit-collector.gpuaudit.svc" in (K8S / "kustomization.yaml").read_text()
    assert agent.collector.split(":")[0] == "gpuaudit-collector.gpuaudit.svc"


def test_each_agent_pod_enrolls_with_its_own_projected_token(tmp_path: Path) -> None:
    from collector.enroll_k8s import MAX_LIFETIME_S

    agent, collector = _configs(tmp_path)
    assert agent.join_token is None and agent.join_token_file is None, "no shared single-use join token"
    pod = _pod(_one("DaemonSet", "gpuaudit-agent"))
    vol = _mounted_from(pod, agent.k8s_token_file)
    (src,) = vol["projected"]["sources"]
    token = src["serviceAccountToken"]
    assert token["path"] == agent.k8s_token_file.name
    assert token["audience"] == collector.k8s_audience, "the collector accepts only its own audience"
    assert 600 <= token["expirationSeconds"] <= MAX_LIFETIME_S, "the kubelet's minimum is 600 s"
    ns = _one("DaemonSet", "gpuaudit-agent")["metadata"]["namespace"]
    assert collector.k8s_service_account == f"system:serviceaccount:{ns}:{pod['serviceAccountName']}"
    assert collector.k8s_issuer and collector.issue_ca_cert == collector.tls_client_ca, (
        "issued client certificates must chain to the CA the collector trusts"
    )


def test_probes_use_the_plaintext_health_port(tmp_path: Path) -> None:
    _, collector = _configs(tmp_path)
    (c,) = _pod(_one("StatefulSet", "gpuaudit-collector"))["containers"]
    port = int(collector.health_listen.rsplit(":", 1)[1])
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["health"] == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == port, f"{probe}: the kubelet cannot speak mTLS to the gRPC port"


def test_the_image_is_the_one_the_dockerfile_builds() -> None:
    import re
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f'org.opencontainers.image.version="{version}"' in dockerfile
    assert f"docker build -t gpuaudit:{version} ." in dockerfile
    (image,) = _kustomization()["images"]
    assert image == {"name": "gpuaudit", "newTag": version}
    for kind, name in (("DaemonSet", "gpuaudit-agent"), ("StatefulSet", "gpuaudit-collector")):
        (c,) = _pod(_one(kind, name))["containers"]
        assert c["image"] == f"gpuaudit:{version}", f"{kind} {name}: {c['image']}"
    # Multi-stage, non-root, pinned base, and only the built wheel installed into the runtime.
    stages = re.findall(r"^FROM (\S+)", dockerfile, flags=re.M)
    assert len(stages) == 2, stages
    base = re.search(r"^ARG BASE=(\S+)", dockerfile, flags=re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    assert re.search(r"^USER 65532:65532$", dockerfile, flags=re.M), "the image must not run as root by default"
    assert "pip install /dist/gpuaudit-*.whl" in dockerfile
    assert "COPY --from=build /opt/gpuaudit /opt/gpuaudit" in dockerfile
    final = dockerfile.split("FROM ${BASE}\n", 1)[1]
    assert "COPY agent" not in final and "pip " not in final, "the runtime stage gets no source and runs no pip"
