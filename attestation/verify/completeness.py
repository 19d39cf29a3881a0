"""Step 9: completeness. The checkpoint's committed heads (attestation.heads) against the
bundle's chains (9a); per key, whether the bundle proves its start and its end in the
exported period (9b); coverage of the period per serial and per node, every gap with its
length and cause (attestation.coverage), and summaries per tenant (9c).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from attestation.checkpoint import Checkpoint
from attestation.coverage import Coverage, coverage
from attestation.errors import CheckpointError
from attestation.heads import HeadsCommitment, KeyHead, heads_root, parse_heads_extension
from attestation.statement import UNATTRIBUTED
from attestation.verify.bundle import BundleError, as_count, as_obj, as_str, shown
from attestation.verify.report import NodeSummary, Report, SerialSummary, TenantSummary
from attestation.verify.signatures import EnrolledKey, VerifiedStatement
from attestation.verify.usage import UsageTally

NO_HEADS_NOTE = (
    "completeness not proven: no committed heads (the bundle's checkpoint predates them): statements after "
    "the last one of each node, and nodes left out entirely, would not show"
)


def verify_heads(
    raw: Any,
    checkpoint: Checkpoint | None,
    by_key: dict[str, list[VerifiedStatement]],
    nodes: dict[str, EnrolledKey],
    report: Report,
) -> dict[str, KeyHead] | None:
    """9a. The checkpoint's heads line (attestation/heads.py) and the bundle's ``heads``
    list, which must hash to it. Returns the heads by key id; None when the checkpoint
    commits to none (an older collector) or could not be verified."""
    if checkpoint is None:
        report.completeness_notes.append("completeness not checked: the checkpoint did not verify")
        return None
    try:
        commitment = parse_heads_extension(checkpoint.extensions)
    except CheckpointError as exc:
        report.fail("completeness", "bad_heads", str(exc))
        return None
    if commitment is None:
        report.completeness_notes.append(NO_HEADS_NOTE)
        return None
    report.heads = commitment
    if raw is None:
        report.fail(
            "completeness",
            "missing_heads",
            f"the checkpoint commits to the heads of {commitment.count} keys, but the bundle does not carry them: "
            "what it leaves out cannot be checked",
        )
        return None
    out: dict[str, KeyHead] = {}
    try:
        if not isinstance(raw, list):
            raise BundleError("heads: expected a list")
        for j, item in enumerate(raw):
            o = as_obj(item, f"heads[{j}]")
            serials = o.get("serials")
            if not isinstance(serials, list) or not all(isinstance(x, str) for x in serials):
                raise BundleError(f"heads[{j}].serials: expected a list of strings")
            h = KeyHead(
                key_id=as_str(o.get("key_id"), f"heads[{j}].key_id"),
                node_id=as_str(o.get("node_id"), f"heads[{j}].node_id"),
                seq=as_count(o.get("seq"), f"heads[{j}].seq"),
                leaf_index=as_count(o.get("leaf_index"), f"heads[{j}].leaf_index"),
                digest=as_str(o.get("digest"), f"heads[{j}].digest"),
                end_ms=as_count(o.get("end_ms"), f"heads[{j}].end_ms"),
                serials=tuple(serials),
            )
            if h.key_id in out:
                raise BundleError(f"heads[{j}]: key {shown(h.key_id)} has two heads")
            out[h.key_id] = h
    except BundleError as exc:
        report.fail("completeness", "bad_heads", f"the bundle's heads are malformed: {exc}")
        return None
    if len(out) != commitment.count or heads_root(out.values()) != commitment.root:
        report.fail(
            "completeness",
            "bad_heads",
            f"the bundle's {len(out)} heads are not the {commitment.count} the checkpoint commits to: "
            "they were altered, or some were left out",
        )
        return None
    for h in out.values():
        if h.leaf_index >= checkpoint.size:
            report.fail(
                "completeness",
                "bad_heads",
                f"the committed head of key {h.key_id} is leaf {h.leaf_index}, beyond the checkpoint's "
                f"{checkpoint.size} leaves",
                key_id=h.key_id,
            )
    for key_id, chain in by_key.items():
        found = out.get(key_id)
        last = max(chain, key=lambda s: s.window.chain.seq)
        if found is None:
            report.fail(
                "completeness",
                "bad_heads",
                "the checkpoint commits no head for this key, though its statements are in the log",
                key_id=key_id,
            )
            continue
        h = found
        node = nodes.get(key_id)
        if node is not None and h.node_id != node.node_id:
            report.fail(
                "completeness",
                "bad_heads",
                f"the committed head names node {shown(h.node_id)}; the key is enrolled for {node.node_id!r}",
                key_id=key_id,
            )
        if last.window.chain.seq > h.seq:
            report.fail(
                "completeness",
                "bad_heads",
                f"the checkpoint commits seq {h.seq} as the key's latest, but seq {last.window.chain.seq} is in the "
                "log at that checkpoint: the collector signed false heads",
                entry=last.entry,
                key_id=key_id,
                seq=last.window.chain.seq,
            )
            continue
        same = next((s for s in chain if s.window.chain.seq == h.seq), None)
        if same is not None:
            w = same.window
            serials = tuple(sorted({g.serial for g in w.gpus if g.serial}))
            if (same.digest, same.leaf_index, w.end_ms, serials) != (h.digest, h.leaf_index, h.end_ms, h.serials):
                report.fail(
                    "completeness",
                    "bad_heads",
                    f"the committed head (seq {h.seq}) does not describe the statement the bundle holds for it "
                    "(digest, leaf index, window end or serials differ)",
                    entry=same.entry,
                    key_id=key_id,
                    seq=h.seq,
                )
    return out


@dataclass
class _KeyCover:
    node_id: str
    windows: list[tuple[int, int]]
    dropped: list[tuple[int, int]]
    missing: list[tuple[int, int]]
    start_proven: bool
    end_proven: bool


def _period(doc: dict[str, Any], by_key: dict[str, list[VerifiedStatement]], heads: HeadsCommitment | None,
            report: Report) -> tuple[int, int] | None:  # fmt: skip
    """The period the bundle was exported for (``selection.since_ms``/``until_ms``; without
    them, from the first window, or to the last window: whether anything came after it is
    the end's ``proven``)."""
    sel = report.selection if isinstance(report.selection, dict) else {}
    since, until = sel.get("since_ms"), sel.get("until_ms")
    since = since if type(since) is int and since >= 0 else None
    until = until if type(until) is int and until >= 0 else None
    starts = [s.window.start_ms for c in by_key.values() for s in c]
    ends = [s.window.end_ms for c in by_key.values() for s in c]
    p0 = since if since is not None else (min(starts) if starts else None)
    p1 = until if until is not None else (max(ends) if ends else None)
    if heads is not None and until is not None and until > heads.signed_ms:
        p1 = heads.signed_ms
        report.completeness_notes.append(
            f"the period ends after the checkpoint was signed ({_time_text(heads.signed_ms)}): "
            "coverage is counted up to the checkpoint"
        )
    if until is None and p1 is not None:
        report.completeness_notes.append(
            f"no end of period stated: coverage is counted up to the last window ({_time_text(p1)})"
        )
    if p0 is None or p1 is None or p1 <= p0:
        return None
    return p0, p1


def _time_text(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_completeness(
    doc: dict[str, Any],
    by_key: dict[str, list[VerifiedStatement]],
    missing: dict[str, list[tuple[int, int]]],
    heads: dict[str, KeyHead] | None,
    report: Report,
    usage: UsageTally,
) -> None:
    """9b. Per key: does the bundle prove its start and its end in the period (module
    attestation.coverage)? A key's tail left out is ``tail_missing``; a key the heads show
    active in the period and relevant to the selection, absent from the bundle, is
    ``missing_key``. 9c. Coverage per serial and per node; summaries per tenant."""
    period = _period(doc, by_key, report.heads, report)
    report.period = period
    sel = report.selection if isinstance(report.selection, dict) else {}
    requested = [x for x in sel.get("serials") or [] if isinstance(x, str)]
    sel_nodes = {x for x in sel.get("nodes") or [] if isinstance(x, str)}
    sel_all = sel.get("all") is True
    until = sel.get("until_ms") if type(sel.get("until_ms")) is int else None
    report.missing_serials = sorted(set(requested) - set(report.gpus))
    covers: dict[str, _KeyCover] = {}
    explained: dict[str, list[tuple[int, int]]] = {}
    for g in report.explained_gaps:
        if isinstance(g.get("start_ms"), int) and isinstance(g.get("end_ms"), int):
            explained.setdefault(g["key_id"], []).append((g["start_ms"], g["end_ms"]))
    for key_id, chain in by_key.items():
        ordered = sorted(chain, key=lambda s: s.window.chain.seq)
        first, last = ordered[0], ordered[-1]
        fc = first.window.chain
        start_proven = fc.seq == 0 or (period is not None and first.window.start_ms <= period[0])
        end_proven = False
        h = heads.get(key_id) if heads is not None else None
        if h is not None:
            lc = last.window.chain
            if lc.seq == h.seq and last.digest == h.digest:
                end_proven = True
            elif lc.seq < h.seq:
                if until is not None and last.window.start_ms >= until:
                    end_proven = True  # the first statement after the period: nothing in it was left out
                else:
                    report.fail(
                        "completeness",
                        "tail_missing",
                        f"the bundle stops at seq {lc.seq} (window ending {_time_text(last.window.end_ms)}), but the "
                        f"checkpoint commits seq {h.seq} (ending {_time_text(h.end_ms)}) as the key's latest: "
                        f"statements {lc.seq + 1}..{h.seq} of node {h.node_id!r} were left out",
                        key_id=key_id,
                        seq=lc.seq,
                    )
        covers[key_id] = _KeyCover(
            node_id=first.window.node_id,
            windows=[(s.window.start_ms, s.window.end_ms) for s in ordered],
            dropped=explained.get(key_id, []),
            missing=missing.get(key_id, []),
            start_proven=start_proven,
            end_proven=end_proven,
        )
    absent_nodes: dict[str, list[KeyHead]] = {}
    if heads is not None:
        for h in heads.values():
            if h.key_id in by_key:
                continue
            relevant = sel_all or h.node_id in sel_nodes or bool(set(h.serials) & set(requested))
            if not relevant:
                continue
            if period is not None and h.end_ms > period[0]:
                report.fail(
                    "completeness",
                    "missing_key",
                    f"node {h.node_id!r} signed statements up to {_time_text(h.end_ms)} (seq {h.seq}, committed at "
                    "the checkpoint), but the bundle holds none of them though the selection includes it",
                    key_id=h.key_id,
                )
            else:
                absent_nodes.setdefault(h.node_id, []).append(h)

    # Problems per key: every failure that names a key or an entry of one.
    entry_key = {s.entry: s.key_id for chain in by_key.values() for s in chain}
    problems: dict[str, int] = {}
    for f in report.failures:
        k = f.key_id if f.key_id is not None else entry_key.get(f.entry) if f.entry is not None else None
        if k is not None:
            problems[k] = problems.get(k, 0) + 1

    def merged_cover(keys: list[str], windows: list[tuple[int, int]], absent: bool) -> Coverage | None:
        if period is None:
            return None
        kc = [covers[k] for k in keys if k in covers]
        causes = {
            "dropped": [iv for c in kc for iv in c.dropped],
            "missing": [iv for c in kc for iv in c.missing],
            "absent": [iv for c in kc for iv in c.windows] if absent else [],
        }
        return coverage(
            windows,
            period,
            causes,
            start_proven=bool(kc) and all(c.start_proven for c in kc),
            end_proven=bool(kc) and all(c.end_proven for c in kc),
        )

    for serial, gpu in report.gpus.items():
        keys = sorted(gpu.key_ids)
        report.serials[serial] = SerialSummary(
            serial=serial,
            nodes=sorted(gpu.node_ids),
            gpu_ms=gpu.gpu_ms,
            energy_mj=gpu.energy_mj,
            coverage=merged_cover(keys, gpu.windows, absent=True),
            problems=sum(problems.get(k, 0) for k in keys),
        )
    for serial in report.missing_serials:
        cov = None
        if period is not None:
            cov = coverage([], period, {}, start_proven=heads is not None, end_proven=heads is not None)
        report.serials[serial] = SerialSummary(serial, [], 0, 0, cov, 0)
    node_keys: dict[str, list[str]] = {}
    for key_id, c in covers.items():
        node_keys.setdefault(c.node_id, []).append(key_id)
    for node_id, keys in node_keys.items():
        windows = [iv for k in keys for iv in covers[k].windows]
        report.nodes[node_id] = NodeSummary(
            node_id, sorted(keys), merged_cover(keys, windows, absent=False), sum(problems.get(k, 0) for k in keys)
        )
    for node_id, hs in absent_nodes.items():
        if node_id in report.nodes:
            continue
        cov = None
        if period is not None:  # the heads prove it was silent: its last statement ended before the period
            cov = coverage([], period, {}, start_proven=True, end_proven=True)
        report.nodes[node_id] = NodeSummary(node_id, sorted(h.key_id for h in hs), cov, 0, in_bundle=False)

    # Tenants: usage from the GPUs, coverage of the serials they used, problems of their nodes' keys.
    for serial, gpu in report.gpus.items():
        summary = report.serials[serial]
        for tenant, u in gpu.tenants.items():
            t = report.tenants.setdefault(tenant, TenantSummary(tenant))
            t.gpu_ms += u.gpu_ms
            t.energy_mj += u.energy_mj
            if tenant == UNATTRIBUTED or u.gpu_ms == 0:
                continue
            t.serials.add(serial)
            t.nodes.update(gpu.node_ids)
            if summary.coverage is not None:
                t.covered_ms += summary.coverage.covered_ms
                t.period_ms += summary.coverage.period_ms
    for key_id, tenants in usage.key_tenants.items():
        for tenant in tenants:
            if tenant in report.tenants:
                report.tenants[tenant].problems += problems.get(key_id, 0)
    if heads is not None:
        report.completeness_notes.append(
            f"the checkpoint commits the latest statement of each of {len(heads)} keys at "
            f"{_time_text(report.heads.signed_ms if report.heads else 0)}: a node's statements after the last one "
            "shown, or a selected node left out, would fail"
        )
    if sel.get("tenant") and not (sel_all or sel_nodes or requested):
        report.completeness_notes.append(
            "a tenant selection cannot prove that no other node ran the tenant: ask for --all, --node or --serial "
            "bundles to check that"
        )
