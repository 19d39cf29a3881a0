"""Run a producer one item ahead of its consumer, in a second process.

``detect --prometheus`` spends its time in two places that can overlap: reading and
windowing a chunk (requests, JSON, ``WindowBuilder.compute``) and the detector on the chunk
before it. ``run_ahead`` forks a worker that iterates the producer and sends each item over
a pipe; the consumer gets the items in the producer's order, so the detector is fed in
event-time order and sees exactly what the sequential path would give it
(tests/unit/collector/prometheus/test_pipeline.py).

Memory stays bounded: the pipe holds no more than the kernel's buffer, so the worker blocks
in ``send`` once it has one item ready that the consumer has not taken; at most one item is
being consumed, one waits in the worker and one is being made.

It needs ``fork`` (the producer is a closure over the history, its client and its builder,
none of which need to be picklable) and a second CPU; where either is missing, ``usable()``
is false and the caller runs the producer in its own process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

from collector.prometheus.client import PrometheusError
from core.nogc import no_gc

_logger = logging.getLogger(__name__)

T = TypeVar("T")


class WorkerError(PrometheusError):
    """The worker process ended without saying why (killed, out of memory), or raised an
    exception that does not pickle (its type and text)."""


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def usable() -> bool:
    """Whether a worker process can run ahead here: ``fork`` exists and there are >= 2 CPUs."""
    return "fork" in multiprocessing.get_all_start_methods() and cpus() >= 2


def _worker(produce: Callable[[], Iterator[Any]], finish: Callable[[], Any], conn: Connection) -> None:
    try:
        for item in produce():
            with no_gc():
                blob = pickle.dumps(("item", item), protocol=pickle.HIGHEST_PROTOCOL)
            conn.send_bytes(blob)
            del item, blob
        conn.send_bytes(pickle.dumps(("done", finish()), protocol=pickle.HIGHEST_PROTOCOL))
    except KeyboardInterrupt:
        pass  # the consumer has it too and says so
    except BrokenPipeError:
        pass  # the consumer stopped early
    except BaseException as exc:  # noqa: BLE001 (everything goes back to the consumer, which raises it)
        try:
            blob = pickle.dumps(("error", exc), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 (an exception that does not pickle: its text)
            blob = pickle.dumps(("error", WorkerError(f"{type(exc).__name__}: {exc}")))
        try:
            conn.send_bytes(blob)
        except OSError:
            pass
    finally:
        conn.close()


class RunAhead(Generic[T]):
    """Iterate ``produce()`` in a forked worker one item ahead of the consumer. After the
    last item, ``finished`` holds what ``finish()`` returned in the worker (its state, for
    instance). An exception in the worker is raised here, with its type, when the consumer
    reaches it."""

    def __init__(self, produce: Callable[[], Iterator[T]], finish: Callable[[], Any]) -> None:
        self.produce = produce
        self.finish = finish
        self.finished: Any = None

    def __iter__(self) -> Iterator[T]:
        ctx = multiprocessing.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(self.produce, self.finish, send), name="gpuaudit-windows")
        proc.daemon = True
        proc.start()
        send.close()
        try:
            while True:
                try:
                    with no_gc():
                        kind, payload = pickle.loads(recv.recv_bytes())
                except EOFError:
                    proc.join(timeout=5)
                    raise WorkerError(
                        f"the process building the windows ended unexpectedly (exit code {proc.exitcode})",
                        "It may have run out of memory: try a shorter --start/--end span, or --no-pipeline "
                        "to build the windows in the detector's own process.",
                    ) from None
                if kind == "item":
                    yield payload
                elif kind == "done":
                    self.finished = payload
                    return
                else:
                    raise payload
        finally:
            recv.close()
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=10)


__all__ = ["RunAhead", "WorkerError", "cpus", "usable"]
