"""Which dcgm-exporter labels hold the host, the GPU and the workload (``--label-map``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError

CANONICAL_LABELS = ("host", "uuid", "gpu", "model", "pci_bus_id", "namespace", "pod", "container", "hpc_job")


@dataclass(frozen=True)
class LabelMap:
    """Which labels hold what, in order of preference. ``k8s``: (namespace, pod, container)
    spellings, tried in order; ``exported``: the first set is Prometheus's renaming of the
    workload's labels, and the plain set is then the exporter's own."""

    host: tuple[str, ...] = ("Hostname", "hostname")
    uuid: tuple[str, ...] = ("UUID",)
    gpu: tuple[str, ...] = ("gpu",)
    model: tuple[str, ...] = ("modelName",)
    pci_bus_id: tuple[str, ...] = ("pci_bus_id",)
    hpc_job: tuple[str, ...] = ("hpc_job",)
    k8s: tuple[tuple[str, str, str], ...] = (
        ("exported_namespace", "exported_pod", "exported_container"),
        ("namespace", "pod", "container"),
        ("pod_namespace", "pod_name", "container_name"),
    )
    exported: bool = True

    @classmethod
    def parse(cls, items: Sequence[str]) -> LabelMap:
        """From ``--label-map NAME=LABEL`` items (NAME one of ``CANONICAL_LABELS``)."""
        given: dict[str, str] = {}
        for item in items:
            for part in item.split(","):
                name, sep, label = part.partition("=")
                name, label = name.strip(), label.strip()
                if not sep or name not in CANONICAL_LABELS or not label:
                    raise ConfigError(
                        f"--label-map {part!r}: expected NAME=LABEL, NAME one of {', '.join(CANONICAL_LABELS)}"
                    )
                if name in given:
                    raise ConfigError(f"--label-map: {name} given twice")
                given[name] = label
        kw: dict[str, Any] = {}
        for name in ("host", "uuid", "gpu", "model", "pci_bus_id", "hpc_job"):
            if name in given:
                kw[name] = (given[name],)
        if any(n in given for n in ("namespace", "pod", "container")):
            kw["k8s"] = (
                (given.get("namespace", "namespace"), given.get("pod", "pod"), given.get("container", "container")),
            )
            kw["exported"] = False
        return cls(**kw)

    def selector_labels(self) -> tuple[str, ...]:
        return self.host


def _first(labels: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for n in names:
        v = labels.get(n)
        if v:
            return v
    return None


__all__ = ["CANONICAL_LABELS", "LabelMap"]
