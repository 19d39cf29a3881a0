"""dcgm-exporter-shaped OpenMetrics from a simulated site (Trace v1 records), for backfilling.

What a site's Prometheus would hold had dcgm-exporter scraped the simulated GPUs at the
trace's sample times: ``DCGM_FI_DEV_GPU_UTIL`` (integer %), ``DCGM_FI_DEV_POWER_USAGE``
(W), ``DCGM_FI_DEV_FB_USED`` / ``DCGM_FI_DEV_FB_FREE`` (MiB) and
``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (mJ), labelled as dcgm-exporter labels them
(``gpu``, ``UUID``, ``device``, ``modelName``, ``Hostname`` or ``hostname``,
``pci_bus_id``) with the Kubernetes pod of the GPU's process where it has one, in one of two
shapes per host:

* ``"servicemonitor"``: scraped through the Helm chart's ServiceMonitor
  (``honorLabels: false``): the workload's labels are ``exported_namespace``,
  ``exported_pod``, ``exported_container``, and ``namespace``/``pod``/``container`` are the
  exporter's own, on every series;
* ``"plain"``: the workload's ``namespace``/``pod``/``container`` as dcgm-exporter writes them.

A process's tenant becomes the namespace ``namespaces[tenant]`` and its workload the pod
name. Write it with ``write_openmetrics`` and backfill it with
``promtool tsdb create-blocks-from openmetrics FILE DIR`` (tests/integration, bench/).
The whole text is built in memory (metric families must not interleave): for small sites.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

SHAPES = ("servicemonitor", "plain")
_MIB = 1 << 20
EXPORTER_NAMESPACE = "gpu-operator"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(d: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in d.items()) + "}"


def write_openmetrics(
    records: Iterable[dict[str, Any]],
    out: TextIO,
    *,
    namespaces: Mapping[str, str],
    shape_of: Callable[[str], str] = lambda node: "plain",
    host_label_of: Callable[[str], str] = lambda node: "Hostname",
) -> int:
    """Write Trace v1 records (``node`` and ``sample`` dicts) as OpenMetrics; returns samples written."""
    devices: dict[str, dict[int, dict[str, Any]]] = {}
    families: dict[str, dict[str, list[str]]] = {
        m: {}
        for m in (
            "DCGM_FI_DEV_GPU_UTIL",
            "DCGM_FI_DEV_POWER_USAGE",
            "DCGM_FI_DEV_FB_USED",
            "DCGM_FI_DEV_FB_FREE",
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        )
    }
    written = 0
    for rec in records:
        node = rec["node"]
        if rec["type"] == "node":
            devices[node] = {g["index"]: g for g in rec["gpus"]}
            continue
        shape = shape_of(node)
        if shape not in SHAPES:
            raise ValueError(f"shape {shape!r} is not one of {SHAPES}")
        t = rec["t"]
        for g in rec["gpus"]:
            dev = devices[node][g["index"]]
            base = {
                "gpu": str(g["index"]),
                "UUID": dev["uuid"],
                "pci_bus_id": f"00000000:{0x18 + g['index']:02X}:00.0",
                "device": f"nvidia{g['index']}",
                "modelName": dev["model"],
                host_label_of(node): node,
                "DCGM_FI_DRIVER_VERSION": "550.90.07",
            }
            if shape == "servicemonitor":
                base |= {
                    "namespace": EXPORTER_NAMESPACE,
                    "pod": f"nvidia-dcgm-exporter-{node[-5:]}",
                    "container": "nvidia-dcgm-exporter",
                }
            procs = g.get("procs") or []
            if procs:
                p = procs[0]
                ns = namespaces[p["tenant"]]
                prefix = "exported_" if shape == "servicemonitor" else ""
                base |= {f"{prefix}namespace": ns, f"{prefix}pod": p["workload"], f"{prefix}container": "main"}
            key = _labels(base)
            mem_total = dev.get("mem_total_bytes")
            values = {
                "DCGM_FI_DEV_GPU_UTIL": None if g.get("util_pct") is None else str(round(g["util_pct"])),
                "DCGM_FI_DEV_POWER_USAGE": None if g.get("power_w") is None else f"{g['power_w']:.3f}",
                "DCGM_FI_DEV_FB_USED": None if g.get("mem_used_bytes") is None else str(g["mem_used_bytes"] // _MIB),
                "DCGM_FI_DEV_FB_FREE": None
                if g.get("mem_used_bytes") is None or mem_total is None
                else str((mem_total - g["mem_used_bytes"]) // _MIB),
                "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": None if g.get("energy_mj") is None else str(g["energy_mj"]),
            }
            for metric, v in values.items():
                if v is not None:
                    families[metric].setdefault(key, []).append(f"{metric}{key} {v} {t:.3f}\n")
                    written += 1
    for metric, series in families.items():
        out.write(f"# TYPE {metric} gauge\n")
        for lines in series.values():
            out.writelines(lines)
    out.write("# EOF\n")
    return written


def write_openmetrics_file(path: Path, records: Iterable[dict[str, Any]], **kw: Any) -> int:
    with path.open("w", encoding="utf-8") as fh:
        return write_openmetrics(records, fh, **kw)
