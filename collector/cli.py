"""gpuaudit-collector: the collector's command line.

Exit codes (attestation/exitcodes.py, the same for every gpuaudit command): 0 ok; 1 the
answer is no (findings with ``--fail-on-findings``, a log audit that does not match, a
finding or key that is not there); 2 usage or configuration; 3 environment (a file or
folder missing, a port in use, Prometheus or the store unreachable); 4 unexpected error;
130 interrupted. Every error is one ``error:`` line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import os
import signal
import sys
import typing
from pathlib import Path
from typing import Any

from agent import __version__
from agent.configfile import ConfigError
from attestation import exitcodes
from attestation.exitcodes import CliError, unavailable, usage

_logger = logging.getLogger(__name__)


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def detect_config_from_table(table: dict[str, Any]) -> Any:
    """DetectConfig from the config file's ``[detect]`` table (``[detect.opacity]`` and
    ``[detect.end_use]`` nested)."""
    from collector.detect.config import DetectConfig
    from collector.detect.enduse import EndUseConfig
    from collector.detect.opacity import OpacityConfig

    def build(cls: Any, t: dict[str, Any], where: str) -> Any:
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for k, v in t.items():
            if k not in fields:
                raise ConfigError(f"{where}: unknown key {k!r}")
            typ = hints[k]
            if typ in (OpacityConfig, EndUseConfig):
                if not isinstance(v, dict):
                    raise ConfigError(f"{where}.{k}: expected a table")
                kwargs[k] = build(typ, v, f"{where}.{k}")
            elif typ is str and isinstance(v, str):
                kwargs[k] = v
            elif typ is float and isinstance(v, (int, float)) and not isinstance(v, bool):
                kwargs[k] = float(v)
            elif typ is int and isinstance(v, int) and not isinstance(v, bool):
                kwargs[k] = v
            elif typing.get_origin(typ) is tuple and isinstance(v, list) and all(isinstance(x, str) for x in v):
                kwargs[k] = tuple(v)
            else:
                raise ConfigError(f"{where}.{k}: expected {typ}, got {v!r}")
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    return build(DetectConfig, table, "detect")


def _tenants(path: Path | None) -> Any:
    from collector.tenants import TenantDirectory

    return TenantDirectory.load(path) if path is not None else TenantDirectory()


def _screening(cfg: Any) -> Any:
    """The configured screening list (``screening_list``, ``--screening-list``), or None; a list
    older than ``screening_max_age_days`` is a warning."""
    if cfg.screening_list is None:
        return None
    from datetime import UTC, datetime

    from collector.screening import ScreeningSource

    source = ScreeningSource(cfg.screening_list, max_age_days=cfg.screening_max_age_days)
    warning = source.staleness(datetime.now(UTC).date())
    if warning:
        _logger.warning("%s", warning)
    return source


def _screened(directory: Any, cfg: Any) -> Any:
    """``directory`` screened against the configured list."""
    source = _screening(cfg)
    return directory if source is None else directory.with_screening(source)


def _site_tenants(cfg: Any, directory: Any = None) -> Any:
    """The tenants file (or ``directory``, read from it already), each tenant also under its
    pseudonym (statements name pseudonyms)."""
    from collector.pseudonyms import key_path, load_or_create_key, with_pseudonyms

    directory = _tenants(cfg.tenants) if directory is None else directory
    return with_pseudonyms(directory, load_or_create_key(key_path(cfg.db)))


def _check_out(path: Path, flag: str = "--out") -> None:
    """Before a command reads or writes anything: the file ``path`` can be written."""
    folder = path.parent
    if path.is_dir():
        raise usage(f"{flag} {path} is a folder: give a file name in it")
    if not folder.is_dir():
        raise unavailable(f"{flag} {path}: the folder {folder} does not exist; create it first (mkdir -p {folder})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise unavailable(f"{flag} {path}: cannot write in {folder} (permission denied)")


def _cmd_tenant(ns: argparse.Namespace) -> int:
    """``tenant pseudonym ID...`` and ``tenant reveal PSEUDONYM --reason TEXT``."""
    import getpass
    import time

    from collector.pseudonyms import is_pseudonym, key_path, load_or_create_key, pseudonym, reveal

    cfg, _ = _load(ns)
    key = load_or_create_key(key_path(cfg.db))
    if ns.tenant_cmd == "pseudonym":
        for tenant_id in ns.tenant_id:
            print(f"{tenant_id}\t{pseudonym(key, tenant_id)}")
        return 0
    if not is_pseudonym(ns.pseudonym):
        print(f"error: {ns.pseudonym!r} is not a pseudonym (tp- and 16 hex digits)", file=sys.stderr)
        return 2
    if not ns.reason.strip():
        print("error: --reason must say why the identity is needed", file=sys.stderr)
        return 2
    candidates = [t.id for t in _tenants(cfg.tenants)]
    found = reveal(key, ns.pseudonym, candidates)
    operator = os.environ.get("SUDO_USER") or getpass.getuser()
    store = _open_store(cfg)
    try:
        store.record_reveal(time.time_ns() // 1_000_000, ns.pseudonym, found, operator, ns.reason)
    finally:
        store.close()
    _logger.warning(
        "operator %s revealed pseudonym %s (%s); reason: %s", operator, ns.pseudonym, found or "no match", ns.reason
    )
    if found is None:
        print(f"no tenant in the tenants file has pseudonym {ns.pseudonym} (the attempt is recorded)", file=sys.stderr)
        return 1
    print(found)
    return 0


def _load(ns: argparse.Namespace) -> tuple[Any, Any]:
    from collector.config import load_collector_config

    keys = ("listen", "db", "metrics_listen", "tenants", "collector_id", "screening_list")
    overrides = {k: getattr(ns, k, None) for k in keys}
    db = overrides.get("db")
    if isinstance(db, str):  # --db takes a SQLite path or a PostgreSQL URL
        if db.startswith(("postgresql://", "postgres://")):
            overrides["db"], overrides["db_url"] = None, db
        else:
            overrides["db"] = Path(db)
    if getattr(ns, "insecure", False):
        overrides["insecure"] = True
    cfg, detect_table = load_collector_config(getattr(ns, "config", None), os.environ, overrides)
    if isinstance(overrides.get("db"), Path):  # the flag's SQLite path beats a configured db_url
        cfg = dataclasses.replace(cfg, db_url=None)
    return cfg, detect_config_from_table(detect_table)


def _open_store(cfg: Any, *, create: bool = False) -> Any:
    """The configured store. Only ``serve`` and ``token create`` may create a SQLite file: a
    command that reads (findings, export, report, ...) given a wrong path says so instead of
    leaving an empty database behind."""
    if cfg.db_url is not None:
        # Imported only here: a SQLite collector runs without psycopg installed.
        try:
            from collector.store.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(f"db_url needs psycopg: pip install 'gpuaudit[postgres]' ({exc})") from exc
        return PostgresStore(cfg.db_url)
    from collector.store.sqlite import SqliteStore

    if not create and not Path(cfg.db).exists():
        raise unavailable(f"no store at {cfg.db}: give the collector's --db (or --config)")
    return SqliteStore(cfg.db)


def _tune_gc() -> None:
    """Garbage collection for a long-running ingest process, once start-up and the detector's
    warm-up are done. Ingest allocates some 150 short-lived containers per statement, freed by
    reference counting; at the default young-generation threshold (700) the cyclic collector
    still runs every few statements, and its full collections walk every object the process
    holds (modules, gRPC, the detector's state). Freezing what exists after start-up takes
    those objects out of every later collection, and a higher threshold runs young
    collections about 15 times less often. Measured with bench/bench_ingest.py: time in the
    collector's GC went from about 100 to 31 us per statement (docs/benchmarks.md)."""
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def _write_ready_file(path: Path, ports: dict[str, int | None]) -> None:
    """Whole or absent: whoever waits for the file to appear (a supervisor, the demo, the
    benches) may read it at once, so it is written under another name and renamed."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(ports))
    os.replace(tmp, path)


def _check_serve(cfg: Any) -> None:
    """What ``serve`` needs from the machine, checked before it creates a store, a key or a
    checkpoint: TLS settings whose files can be read and belong together, and free ports."""
    from collector.server import InsecureRefusedError

    if cfg.tls_cert is None:
        if not cfg.insecure:
            raise InsecureRefusedError("refusing to serve plaintext gRPC without insecure = true")
    else:
        exitcodes.read_tls_files(
            ("tls_client_ca", cfg.tls_client_ca), ("tls_cert", cfg.tls_cert), ("tls_key", cfg.tls_key)
        )
    exitcodes.check_port_free(cfg.listen, "gRPC address (listen)")
    if cfg.metrics_listen:
        exitcodes.check_port_free(cfg.metrics_listen, "metrics address (metrics_listen)")


def _cmd_serve(ns: argparse.Namespace) -> int:
    import errno

    from collector.detect.engine import DetectorEngine
    from collector.server import start_collector

    cfg, dcfg = _load(ns)
    _check_serve(cfg)
    directory = _tenants(cfg.tenants)  # a bad tenants file or screening list stops it here, before the store
    screening = _screening(cfg)
    store = _open_store(cfg, create=True)
    try:
        tenants = _site_tenants(cfg, directory)
        engine = DetectorEngine(dcfg, tenants if screening is None else tenants.with_screening(screening))
    except BaseException:
        store.close()
        raise

    async def main() -> None:
        # Handlers first: a SIGTERM that arrives as soon as the ready file exists (or during
        # start-up) stops the collector gracefully instead of killing it.
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        running = await start_collector(cfg, store, engine, accept_log_key_change=ns.accept_log_key_change)
        if engine.tenants.screening is not None:
            running.metrics.watch_screening(engine.tenants.screening)
        _tune_gc()
        if ns.ready_file:
            _write_ready_file(Path(ns.ready_file), {"port": running.port, "metrics_port": running.metrics_port})
        print(
            f"gpuaudit-collector {__version__} listening on port {running.port}"
            + (f", metrics on http://127.0.0.1:{running.metrics_port}/metrics" if running.metrics_port else ""),
            flush=True,
        )
        waiter = asyncio.create_task(stop.wait())
        term = asyncio.create_task(running.server.wait_for_termination())
        await asyncio.wait({waiter, term}, return_when=asyncio.FIRST_COMPLETED)
        await running.stop()

    try:
        asyncio.run(main())
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # Taken between the check and the start.
        raise unavailable(f"a port of {cfg.listen} or {cfg.metrics_listen} is in use by another process") from exc
    finally:
        store.close()
    return 0


def _cmd_token(ns: argparse.Namespace) -> int:
    import time

    nodes: list[str] = []
    if ns.nodes is not None:
        from collector.ca import read_node_list

        if ns.out:
            raise usage("--nodes writes one join-token file per node: give --out-dir DIR, not --out")
        if ns.out_dir is None:
            raise usage("--nodes needs --out-dir DIR (DIR/<node>/join-token, as /etc/gpuaudit/join-token)")
        nodes = read_node_list(ns.nodes)
        taken = [ns.out_dir / n / "join-token" for n in nodes if (ns.out_dir / n / "join-token").exists()]
        if taken:
            raise usage(f"{taken[0]} already exists ({len(taken)} node(s) have a token file): move them away first")
    elif ns.out_dir is not None:
        raise usage("--out-dir goes with --nodes FILE (one node id a line)")
    cfg, _ = _load(ns)
    if ns.out:
        _check_out(Path(ns.out))
    store = _open_store(cfg, create=True)
    try:
        ttl = ns.ttl_s if ns.ttl_s is not None else cfg.token_ttl_s
        now = time.time_ns() // 1_000_000
        tokens = [store.create_token(ttl, now) for _ in range(len(nodes) or ns.count)]
    finally:
        store.close()
    if nodes:
        out_dir = Path(str(ns.out_dir))
        for node, token in zip(nodes, tokens, strict=True):
            (out_dir / node).mkdir(parents=True, exist_ok=True)
            fd = os.open(out_dir / node / "join-token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
        print(f"{len(nodes)} join tokens in {ns.out_dir}/<node>/join-token (mode 0600), valid {ttl} s")
        return 0
    out = "\n".join(tokens) + "\n"
    if ns.out:
        fd = os.open(ns.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(out)
    else:
        sys.stdout.write(out)
    return 0


def _cmd_findings(ns: argparse.Namespace) -> int:
    if getattr(ns, "findings_cmd", None) is not None:
        return _cmd_finding_action(ns)
    from collector.store.base import workflow_state

    cfg, _ = _load(ns)
    store = _open_store(cfg)
    try:
        records = store.findings()
        actions = store.finding_actions()
    finally:
        store.close()
    docs = [json.loads(r.json_text) for r in records]
    by_finding: dict[str, list[Any]] = {}
    for a in actions:
        by_finding.setdefault(a.finding_id, []).append(a)
    for r, doc in zip(records, docs, strict=True):
        history = by_finding.get(r.finding_id, [])
        state = workflow_state(history)
        doc["workflow"] = {
            "state": state.state,
            "assignee": state.assignee,
            "actions": [_action_json(a) for a in history],
        }
    if ns.json:
        print(json.dumps(docs, indent=2))
    else:
        print(format_findings(docs))
    return 0


def _action_json(a: Any) -> dict[str, Any]:
    from collector.detect.findings import rfc3339_ms

    return {
        "action": a.action,
        "by": a.actor,
        "assignee": a.assignee,
        "reason": a.reason,
        "at_ms": a.at_ms,
        "at": rfc3339_ms(a.at_ms),
    }


# The ``findings`` ACTION as typed -> the action stored (collector.store.base.FINDING_ACTIONS).
_FINDING_ACTIONS = {
    "ack": "acknowledge",
    "acknowledge": "acknowledge",
    "assign": "assign",
    "close": "close",
    "reopen": "reopen",
}


def _cmd_finding_action(ns: argparse.Namespace) -> int:
    """``findings ack|assign|close|reopen FINDING_ID --by NAME --reason TEXT``: one action
    appended to the finding's history (the store checks it fits the finding's state)."""
    import time

    from collector.store.base import FindingWorkflowError, workflow_state

    action = _FINDING_ACTIONS[ns.findings_cmd]
    actor = (ns.by if ns.by is not None else os.environ.get("USER", "")).strip()
    if not actor:
        raise usage(f"findings {ns.findings_cmd}: say who acts with --by NAME ($USER is not set)")
    reason = ns.reason if ns.reason is not None else ""
    if action != "assign" and not reason.strip():
        raise usage(f"findings {ns.findings_cmd}: say why with --reason TEXT")
    assignee = getattr(ns, "to", None)
    if action == "assign" and not (assignee or "").strip():
        raise usage("findings assign: say to whom with --to NAME")
    cfg, _ = _load(ns)
    store = _open_store(cfg)
    try:
        try:
            store.record_finding_action(
                ns.finding_id, action, actor, reason, time.time_ns() // 1_000_000, assignee=assignee
            )
        except FindingWorkflowError as exc:
            raise CliError(exitcodes.FAILED, str(exc)) from exc
        state = workflow_state(store.finding_actions(ns.finding_id))
    finally:
        store.close()
    print(
        f"finding {ns.finding_id}: {action} by {actor}; now {state.state}"
        + (f", assigned to {state.assignee}" if state.assignee else "")
    )
    return 0


def _workflow_line(f: dict[str, Any]) -> list[str]:
    wf = f.get("workflow")
    if not isinstance(wf, dict):
        return []
    line = f"    workflow: {wf.get('state')}" + (f", assigned to {wf['assignee']}" if wf.get("assignee") else "")
    last = (wf.get("actions") or [None])[-1]
    if last:
        line += f" (last: {last['action']} by {last['by']} at {last['at']}" + (
            f": {last['reason']})" if last.get("reason") else ")"
        )
    return [line]


def format_findings(docs: list[dict[str, Any]]) -> str:
    if not docs:
        return "no findings"
    from collector.integrity import KINDS, format_integrity

    lines = []
    for f in docs:
        if f.get("kind") in KINDS and "evidence" in f:
            lines.extend(format_integrity(f))
            lines.extend(_workflow_line(f))
            continue
        flop = f.get("flop_estimate")
        flop_s = f"{flop[0]:.2e}..{flop[1]:.2e} FLOP" if flop else "FLOP unavailable"
        lines.append(
            f"{f['id']}  {f['severity'].upper():8s} {f['kind']}  tenant {f['tenant']}"
            + (f" (linked: {', '.join(f['tenants'])})" if len(f.get("tenants", [])) > 1 else "")
        )
        lines.append(
            f"    {f['gpus']} GPUs on {f['nodes']} nodes, started {f['started_at']}, detected {f['detected_at']}, "
            f"{f['gpu_hours']} GPU-h, {flop_s}, score {f['score']}"
        )
        op = f.get("opacity", {})
        if op.get("reasons"):
            lines.append(f"    opacity {op.get('score')}: " + "; ".join(op["reasons"]))
        eu = f.get("end_use_risk")
        if eu is not None:
            scr = eu.get("screening") or {}
            lines.append(
                f"    end-use risk {eu.get('score')}: "
                + ("; ".join(eu.get("reasons") or []) or "no reasons")
                + f" (screened against {scr.get('list') or 'no list'}"
                + (f" of {scr['list_date']}" if scr.get("list_date") else "")
                + (f"; {scr['warning']}" if scr.get("warning") else "")
                + ")"
            )
        set_by = (f.get("evidence") or {}).get("severity_set_by") or {}
        if set_by.get("axes"):
            lines.append(f"    severity set by {' and '.join(set_by['axes'])} of {set_by.get('tenant')}")
        lines.extend(_workflow_line(f))
    return "\n".join(lines)


def _cmd_detect(ns: argparse.Namespace) -> int:
    from agent.pipeline import windows_from_trace
    from agent.trace import TraceError, TraceUnreadableError
    from collector.detect.engine import run_offline

    if ns.prometheus is not None:
        return _cmd_detect_prometheus(ns)
    for flag in ("start", "end", "tenant_rules", "step", "label_map", "slurm_accounts"):
        if getattr(ns, flag) not in (None, []):
            print(f"error: --{flag.replace('_', '-')} is for --prometheus, not --trace", file=sys.stderr)
            return 2
    cfg, dcfg = _load(ns)
    try:
        tenants = _screened(_tenants(ns.tenants), cfg)
        findings = run_offline(windows_from_trace(ns.trace, window_s=ns.window_s), dcfg, tenants)
    except TraceUnreadableError as exc:
        raise unavailable(f"{exc}: give --trace a trace v1 file (.jsonl or .jsonl.gz)") from exc
    except TraceError as exc:
        raise usage(f"{exc} (trace v1: docs/formats.md)") from exc
    docs = [f.to_json() for f in findings]
    if ns.json:
        print(json.dumps(docs, indent=2))
    else:
        print(format_findings(docs))
    return 1 if (ns.fail_on_findings and docs) else 0


def _cmd_detect_prometheus(ns: argparse.Namespace) -> int:
    """``detect --prometheus URL --start T --end T``: the detector on dcgm-exporter history."""
    from collector.detect.findings import rfc3339_ms
    from collector.prometheus.client import ClientConfig, PrometheusClient, PrometheusError
    from collector.prometheus.rules import load_slurm_accounts, load_tenant_rules
    from collector.prometheus.source import NOTE, PrometheusHistory, Span, detect, wrap_finding
    from collector.prometheus.windows import LabelMap, WindowBuilder

    if ns.start is None or ns.end is None:
        print("error: --prometheus needs --start and --end (RFC 3339 times)", file=sys.stderr)
        return 2
    if ns.end <= ns.start:
        print("error: --end must be after --start", file=sys.stderr)
        return 2
    if ns.tenants is None:
        print("error: --prometheus needs --tenants (the tenants v1 file with the KYC facts)", file=sys.stderr)
        return 2
    step_s = 30.0 if ns.step is None else ns.step
    step_ms = round(step_s * 1000)
    if step_ms <= 0 or 60_000 % step_ms:
        print(f"error: --step {step_s:g}: must divide the 60 s window (e.g. 10, 15, 20, 30, 60)", file=sys.stderr)
        return 2
    cfg, dcfg = _load(ns)
    client = PrometheusClient(
        ClientConfig(
            url=ns.prometheus,
            bearer_token_file=ns.bearer_token_file,
            basic_auth_user=ns.basic_auth_user,
            basic_auth_password_file=ns.basic_auth_password_file,
            ca_file=ns.ca_file,
            timeout_s=ns.timeout_s,
        )
    )
    builder = WindowBuilder(
        load_tenant_rules(ns.tenant_rules),
        step_ms=step_ms,
        labels=LabelMap.parse(ns.label_map or []),
        slurm_accounts=load_slurm_accounts(ns.slurm_accounts),
    )
    history = PrometheusHistory(client, builder, Span(ns.start, ns.end, step_ms))
    try:
        findings = detect(history, dcfg, _screened(_tenants(ns.tenants), cfg), pipeline=not ns.no_pipeline)
    except PrometheusError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 3
    cov = history.coverage
    context = {
        "url": ns.prometheus,
        "start": rfc3339_ms(history.chunks[0].start_ms),
        "end": rfc3339_ms(history.chunks[-1].end_ms),
        "step_s": step_ms / 1000,
        "coverage": {k: v for k, v in cov.to_json().items() if k != "hosts_with_windows_missing"}
        | {"hosts_with_windows_missing": len(cov.to_json()["hosts_with_windows_missing"])},
    }
    docs = [wrap_finding(f.to_json(), context) for f in findings]
    for line in cov.summary_lines():
        print(line, file=sys.stderr)
    if ns.json:
        print(json.dumps(docs, indent=2))
    else:
        print(f"source: prometheus {ns.prometheus} ({NOTE})")
        print(format_findings(docs))
    return 1 if (ns.fail_on_findings and docs) else 0


def _rfc3339_ms(text: str) -> int:
    """Milliseconds since the epoch of an RFC 3339 time with an offset (argparse type)."""
    from datetime import datetime

    try:
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time (e.g. 2025-01-31T00:00:00Z)") from exc
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset; add Z or +HH:MM")
    return int(t.timestamp() * 1000)


def _cmd_export(ns: argparse.Namespace) -> int:
    import time

    from attestation.errors import CheckpointError
    from collector.export import Selection, export_bundle, read_checkpoint_file
    from collector.log import Log

    cfg, _ = _load(ns)
    # What it was given, checked before it opens the store and signs a checkpoint there.
    _check_out(ns.out)
    sel = Selection(
        serials=tuple(ns.serial or ()),
        tenant=ns.tenant,
        all=ns.all,
        since_ms=ns.since,
        until_ms=ns.until,
        nodes=tuple(ns.node or ()),
    )
    previous = read_checkpoint_file(ns.previous_checkpoint) if ns.previous_checkpoint else None
    tenants = _tenants(cfg.tenants)
    store = _open_store(cfg)
    try:
        log = Log.open(cfg, store)
        if previous is not None:
            try:
                log.verify_own(previous)
            except CheckpointError as exc:
                raise usage(
                    f"--previous-checkpoint {ns.previous_checkpoint} was not signed by this log ({log.origin}): {exc}"
                ) from exc
        # Streamed to the file (collector/export.py): memory stays bounded whatever the selection.
        summary = export_bundle(
            ns.out,
            store,
            log,
            sel,
            time.time_ns() // 1_000_000,
            previous,
            tenants=_site_tenants(cfg, tenants),
        )
    finally:
        store.close()
    print(
        f"wrote {summary.entries} envelopes from {summary.keys} keys to {ns.out} "
        f"(checkpoint {summary.origin}, size {summary.tree_size})"
    )
    return 0


def _cmd_log_public_key(ns: argparse.Namespace) -> int:
    """``log public-key``: the log's public key (PEM) for vendors to pin (``gpuaudit-verify --log-key``)."""
    from cryptography.hazmat.primitives import serialization

    from attestation.errors import KeyFileError
    from attestation.keys import load_key_file

    cfg, _ = _load(ns)
    path = cfg.log_key_path()
    if not path.exists():
        raise unavailable(
            f"no log key at {path} yet: it is created when the collector first starts (or give its --config)"
        )
    try:
        public = load_key_file(path).public_key()
    except KeyFileError as exc:
        raise usage(f"the log key {path}: {exc}") from exc
    pem = serialization.load_der_public_key(public.spki_der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sys.stdout.write(pem.decode("ascii"))
    print(f"log {cfg.log_origin or '(log_origin not set)'}, key {public.key_id}", file=sys.stderr)
    return 0


def _cmd_log(ns: argparse.Namespace) -> int:
    """``log checkpoint|inclusion|consistency|audit``: read the store's log directly (JSON out)."""
    import base64
    import dataclasses
    import time

    from collector.log import Log

    def b64(h: bytes) -> str:
        return base64.b64encode(h).decode("ascii")

    cfg, _ = _load(ns)
    store = _open_store(cfg)
    try:
        log = Log.open(cfg, store)
        if ns.log_cmd == "audit":
            audit = log.audit()
            print(json.dumps({**dataclasses.asdict(audit), "ok": audit.ok}, indent=2))
            return 0 if audit.ok else 1
        log.sync()
        latest = store.latest_checkpoint()
        if ns.log_cmd == "checkpoint":
            if ns.sign or latest is None:
                note = log.checkpoint(time.time_ns() // 1_000_000).note
            else:
                note = latest.note
            sys.stdout.write(note)
            return 0
        signed_size = latest.tree_size if latest is not None else 0
        if ns.log_cmd == "inclusion":
            size = ns.tree_size if ns.tree_size is not None else signed_size
            if ns.leaf_index is not None:
                index = ns.leaf_index
            else:
                if ns.seq is None:
                    print("error: --key needs --seq", file=sys.stderr)
                    return 2
                found = log.leaf_index(ns.key, ns.seq)
                if found is None:
                    print(f"error: statement {ns.key}/{ns.seq} is not in the log", file=sys.stderr)
                    return 1
                index = found
            if not 0 <= index < size <= log.size:
                print(
                    f"error: leaf {index} is not in a signed tree of size {size} (log has {log.size})", file=sys.stderr
                )
                return 1
            doc: dict[str, Any] = {
                "leaf_index": index,
                "tree_size": size,
                "leaf_hash": b64(log.leaf_hash(index)),
                "proof": [b64(h) for h in log.inclusion_proof(index, size)],
            }
        else:
            to_size = ns.to_size if ns.to_size is not None else signed_size
            if not 0 <= ns.from_size <= to_size <= log.size:
                print(
                    f"error: sizes {ns.from_size}..{to_size} are not within the log (size {log.size})", file=sys.stderr
                )
                return 1
            doc = {
                "from_size": ns.from_size,
                "to_size": to_size,
                "proof": [b64(h) for h in log.consistency_proof(ns.from_size, to_size)],
            }
    finally:
        store.close()
    print(json.dumps(doc, indent=2))
    return 0


def _cmd_key(ns: argparse.Namespace) -> int:
    """``key list`` and ``key revoke KEY_ID``."""
    import time

    cfg, _ = _load(ns)
    store = _open_store(cfg)
    try:
        if ns.key_cmd == "revoke":
            if store.key(ns.key_id) is None:
                print(f"error: key {ns.key_id} is not enrolled", file=sys.stderr)
                return 1
            now = time.time_ns() // 1_000_000
            if not store.revoke_key(ns.key_id, now):
                print(f"key {ns.key_id} was already revoked")
                return 0
            _logger.warning("operator revoked key %s (reason: %s)", ns.key_id, ns.reason or "none given")
            print(f"revoked key {ns.key_id} at {now} ms; statements it signs from now on are refused")
            return 0
        keys = store.keys()
    finally:
        store.close()
    if ns.json:
        print(
            json.dumps(
                [
                    {
                        "key_id": k.key_id,
                        "node_id": k.node_id,
                        "algorithm": k.algorithm,
                        "assurance": k.assurance,
                        "enrolled_ms": k.enrolled_ms,
                        "revoked_ms": k.revoked_ms,
                    }
                    for k in keys
                ],
                indent=2,
            )
        )
    else:
        for k in keys:
            state = f"revoked at {k.revoked_ms}" if k.revoked_ms is not None else "active"
            print(f"{k.key_id}  {k.node_id}  {k.algorithm}/{k.assurance}  enrolled {k.enrolled_ms}  {state}")
        if not keys:
            print("no keys enrolled")
    return 0


def _cmd_ca_init(ns: argparse.Namespace) -> int:
    from collector.ca import init_ca

    cert = init_ca(ns.dir, ns.name, ns.days)
    print(f"CA certificate {cert} (its key stays in {ns.dir}, mode 0600)")
    return 0


def _cmd_ca_issue(ns: argparse.Namespace) -> int:
    from collector.ca import issue, issue_nodes, read_node_list

    if ns.nodes is not None:
        if not ns.client or ns.out is None:
            raise usage("--nodes issues client certificates: give --client and --out DIR (DIR/<node>/tls/)")
        done = issue_nodes(ns.dir, read_node_list(ns.nodes), ns.out, days=ns.days)
        until = min(i.not_after for i in done)
        print(
            f"{len(done)} client certificates in {ns.out}/<node>/tls/ (ca.crt, node.crt, node.key 0600), "
            f"valid until {until:%Y-%m-%d}"
        )
        return 0
    issued = issue(ns.dir, ns.name, server=ns.server, hosts=tuple(ns.host or ()), days=ns.days, out=ns.out)
    kind = "server" if ns.server else "client"
    print(f"{kind} certificate {issued.cert}, key {issued.key}, valid until {issued.not_after:%Y-%m-%d}")
    return 0


def _cmd_report(ns: argparse.Namespace) -> int:
    import time

    from collector.report import (
        build_report,
        from_detect_config,
        log_key_fingerprint,
        store_args_for,
        tenant_facts,
        write_report,
    )

    cfg, dcfg = _load(ns)
    _check_out(ns.out)
    store_args = store_args_for(ns.db, ns.config)
    store = _open_store(cfg)
    try:
        options = from_detect_config(
            dcfg, store_args, tenant_facts(_tenants(cfg.tenants)), log_key_fingerprint(cfg.log_key_path())
        )
        now_ms = time.time_ns() // 1_000_000
        text, data = build_report(store, ns.finding_id, options, generated_ms=now_ms, version=__version__)
    finally:
        store.close()
    write_report(ns.out, text)
    print(f"wrote {ns.out}: finding {ns.finding_id}, {data.statements} statements from {len(data.keys)} node keys")
    return 0


def _cmd_retention(ns: argparse.Namespace) -> int:
    import time

    from collector.retention import age_statements

    if ns.older_than < 0:
        print("error: --older-than must be 0 or more days", file=sys.stderr)
        return 2
    cfg, _ = _load(ns)
    store = _open_store(cfg)
    now = time.time_ns() // 1_000_000
    try:
        report = age_statements(store, now - int(ns.older_than * 86_400_000), now)
    finally:
        store.close()
    print(
        f"aged {report.statements} statement payloads into hourly per-GPU, per-tenant aggregates "
        f"({report.aggregate_rows} aggregate rows written); log leaves and checkpoints unchanged"
    )
    return 0


def _cmd_backup(ns: argparse.Namespace) -> int:
    from collector.backup import backup

    cfg, _ = _load(ns)
    if cfg.db_url is None and not Path(cfg.db).exists():
        raise unavailable(f"no store at {cfg.db}: give the collector's --db (or --config)")
    if ns.out.exists() and (not ns.out.is_dir() or any(ns.out.iterdir())):
        raise usage(f"--out {ns.out} exists and is not an empty folder: give a new folder for each backup")
    manifest = backup(cfg, ns.out)
    log = manifest["log"]
    print(
        f"backed up the {manifest['backend']} store ({log['statements']} statements, log size {log['log_size']}, "
        f"latest checkpoint at size {log['checkpoint_size']}) and {len(manifest['files']) - 1} key file(s) to "
        f"{ns.out}; it holds the log's private key: keep it as safe as the collector's state"
    )
    return 0


def _cmd_restore(ns: argparse.Namespace) -> int:
    from collector.backup import restore

    cfg, _ = _load(ns)
    if not ns.src.is_dir():
        raise unavailable(f"--from {ns.src}: no such folder")
    if cfg.db_url is None and Path(cfg.db).exists():
        raise usage(f"a store exists at {cfg.db}: restore into a new path (or move that store away first)")
    report = restore(cfg, ns.src)
    print(
        f"restored {', '.join(report.files)}: {report.state.statements} statements, log size "
        f"{report.state.log_size}; {report.leaves_audited} leaves audited against the stored tile roots and the "
        f"latest checkpoint (size {report.state.checkpoint_size}), which the log key verifies"
    )
    return 0


def _cmd_demo(ns: argparse.Namespace) -> int:
    from collector.demo import run_demo

    return run_demo(hours=ns.hours, workdir=ns.workdir, keep=ns.keep)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpuaudit-collector", description="gpuaudit collector")
    ap.add_argument("--version", action="version", version=f"gpuaudit-collector {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging; the traceback of an unexpected error")
    ap.add_argument("-q", "--quiet", action="store_true", help="errors only")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="collector TOML config (docs/operator-guide.md)")
        p.add_argument("--db", help="SQLite file, or a postgresql:// URL (overrides the config's db / db_url)")

    sv = sub.add_parser("serve", help="accept, verify and store statements; detect; serve /metrics")
    common(sv)
    sv.add_argument("--listen", help="gRPC address HOST:PORT (port 0: any free port)")
    sv.add_argument("--metrics-listen", help="Prometheus address HOST:PORT ('' disables)")
    sv.add_argument("--tenants", type=Path, help="tenants v1 TOML file")
    sv.add_argument(
        "--insecure", action="store_true", help="plaintext gRPC without TLS settings (development on loopback only)"
    )
    sv.add_argument("--ready-file", help="write {port, metrics_port} as JSON here once serving")
    sv.add_argument(
        "--accept-log-key-change",
        action="store_true",
        help="sign the store's log with this log key although earlier checkpoints were signed by another "
        "(only after losing the old key; vendors pinning it must be given the new one)",
    )
    sv.set_defaults(func=_cmd_serve)

    tk = sub.add_parser("token", help="join tokens for enrolling nodes")
    tksub = tk.add_subparsers(dest="token_cmd", required=True)
    tc = tksub.add_parser("create", help="create one-time join tokens (printed once; only their hash is kept)")
    common(tc)
    tc.add_argument("--count", type=int, default=1, help="how many tokens (one per node)")
    tc.add_argument(
        "--nodes",
        type=Path,
        metavar="FILE",
        help="one token per node id listed in FILE (one a line, # comments), written to --out-dir",
    )
    tc.add_argument(
        "--out-dir", type=Path, help="with --nodes: DIR/<node>/join-token (0600), to copy to /etc/gpuaudit/join-token"
    )
    tc.add_argument("--ttl-s", type=int, help="seconds until the tokens expire (default from config: 86400)")
    tc.add_argument("--out", help="write the tokens to this file (mode 0600) instead of stdout")
    tc.set_defaults(func=_cmd_token)

    fd = sub.add_parser(
        "findings",
        help="list recorded findings; acknowledge, assign, close or reopen one",
        description="With no ACTION: list the recorded findings, each with its workflow state (open, "
        "acknowledged, closed) and assignee. With an ACTION: record who did it and why. Actions are kept as "
        "history beside the detector's finding, which they never change: open -> acknowledged (ack, or assign) "
        "-> closed; reopen -> open.",
    )
    common(fd)
    fd.add_argument(
        "--json", action="store_true", help="Findings JSON (an array), each with its workflow: state, assignee, actions"
    )
    fd.set_defaults(func=_cmd_findings, findings_cmd=None)
    fdsub = fd.add_subparsers(dest="findings_cmd", metavar="ACTION")
    for name, aliases, text in (
        ("ack", ["acknowledge"], "acknowledge an open finding: someone is looking at it"),
        ("assign", [], "assign a finding that is not closed to someone (acknowledges an open one)"),
        ("close", [], "close a finding, saying why (e.g. reviewed: declared training run)"),
        ("reopen", [], "reopen a closed finding"),
    ):
        fa = fdsub.add_parser(name, aliases=aliases, help=text, description=text[0].upper() + text[1:] + ".")
        # Defaults suppressed: --config/--db given before ACTION must not be reset after it.
        fa.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="collector TOML config")
        fa.add_argument("--db", default=argparse.SUPPRESS, help="SQLite file, or a postgresql:// URL")
        fa.add_argument("finding_id", metavar="FINDING_ID", help="the finding's id, from `gpuaudit-collector findings`")
        fa.add_argument("--by", metavar="NAME", help="who acts (default: $USER)")
        if name == "assign":
            fa.add_argument("--to", metavar="NAME", required=True, help="whom the finding is assigned to")
        fa.add_argument(
            "--reason",
            metavar="TEXT",
            required=name != "assign",
            help="why" + (" (optional)" if name == "assign" else ""),
        )

    dt_ = sub.add_parser(
        "detect",
        help="run the detector offline: on a trace, or on the dcgm-exporter history in your Prometheus",
        description="Run the detector offline and print its findings. Either on a Trace v1 file (--trace), "
        "or on a span of the dcgm-exporter series a Prometheus already holds (--prometheus URL --start T --end T): "
        "each host's GPUs become one unsigned usage window per 60 s and go through the same detector as signed "
        'statements. Findings from Prometheus carry "source": "prometheus" and a note that the data is '
        "unsigned and has no process-level attribution; what could not be read (series without a host or UUID "
        "label, metrics not exported, hosts with gaps) is reported on stderr. See README, 'Try it on your history'.",
        epilog="Here: 0 whether there are findings or not, unless --fail-on-findings; 1 findings listed with "
        "--fail-on-findings; 2 a bad trace, time, step, rules file, label map or tenants file; 3 the trace or "
        "another file cannot be read, or Prometheus cannot be (unreachable, credentials or TLS refused, query "
        "error).",
    )
    dt_.add_argument("--config", type=Path, help="collector config (its [detect] table is used)")
    src = dt_.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", type=Path, help="trace v1 file")
    src.add_argument(
        "--prometheus", metavar="URL", help="Prometheus base URL (http:// or https://, with any path prefix)"
    )
    dt_.add_argument("--tenants", type=Path, help="tenants v1 TOML file (KYC facts; required with --prometheus)")
    dt_.add_argument(
        "--screening-list",
        type=Path,
        metavar="PATH",
        help="the Consolidated Screening List (trade.gov consolidated.csv or .json) to screen tenants, parents and "
        "beneficial owners against; overrides screening_list of --config (docs/operator-guide.md, 'Screening list')",
    )
    dt_.add_argument("--json", action="store_true", help="Findings JSON (an array)")
    dt_.add_argument("--window-s", type=int, default=60, help="statement window of --trace (default 60)")
    dt_.add_argument("--fail-on-findings", action="store_true", help="exit 1 when there are findings")
    pg = dt_.add_argument_group("Prometheus history (with --prometheus)")
    pg.add_argument("--start", type=_rfc3339_ms, help="start of the span, RFC 3339 (2026-03-01T00:00:00Z)")
    pg.add_argument("--end", type=_rfc3339_ms, help="end of the span, RFC 3339")
    pg.add_argument(
        "--step",
        type=float,
        metavar="SECONDS",
        help="query resolution in seconds; must divide 60 (default 30). Each step averages the samples in it; "
        "30 or less gives every window per-step series for the synchrony tests, 60 one point per window",
    )
    pg.add_argument(
        "--tenant-rules",
        type=Path,
        metavar="FILE",
        help="TOML with the agent's [tenants] table (namespaces, slurm_accounts), or an agent config itself",
    )
    pg.add_argument(
        "--slurm-accounts",
        type=Path,
        metavar="FILE",
        help="hpc_job -> account, as `sacct -a -X -n -P -o JobID,Account` prints it (for [tenants.slurm_accounts])",
    )
    pg.add_argument(
        "--label-map",
        action="append",
        metavar="NAME=LABEL",
        help="a label your relabelling renamed: NAME one of host, uuid, gpu, model, pci_bus_id, namespace, pod, "
        "container, hpc_job (e.g. host=instance; repeat or comma-separate)",
    )
    pg.add_argument(
        "--bearer-token-file", type=Path, metavar="FILE", help="send the token in this file as a bearer token"
    )
    pg.add_argument("--basic-auth-user", metavar="USER", help="basic auth user (with --basic-auth-password-file)")
    pg.add_argument("--basic-auth-password-file", type=Path, metavar="FILE", help="basic auth password, from a file")
    pg.add_argument("--ca-file", type=Path, metavar="FILE", help="PEM CA bundle to verify an https:// Prometheus")
    pg.add_argument("--timeout-s", type=float, default=120.0, help="per request (default 120)")
    pg.add_argument(
        "--no-pipeline",
        action="store_true",
        help="read and window every chunk in the detector's own process (by default, with fork and two or more "
        "CPUs, a second process reads and windows the next chunk while the detector runs; the findings are the same)",
    )
    dt_.set_defaults(func=_cmd_detect)

    ex = sub.add_parser(
        "export",
        help="write a vendor bundle (envelopes, enrollment, signed checkpoint, proofs) for gpuaudit-verify",
        description="Export the statements naming some GPU serials or a tenant (or all) as a self-contained "
        "bundle a chip vendor verifies offline with gpuaudit-verify (docs/vendor-guide.md).",
    )
    common(ex)
    what = ex.add_mutually_exclusive_group(required=True)
    what.add_argument("--serial", nargs="+", metavar="S", help="statements naming these GPU serials")
    what.add_argument("--tenant", metavar="T", help="statements naming this tenant")
    what.add_argument("--node", nargs="+", metavar="N", help="statements of these nodes (node ids)")
    what.add_argument("--all", action="store_true", help="every statement")
    ex.add_argument("--since", type=_rfc3339_ms, help="windows ending after this RFC 3339 time")
    ex.add_argument("--until", type=_rfc3339_ms, help="windows starting before this RFC 3339 time")
    ex.add_argument("--out", type=Path, required=True, help="bundle file to write")
    ex.add_argument(
        "--previous-checkpoint",
        type=Path,
        help="the vendor's earlier checkpoint (note or bundle): add a consistency proof",
    )
    ex.set_defaults(func=_cmd_export)

    lg = sub.add_parser("log", help="the transparency log: signed checkpoint, inclusion and consistency proofs")
    lgsub = lg.add_subparsers(dest="log_cmd", required=True)
    lc = lgsub.add_parser("checkpoint", help="print the latest signed checkpoint (a C2SP signed note)")
    common(lc)
    lc.add_argument("--sign", action="store_true", help="sign a checkpoint of the log as it is now first")
    lc.set_defaults(func=_cmd_log)
    li = lgsub.add_parser("inclusion", help="inclusion proof of one statement (JSON, base64 hashes)")
    common(li)
    leaf = li.add_mutually_exclusive_group(required=True)
    leaf.add_argument("--leaf-index", type=int, help="the leaf's index in the log")
    leaf.add_argument("--key", help="the statement's signing key id (with --seq)")
    li.add_argument("--seq", type=int, help="the statement's seq in its key's chain")
    li.add_argument("--tree-size", type=int, help="tree size (default: the latest signed checkpoint's)")
    li.set_defaults(func=_cmd_log)
    lp = lgsub.add_parser(
        "public-key", help="print the log's public key (PEM) for vendors to pin with gpuaudit-verify --log-key"
    )
    common(lp)
    lp.set_defaults(func=_cmd_log_public_key)
    lk = lgsub.add_parser("consistency", help="consistency proof between two tree sizes (JSON)")
    common(lk)
    lk.add_argument("--from", dest="from_size", type=int, required=True, help="the earlier tree size")
    lk.add_argument("--to", dest="to_size", type=int, help="the later tree size (default: latest signed)")
    lk.set_defaults(func=_cmd_log)
    la = lgsub.add_parser(
        "audit",
        help="recompute the log from its leaves: stored tile roots and the latest checkpoint "
        "(JSON; exit 1 if either does not match)",
    )
    common(la)
    la.set_defaults(func=_cmd_log)

    tn = sub.add_parser("tenant", help="tenant pseudonyms: derive them for agent configs, reveal one (audited)")
    tnsub = tn.add_subparsers(dest="tenant_cmd", required=True)
    tp = tnsub.add_parser(
        "pseudonym",
        help="print the pseudonym (tp-...) of each tenant id, for the agents' tenant rules",
    )
    common(tp)
    tp.add_argument("tenant_id", nargs="+", help="tenant ids as in the tenants file")
    tp.set_defaults(func=_cmd_tenant)
    tr = tnsub.add_parser(
        "reveal",
        help="print the tenant id behind a pseudonym; recorded in the store's reveal audit and logged",
    )
    common(tr)
    tr.add_argument("pseudonym", help="tp- followed by 16 hex digits")
    tr.add_argument("--reason", required=True, help="why the identity is needed (recorded)")
    tr.add_argument("--tenants", type=Path, help="tenants v1 TOML file (overrides the config)")
    tr.set_defaults(func=_cmd_tenant)

    ky = sub.add_parser("key", help="enrolled node keys: list, revoke")
    kysub = ky.add_subparsers(dest="key_cmd", required=True)
    kl = kysub.add_parser("list", help="list enrolled keys and whether they are revoked")
    common(kl)
    kl.add_argument("--json", action="store_true", help="JSON array")
    kl.set_defaults(func=_cmd_key)
    kr = kysub.add_parser(
        "revoke",
        help="revoke a node key: the collector refuses what it signs from now on, and verifiers "
        "reject its statements signed after the revocation time",
    )
    common(kr)
    kr.add_argument("key_id", help="the key id (sha256:...) as `key list` shows it")
    kr.add_argument("--reason", help="why (written to the log)")
    kr.set_defaults(func=_cmd_key)

    ca = sub.add_parser("ca", help="the operator CA for mTLS between agents and the collector")
    casub = ca.add_subparsers(dest="ca_cmd", required=True)
    ci = casub.add_parser("init", help="create a CA (ECDSA P-256) in DIR")
    ci.add_argument("--dir", type=Path, required=True, help="where ca.crt and ca.key (0600) go")
    ci.add_argument("--name", default="gpuaudit operator CA", help="the CA's common name")
    ci.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    ci.set_defaults(func=_cmd_ca_init)
    cs = casub.add_parser("issue", help="issue a server certificate, or a client certificate for one node")
    cs.add_argument("--dir", type=Path, required=True, help="the CA's directory")
    who = cs.add_mutually_exclusive_group(required=True)
    who.add_argument("--name", help="common name: the collector's host name, or the node id")
    who.add_argument(
        "--nodes",
        type=Path,
        metavar="FILE",
        help="client certificates for every node id in FILE (one a line): --out DIR/<node>/tls/{ca.crt,node.crt,"
        "node.key}, the paths deploy/config/agent.toml names under /etc/gpuaudit",
    )
    role = cs.add_mutually_exclusive_group(required=True)
    role.add_argument("--server", action="store_true", help="a certificate for the collector")
    role.add_argument("--client", action="store_true", help="a certificate for the agent of node NAME")
    cs.add_argument("--host", action="append", help="server: a DNS name or IP agents dial (repeat)")
    cs.add_argument("--days", type=int, default=397, help="validity in days (default 397)")
    cs.add_argument("--out", type=Path, help="where NAME.crt and NAME.key go (default: the CA's directory)")
    cs.set_defaults(func=_cmd_ca_issue)

    rp = sub.add_parser(
        "report",
        help="write a finding's evidence report: one self-contained HTML file to read and forward",
        description="Write one HTML file (no scripts, nothing fetched) that explains a finding in plain words, "
        "charts the tenant's GPUs, utilization and compute against the thresholds, lists the signed statements "
        "behind it and how to verify them with gpuaudit-verify. FINDING_ID is from `gpuaudit-collector findings`.",
    )
    common(rp)
    rp.add_argument("finding_id", metavar="FINDING_ID", help="the finding's id (f-...)")
    rp.add_argument("--out", type=Path, required=True, help="HTML file to write")
    rp.add_argument("--tenants", type=Path, help="tenants v1 TOML file (adds what it records about the tenant)")
    rp.set_defaults(func=_cmd_report)

    rt = sub.add_parser(
        "retention",
        help="age old statements into hourly per-GPU, per-tenant aggregates (log and proofs stay valid)",
        description="Drop the payloads and signatures of statements whose window ended more than DAYS ago, "
        "keeping per-tenant, per-GPU hourly aggregates, each statement's digest and its log leaf, so the "
        "Merkle root, signed checkpoints and proofs of the remaining statements stay valid. Export what a "
        "vendor may need first: aged statements can no longer be exported.",
    )
    common(rt)
    rt.add_argument("--older-than", type=float, required=True, metavar="DAYS", help="age in days (may be fractional)")
    rt.set_defaults(func=_cmd_retention)

    bk = sub.add_parser(
        "backup",
        help="copy the store and the log and pseudonym keys into a new folder, with a checked manifest",
        description="Back up the store (SQLite: the online backup API, safe while the collector runs; PostgreSQL: "
        "pg_dump of one snapshot) and the keys beside it (log key, pseudonym key) into a new folder, with a "
        "manifest of each file's SHA-256 and the log's size and latest checkpoint. The folder holds the log's "
        "private key. Restore with `gpuaudit-collector restore` (docs/operator-guide.md, 'Backup and restore').",
    )
    common(bk)
    bk.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new (or empty) folder")
    bk.set_defaults(func=_cmd_backup)
    rs = sub.add_parser(
        "restore",
        help="restore a backup into a new store and key paths, then check its log",
        description="Restore a `gpuaudit-collector backup` folder into the configured store, which must not exist "
        "(SQLite) or be an empty database (PostgreSQL: pg_restore), and the configured key paths. Every file is "
        "checked against the manifest first; afterwards the log is audited from its leaves, its latest checkpoint "
        "must verify under the restored log key, and its size and checkpoint must be the backup's (exit 1 if not).",
    )
    common(rs)
    rs.add_argument("--from", dest="src", type=Path, required=True, metavar="DIR", help="the backup folder")
    rs.set_defaults(func=_cmd_restore)

    dm = sub.add_parser("demo", help="the demo site: opaque 2,400-GPU training run among ordinary tenants")
    dm.add_argument("--hours", type=float, default=2.0, help="hours of event time to replay (default 2)")
    dm.add_argument(
        "--workdir",
        type=Path,
        help="keep the demo's store and files here (default: $XDG_CACHE_HOME/gpuaudit/demo, i.e. "
        "~/.cache/gpuaudit/demo); they stay after the demo, and the next run in the same folder replaces them",
    )
    dm.add_argument("--keep", action="store_true", help="leave the collector running at the end (Ctrl-C stops)")
    dm.set_defaults(func=_cmd_demo)
    exitcodes.add_epilogs(ap, exitcodes.epilog())
    return ap


