"""Serialisation: a ``UsageWindow`` as the in-toto Statement v1 bytes that get signed.

Agents sign exactly these bytes (compact ``json.dumps``, ASCII); readers parse them with
attestation.statement.parse and never re-serialise to check a signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from attestation.statement.records import (
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    GpuWindow,
    Mig,
    UsageWindow,
    Workload,
)


def _workload_json(w: Workload) -> dict[str, Any]:
    return {
        "tenant": w.tenant,
        "kind": w.kind,
        "workload": w.workload,
        "processes": w.processes,
        "mem_max_bytes": w.mem_max_bytes,
        "share_permille": w.share_permille,
        "gpu_ms": w.gpu_ms,
    }


def _gpu_json(g: GpuWindow) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": g.index,
        "uuid": g.uuid,
        "serial": g.serial,
        "model": g.model,
        "mem_total_bytes": g.mem_total_bytes,
        "power_limit_mw": g.power_limit_mw,
        "samples": g.samples,
        "energy_start_mj": g.energy_start_mj,
        "energy_end_mj": g.energy_end_mj,
        "power_mean_mw": g.power_mean_mw,
        "power_max_mw": g.power_max_mw,
        "util_mean_permille": g.util_mean_permille,
        "mem_used_max_bytes": g.mem_used_max_bytes,
        "sm_active_mean_permille": g.sm_active_mean_permille,
        "tensor_active_mean_permille": g.tensor_active_mean_permille,
        "nvlink_tx_bytes": g.nvlink_tx_bytes,
        "nvlink_rx_bytes": g.nvlink_rx_bytes,
        "pcie_tx_bytes": g.pcie_tx_bytes,
        "pcie_rx_bytes": g.pcie_rx_bytes,
        "series": None
        if g.series is None
        else {
            "bucket_ms": g.series.bucket_ms,
            "util_permille": list(g.series.util_permille),
            "power_mw": list(g.series.power_mw),
        },
        "split_method": g.split_method,
        "workloads": [_workload_json(w) for w in g.workloads],
        "unavailable": dict(sorted(g.unavailable.items())),
        "events": [{"kind": e.kind, "detail": e.detail} for e in g.events],
    }
    if g.identity:
        out["identity"] = dict(sorted(g.identity.items()))
    if g.health:
        out["health"] = dict(sorted(g.health.items()))
    if g.mem_reserved_bytes is not None:
        out["mem_reserved_bytes"] = g.mem_reserved_bytes
    if g.sharing is not None:
        out["sharing"] = g.sharing
    if g.mig is not None:
        out["mig"] = _mig_json(g.mig)
    return out


def _mig_json(m: Mig) -> dict[str, Any]:
    return {
        "slices_total": m.slices_total,
        "instances": [
            {
                "gpu_instance_id": x.gpu_instance_id,
                "compute_instance_id": x.compute_instance_id,
                "uuid": x.uuid,
                "slices": x.slices,
                "samples": x.samples,
                "mem_total_bytes": x.mem_total_bytes,
                "mem_used_max_bytes": x.mem_used_max_bytes,
                "sm_active_mean_permille": x.sm_active_mean_permille,
                "tensor_active_mean_permille": x.tensor_active_mean_permille,
                "processes": x.processes,
                "workloads": [{"tenant": t, "kind": k, "workload": w} for t, k, w in x.workloads],
                "unavailable": dict(sorted(x.unavailable.items())),
            }
            for x in m.instances
        ],
        "unavailable": dict(sorted(m.unavailable.items())),
    }


def predicate_json(p: UsageWindow) -> dict[str, Any]:
    out = _predicate_core_json(p)
    if p.log_checkpoint is not None:
        c = p.log_checkpoint
        out["log_checkpoint"] = {"origin": c.origin, "size": c.size, "root_sha256": c.root_sha256}
    if p.key_assurance is not None:
        out["key_assurance"] = p.key_assurance
    if p.dropped is not None:
        d = p.dropped
        out["dropped"] = {
            "from_seq": d.from_seq,
            "to_seq": d.to_seq,
            "count": d.count,
            "reason": d.reason,
            "last_digest": d.last_digest,
        }
    ch = p.chain
    if ch.epoch or ch.prev_key_id is not None:
        out["chain"]["epoch"] = ch.epoch
        out["chain"]["prev_key_id"] = ch.prev_key_id
        out["chain"]["prev_key_digest"] = ch.prev_key_digest
    if p.rotation is not None:
        r = p.rotation
        out["rotation"] = {
            "new_key_id": r.new_key_id,
            "new_key_spki": base64.b64encode(r.new_key_spki).decode("ascii"),
            "new_key_assurance": r.new_key_assurance,
        }
    return out


def _predicate_core_json(p: UsageWindow) -> dict[str, Any]:
    return {
        "node": {"id": p.node_id, "boot_id": p.boot_id, "agent_version": p.agent_version},
        "window": {"start_ms": p.start_ms, "end_ms": p.end_ms, "sample_interval_ms": p.sample_interval_ms},
        "chain": {"key_id": p.chain.key_id, "seq": p.chain.seq, "prev": p.chain.prev},
        "gpus": [_gpu_json(g) for g in p.gpus],
        "node_io": None
        if p.node_io is None
        else {
            "ib_tx_bytes": p.node_io.ib_tx_bytes,
            "ib_rx_bytes": p.node_io.ib_rx_bytes,
            "net_tx_bytes": p.node_io.net_tx_bytes,
            "net_rx_bytes": p.node_io.net_rx_bytes,
            "disk_read_bytes": p.node_io.disk_read_bytes,
            "disk_write_bytes": p.node_io.disk_write_bytes,
        },
        "unavailable": dict(sorted(p.unavailable.items())),
        "events": [{"kind": e.kind, "detail": e.detail} for e in p.events],
    }


def subject_for(g: GpuWindow) -> dict[str, Any]:
    """One in-toto subject per GPU: named by serial (or UUID), digest of the UUID."""
    name = f"nvidia-gpu:{g.serial}" if g.serial else f"nvidia-gpu-uuid:{g.uuid}"
    return {"name": name, "digest": {"sha256": hashlib.sha256(g.uuid.encode()).hexdigest()}}


def statement_bytes(p: UsageWindow) -> bytes:
    """The in-toto Statement v1 around ``p``, as the bytes that get signed."""
    subjects = [subject_for(g) for g in p.gpus]
    if not subjects:
        # in-toto requires at least one subject; a node with no GPU readable names itself.
        subjects = [{"name": f"node:{p.node_id}", "digest": {"sha256": hashlib.sha256(p.node_id.encode()).hexdigest()}}]
    stmt = {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate_json(p),
    }
    return json.dumps(stmt, separators=(",", ":")).encode("utf-8")
