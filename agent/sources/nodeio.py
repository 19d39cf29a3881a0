"""Node I/O beside the GPUs: InfiniBand, network and disk rates in bytes per second.

Rates are deltas of monotonically increasing counters between two calls, divided by the
monotonic time between them. A rate that cannot be computed is None, with a reason:

- ``first_sample``: no earlier reading to subtract from;
- ``counter_reset``: a counter went backwards (driver reload, hot-plug, wrap);
- ``no_infiniband``: no ``class/infiniband/*/ports/*/counters`` under the sysfs root;
- ``psutil_not_installed``: network and disk need psutil;
- ``read_error``: a counter file exists but could not be read or parsed.

InfiniBand ``port_xmit_data`` / ``port_rcv_data`` count in units of 4 bytes (the IBA
PortCounters "octets divided by 4"), so they are multiplied by 4 here. Network counts only
physical interfaces (those with ``class/net/<nic>/device``), so that traffic through a
container's veth pair and bridge is not counted three times; disk counts only whole block
devices backed by hardware (``block/<dev>/device``), not partitions, dm or loop devices.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.samples import NodeIoSample

_logger = logging.getLogger(__name__)

IB_COUNTER_UNIT_BYTES = 4

_FIELDS = (
    "ib_tx_bytes_per_s",
    "ib_rx_bytes_per_s",
    "net_tx_bytes_per_s",
    "net_rx_bytes_per_s",
    "disk_read_bytes_per_s",
    "disk_write_bytes_per_s",
)


@dataclass(frozen=True)
class _Counters:
    """Cumulative byte counters at monotonic time ``mono_s``; None: not readable, with reason."""

    mono_s: float
    values: dict[str, int | None]
    reasons: dict[str, str]


class NodeIo:
    """Computes :class:`NodeIoSample` rates from sysfs and psutil counters.

    ``sysfs_root`` is where sysfs is mounted ("/sys" on a node; a fixture tree in tests).
    ``psutil_module`` defaults to ``import psutil`` at construction; pass a fake in tests.
    ``clock`` is a monotonic clock in seconds.
    """

    def __init__(
        self,
        sysfs_root: str | os.PathLike[str] = "/sys",
        *,
        psutil_module: Any | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sysfs = Path(sysfs_root)
        self._clock = clock
        self._psutil: Any | None = psutil_module
        if self._psutil is None:
            try:
                import psutil

                self._psutil = psutil
            except ImportError:
                _logger.warning("psutil is not installed: network and disk rates will be unavailable")
        self._prev: _Counters | None = None
        self._logged: set[tuple[str, str]] = set()

    # -- counters ---------------------------------------------------------------------

    def _ib(self) -> tuple[int | None, int | None, str | None]:
        """(tx bytes, rx bytes, reason) summed over every InfiniBand port."""
        ports = sorted(self._sysfs.glob("class/infiniband/*/ports/*/counters"))
        if not ports:
            return None, None, "no_infiniband"
        tx = rx = 0
        for counters in ports:
            try:
                tx += int((counters / "port_xmit_data").read_text().strip()) * IB_COUNTER_UNIT_BYTES
                rx += int((counters / "port_rcv_data").read_text().strip()) * IB_COUNTER_UNIT_BYTES
            except (OSError, ValueError) as e:
                _logger.debug("cannot read InfiniBand counters in %s: %s", counters, e)
                return None, None, "read_error"
        return tx, rx, None

    def _net(self) -> tuple[int | None, int | None, str | None]:
        if self._psutil is None:
            return None, None, "psutil_not_installed"
        try:
            nics: dict[str, Any] = self._psutil.net_io_counters(pernic=True)
        except OSError as e:
            _logger.debug("psutil.net_io_counters failed: %s", e)
            return None, None, "read_error"
        tx = rx = 0
        for name, c in nics.items():
            if (self._sysfs / "class" / "net" / name / "device").exists():
                tx += int(c.bytes_sent)
                rx += int(c.bytes_recv)
        return tx, rx, None

    def _disk(self) -> tuple[int | None, int | None, str | None]:
        if self._psutil is None:
            return None, None, "psutil_not_installed"
        try:
            disks: dict[str, Any] | None = self._psutil.disk_io_counters(perdisk=True)
        except OSError as e:
            _logger.debug("psutil.disk_io_counters failed: %s", e)
            return None, None, "read_error"
        read = write = 0
        for name, c in (disks or {}).items():
            if (self._sysfs / "block" / name / "device").exists():
                read += int(c.read_bytes)
                write += int(c.write_bytes)
        return read, write, None

    def _read(self) -> _Counters:
        values: dict[str, int | None] = {}
        reasons: dict[str, str] = {}
        for prefix, (a, b, reason) in (("ib", self._ib()), ("net", self._net()), ("disk", self._disk())):
            names = ("disk_read", "disk_write") if prefix == "disk" else (f"{prefix}_tx", f"{prefix}_rx")
            for name, v in zip(names, (a, b), strict=True):
                values[f"{name}_bytes_per_s"] = v
                if reason is not None:
                    reasons[f"{name}_bytes_per_s"] = reason
        return _Counters(mono_s=self._clock(), values=values, reasons=reasons)

    # -- rates ------------------------------------------------------------------------

    def sample(self) -> tuple[NodeIoSample, dict[str, str]]:
        """Rates since the previous call (bytes per second), and ``{field: reason}`` for Nones.

        Field names in the reasons are those of :class:`NodeIoSample`; the caller prefixes
        them (``node_io.``) when it merges them into a ``NodeSample``.
        """
        cur = self._read()
        prev, self._prev = self._prev, cur
        rates: dict[str, float | None] = {}
        reasons: dict[str, str] = {}
        for f in _FIELDS:
            v = cur.values[f]
            reason = cur.reasons.get(f)
            rate: float | None = None
            if reason is None and v is not None:
                p = prev.values.get(f) if prev is not None else None
                dt = cur.mono_s - prev.mono_s if prev is not None else 0.0
                if prev is None or p is None:
                    reason = "first_sample"
                elif dt <= 0:
                    reason = "zero_interval"
                elif v < p:
                    reason = "counter_reset"
                else:
                    rate = (v - p) / dt
            elif reason is None:
                reason = "read_error"
            rates[f] = rate
            if reason is not None:
                reasons[f] = reason
                if reason not in ("first_sample",) and (f, reason) not in self._logged:
                    self._logged.add((f, reason))
                    _logger.info("node I/O %s unavailable: %s", f, reason)
        return NodeIoSample(**rates), reasons
