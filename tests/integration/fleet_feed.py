"""A small simulated fleet fed through real agent code to a real collector.

Shared by the golden /metrics test and the Prometheus/Grafana test: the demo site in
miniature (12 training nodes of the opaque tenant, 4 inference, 4 Slurm), one node whose
busy GPUs no tenant rule claims and that goes dark after 15 minutes, and one node whose
chain is broken and forked on purpose (a gap, a wrong ``prev``, an equivocation and a
replayed duplicate), each sent over a real gRPC stream and signed by a real key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc
import msgspec

from agent.replay import ReplayStats, TokenPool, replay
from agent.stream import enroll
from attestation import dsse
from attestation.keys import Ed25519Signer
from attestation.statement import Chain, GpuWindow, UsageWindow, Workload, statement_bytes
from attestation.v1 import collector_pb2 as pb
from attestation.v1 import collector_pb2_grpc as pb_grpc
from attestation.wire import envelope_to_proto
from core.pipeline import windows_from_records
from core.sim.scenarios import DEMO_START_S, H100_LIMIT_W, H100_MEM_BYTES, H100_SXM, demo_site
from core.trace import parse_lines

SHADOW_NODE = "kl1-shadow"  # unattributed GPU use; stops reporting after SHADOW_MINUTES
SHADOW_MINUTES = 15
SHADOW_BUSY_GPUS = 2
TAMPER_NODE = "kl1-tamper"  # a broken and forked chain
TAMPER_TENANT = "t-uni-cs"
SITE_NODES = 12 + 4 + 4


def _shadow_records() -> list[dict[str, Any]]:
    gpus = [
        {
            "index": i,
            "uuid": f"GPU-5ad0{i:028x}",
            "serial": f"16500000000{i:02d}",
            "model": H100_SXM,
            "mem_total_bytes": H100_MEM_BYTES,
            "power_limit_w": H100_LIMIT_W,
        }
        for i in range(8)
    ]
    out: list[dict[str, Any]] = [{"type": "node", "node": SHADOW_NODE, "gpus": gpus}]
    energy = [10**9] * 8
    for k in range(SHADOW_MINUTES * 3):
        sample = []
        for i in range(8):
            busy = i < SHADOW_BUSY_GPUS
            power = 500.0 if busy else 70.0
            energy[i] += int(power * 20 * 1000)
            sample.append(
                {
                    "index": i,
                    "util_pct": 90.0 if busy else 0.0,
                    "mem_used_bytes": 40_000_000_000 if busy else 0,
                    "power_w": power,
                    "energy_mj": energy[i],
                    # No "tenant": the process matched no tenant rule.
                    "procs": [{"pid": 7000 + i, "mem_bytes": 40_000_000_000}] if busy else [],
                }
            )
        out.append({"type": "sample", "t": DEMO_START_S + 20.0 * k + 0.5, "node": SHADOW_NODE, "gpus": sample})
    return out


def site_windows() -> list[UsageWindow]:
    """The site's windows exactly as the agents' windowing code produces them."""
    records = list(
        demo_site(seed=3, hours=0.6, sample_interval_s=20, training_nodes=12, inference_nodes=4, slurm_nodes=4)
    )
    shadow = _shadow_records()
    nodes = [r for r in records if r["type"] == "node"] + shadow[:1]
    samples = sorted([r for r in records if r["type"] == "sample"] + shadow[1:], key=lambda r: float(r["t"]))
    lines = [json.dumps({"format": "gpuaudit-trace", "version": 1})] + [json.dumps(r) for r in nodes + samples]
    return list(windows_from_records(parse_lines(lines)))


def tamper_window(i: int) -> UsageWindow:
    start = DEMO_START_S * 1000 + i * 60_000
    gpu = GpuWindow(
        index=0,
        uuid="GPU-7a3e0000000000000000000000000000",
        serial="1650999999999",
        model=H100_SXM,
        mem_total_bytes=H100_MEM_BYTES,
        power_limit_mw=700_000,
        samples=60,
        energy_start_mj=i * 18_000_000,
        energy_end_mj=(i + 1) * 18_000_000,
        power_mean_mw=300_000,
        power_max_mw=350_000,
        util_mean_permille=500,
        mem_used_max_bytes=10_000_000_000,
        workloads=(Workload(TAMPER_TENANT, "slurm_job", "slurm-1", 1, 10_000_000_000, 1000, 60_000),),
    )
    return UsageWindow(TAMPER_NODE, "boot-1", "0.1.0", start, start + 60_000, 1000, Chain("", 0, None), (gpu,))


def _signed(signer: Ed25519Signer, w: UsageWindow, seq: int, prev: str | None) -> dsse.Envelope:
    return dsse.sign(statement_bytes(msgspec.structs.replace(w, chain=Chain(signer.key_id, seq, prev))), signer)


@dataclass
class Fed:
    stats: ReplayStats
    windows: list[UsageWindow]  # every window accepted (site and tamper node)
    tamper_replies: list[tuple[str, Any]]


async def feed(address: str, tokens: list[str]) -> Fed:
    """Replay the site, then the tamper node's broken chain; return what was accepted."""
    windows = site_windows()
    async with grpc.aio.insecure_channel(address) as ch:
        stats = await replay(iter(windows), ch, TokenPool(tokens[:-1]))
        signer = Ed25519Signer.generate()
        await enroll(ch, TAMPER_NODE, signer, tokens[-1])
        w = [tamper_window(i) for i in range(4)]
        e0 = _signed(signer, w[0], 0, None)
        e1 = _signed(signer, w[1], 1, e0.digest())
        e1_fork = _signed(signer, msgspec.structs.replace(w[1], boot_id="boot-2"), 1, e0.digest())
        e2_bad_prev = _signed(signer, w[2], 2, e0.digest())
        e2 = _signed(signer, w[2], 2, e1.digest())
        e3 = _signed(signer, w[3], 3, e2.digest())
        sent = [e0, e1, e3, e2_bad_prev, e1_fork, e1, e2]
        call = pb_grpc.CollectorStub(ch).Stream()
        await call.write(pb.StreamRequest(hello=pb.Hello(node_id=TAMPER_NODE, key_id=signer.key_id)))
        await call.read()  # Resume
        replies: list[tuple[str, Any]] = []
        for env in sent:
            await call.write(pb.StreamRequest(envelope=envelope_to_proto(env)))
            r = await call.read()
            replies.append(("ack", r.ack.seq) if r.HasField("ack") else ("reject", r.reject.reason))
        await call.done_writing()
    accepted_tamper = [w[0], w[1], w[2]]
    return Fed(stats, windows + accepted_tamper, replies)


EXPECTED_TAMPER_REPLIES = [
    ("ack", 0),
    ("ack", 1),
    ("reject", "seq_gap"),  # seq 2 skipped
    ("reject", "prev_mismatch"),  # seq 2 that does not link to seq 1
    ("reject", "equivocation"),  # a second, different statement for seq 1
    ("ack", 1),  # the same seq 1 again: a duplicate, acknowledged
    ("ack", 2),
]