def _classify(exc: BaseException) -> CliError | None:
    """The exit code and line of an error a command let through (attestation/exitcodes.py)."""
    from collector.ca import CaError
    from collector.errors import StoreError
    from collector.log import LogIdentityError
    from collector.prometheus.client import PrometheusError
    from collector.pseudonyms import PseudonymKeyError
    from collector.screening import ScreeningError
    from collector.server import InsecureRefusedError
    from collector.tenants import TenantsError

    missing = isinstance(exc.__cause__, OSError)
    if isinstance(exc, ConfigError):  # a config file that is not there is missing, not wrong
        return CliError(exitcodes.UNAVAILABLE if missing else exitcodes.USAGE, f"configuration: {exc}")
    if isinstance(exc, TenantsError):
        # Offline commands read the file once: nothing to restart, only to fix and run again.
        return CliError(
            exitcodes.UNAVAILABLE if missing else exitcodes.USAGE,
            f"tenants file: {exc}" + ("" if missing else "; fix the file (format: Tenants v1.1, docs/formats.md)"),
        )
    if isinstance(exc, ScreeningError):
        return CliError(exitcodes.UNAVAILABLE if missing else exitcodes.USAGE, exc.diagnostics())
    if isinstance(exc, (InsecureRefusedError, LogIdentityError, PseudonymKeyError, CaError)):
        return usage(exc.diagnostics())
    if isinstance(exc, (StoreError, PrometheusError)):
        return unavailable(exc.diagnostics())
    if isinstance(exc, RuntimeError) and "Failed to bind to address" in str(exc):  # gRPC's port in use
        return unavailable(f"{str(exc).split(';')[0]}: the port is in use by another process; choose another")
    diag = getattr(exc, "diagnostics", None)
    if callable(diag):  # the collector's own errors: a command that failed on its merits
        return CliError(exitcodes.UNAVAILABLE if missing else exitcodes.FAILED, str(diag()))
    return None


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    # The demo prints its own story; library INFO lines would only clutter it.
    _setup_logging(ns.verbose, ns.quiet or (ns.cmd == "demo" and not ns.verbose))
    return exitcodes.run_command(lambda: ns.func(ns), verbose=ns.verbose, classify=_classify)


if __name__ == "__main__":
    sys.exit(main())
