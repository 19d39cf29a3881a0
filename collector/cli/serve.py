"""``serve``: accept, verify and store statements; detect; serve /metrics."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from attestation import exitcodes
from attestation.exitcodes import unavailable
from collector.cli.directory import screening, site_tenants, tenants
from collector.cli.settings import add_store_flags, load
from collector.cli.store_factory import open_store
from core import __version__

if TYPE_CHECKING:
    from collector.config import CollectorConfig


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sv = sub.add_parser("serve", help="accept, verify and store statements; detect; serve /metrics")
    add_store_flags(sv)
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


def tune_gc() -> None:
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


def write_ready_file(path: Path, ports: dict[str, int | None]) -> None:
    """Whole or absent: whoever waits for the file to appear (a supervisor, the demo, the
    benches) may read it at once, so it is written under another name and renamed."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(ports))
    os.replace(tmp, path)


def _check_serve(cfg: CollectorConfig) -> None:
    """What ``serve`` needs from the machine, checked before it creates a store, a key or a
    checkpoint: TLS settings whose files can be read and belong together, and free ports."""
    from collector.server import InsecureRefusedError

    ca, cert, key = cfg.tls_client_ca, cfg.tls_cert, cfg.tls_key
    if ca is None or cert is None or key is None:  # all three or none (load_collector_config)
        if not cfg.insecure:
            raise InsecureRefusedError("refusing to serve plaintext gRPC without insecure = true")
    else:
        exitcodes.read_tls_files(("tls_client_ca", ca), ("tls_cert", cert), ("tls_key", key))
    exitcodes.check_port_free(cfg.listen, "gRPC address (listen)")
    if cfg.metrics_listen:
        exitcodes.check_port_free(cfg.metrics_listen, "metrics address (metrics_listen)")


def _cmd_serve(ns: argparse.Namespace) -> int:
    import errno

    from collector.detect.engine import DetectorEngine
    from collector.server import start_collector

    cfg, dcfg = load(ns)
    _check_serve(cfg)
    directory = tenants(cfg.tenants)  # a bad tenants file or screening list stops it here, before the store
    source = screening(cfg)
    store = open_store(cfg, create=True)
    try:
        site = site_tenants(cfg, directory)
        engine = DetectorEngine(dcfg, site if source is None else site.with_screening(source))
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
        tune_gc()
        if ns.ready_file:
            write_ready_file(Path(ns.ready_file), {"port": running.port, "metrics_port": running.metrics_port})
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
