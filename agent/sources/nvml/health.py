"""Health and Xid errors of a GPU.

Health: temperature (C), SM and memory clocks (MHz) and the throttle-reason mask every
sample; ECC counters, retired pages and remapped rows, which change rarely, every
``SLOW_EVERY`` samples (the last reading is repeated in between). Xid errors come through
one NVML event set per GPU, drained with a timeout of 0 so the sampling path never blocks.
"""

from __future__ import annotations

import contextlib
import logging

from agent.sources.nvml.api import DeviceHandle, EventSet
from agent.sources.nvml.common import NO_INSTANCE, Ctx

_logger = logging.getLogger(__name__)

# ECC, retired pages and remapped rows change rarely: read them every this many samples.
SLOW_EVERY = 10
MAX_EVENTS_PER_SAMPLE = 64  # Xid events drained per GPU per sample (the rest wait for the next)


class Health:
    """Health readings; per GPU, the slow counters' last reading and when it was taken."""

    def __init__(self, c: Ctx) -> None:
        self._c = c
        self._slow: dict[int, tuple[int, dict[str, int], dict[str, str]]] = {}  # GPU -> (tick, values, reasons)

    def read(self, i: int, h: DeviceHandle, un: dict[str, str]) -> dict[str, int]:
        """Temperature, clocks, throttle reasons now; ECC, retired pages, remapped rows every
        ``SLOW_EVERY`` samples."""
        c, nvml, k = self._c, self._c.nvml, self._c.k
        out: dict[str, int] = {}
        temp = c.opt(
            i,
            "health.temp_gpu_c",
            un,
            nvml.nvmlDeviceGetTemperature if c.has("nvmlDeviceGetTemperature") else None,
            h,
            k.temperature_gpu,
        )
        if temp is not None:
            out["temp_gpu_c"] = int(temp)
        clock_info = nvml.nvmlDeviceGetClockInfo if c.has("nvmlDeviceGetClockInfo") else None
        for key, clock in (("sm_clock_mhz", k.clock_sm), ("mem_clock_mhz", k.clock_mem)):
            v = c.opt(i, f"health.{key}", un, clock_info, h, clock)
            if v is not None:
                out[key] = int(v)
        if c.has("nvmlDeviceGetCurrentClocksEventReasons"):
            mask = c.call(i, "health.throttle_reasons_mask", un, nvml.nvmlDeviceGetCurrentClocksEventReasons, h)
        else:
            mask = c.opt(
                i,
                "health.throttle_reasons_mask",
                un,
                nvml.nvmlDeviceGetCurrentClocksThrottleReasons
                if c.has("nvmlDeviceGetCurrentClocksThrottleReasons")
                else None,
                h,
            )
        if mask is not None:
            out["throttle_reasons_mask"] = int(mask)
        tick, slow, slow_un = self._slow.get(i, (0, {}, {}))
        if tick % SLOW_EVERY == 0:
            slow, slow_un = self._read_slow(i, h)
        self._slow[i] = (tick + 1, slow, slow_un)
        un.update(slow_un)
        out.update(slow)
        return out

    def _read_slow(self, i: int, h: DeviceHandle) -> tuple[dict[str, int], dict[str, str]]:
        c, nvml, k = self._c, self._c.nvml, self._c.k
        out: dict[str, int] = {}
        un: dict[str, str] = {}
        ecc = nvml.nvmlDeviceGetTotalEccErrors if c.has("nvmlDeviceGetTotalEccErrors") else None
        for err, err_name in ((k.memory_error_corrected, "corrected"), (k.memory_error_uncorrected, "uncorrected")):
            for counter, counter_name in ((k.volatile_ecc, "volatile"), (k.aggregate_ecc, "aggregate")):
                key = f"ecc_{counter_name}_{err_name}"
                v = c.opt(i, f"health.{key}", un, ecc, h, err, counter)
                if v is not None:
                    out[key] = int(v)
        retired = nvml.nvmlDeviceGetRetiredPages if c.has("nvmlDeviceGetRetiredPages") else None
        for key, cause in (("retired_pages_sbe", k.retired_sbe), ("retired_pages_dbe", k.retired_dbe)):
            pages = c.opt(i, f"health.{key}", un, retired, h, cause)
            if pages is not None:
                out[key] = len(pages)
        pending = c.opt(
            i,
            "health.retired_pages_pending",
            un,
            nvml.nvmlDeviceGetRetiredPagesPendingStatus if c.has("nvmlDeviceGetRetiredPagesPendingStatus") else None,
            h,
        )
        if pending is not None:
            out["retired_pages_pending"] = int(pending)
        rows = c.opt(
            i,
            "health.remapped_rows_correctable",
            un,
            nvml.nvmlDeviceGetRemappedRows if c.has("nvmlDeviceGetRemappedRows") else None,
            h,
        )
        if rows is not None:
            corr, unc, pend, fail = (int(x) for x in rows)
            out.update(
                remapped_rows_correctable=corr,
                remapped_rows_uncorrectable=unc,
                remapped_rows_pending=pend,
                remapped_rows_failure=fail,
            )
        elif "health.remapped_rows_correctable" in un:
            reason = un["health.remapped_rows_correctable"]
            for key in ("remapped_rows_uncorrectable", "remapped_rows_pending", "remapped_rows_failure"):
                un[f"health.{key}"] = reason
        return out, un


class Xid:
    """Xid critical errors: per GPU, one registered event set, or why there is none."""

    def __init__(self, c: Ctx) -> None:
        self._c = c
        self._sets: dict[int, EventSet] = {}
        self._reason: dict[int, str] = {}

    def setup(self, i: int, h: DeviceHandle) -> None:
        """One event set for GPU ``i``, registered for Xid critical errors; else the reason is kept."""
        c, nvml = self._c, self._c.nvml
        if (
            not c.has("nvmlEventSetCreate", "nvmlDeviceRegisterEvents", "nvmlEventSetFree")
            or c.k.xid_event is None
            or not (c.has("nvmlEventSetWait_v2") or c.has("nvmlEventSetWait"))
        ):
            self._reason[i] = "api_absent"
            return
        event_set = None
        try:
            event_set = nvml.nvmlEventSetCreate()
            nvml.nvmlDeviceRegisterEvents(h, c.k.xid_event, event_set)
        except nvml.NVMLError as e:
            if event_set is not None:
                with contextlib.suppress(nvml.NVMLError):
                    nvml.nvmlEventSetFree(event_set)
            self._reason[i] = c.reason(e)
            return
        self._sets[i] = event_set

    def drain(self, i: int, un: dict[str, str]) -> tuple[tuple[str, str], ...]:
        """GPU ``i``'s pending Xid events, without waiting (timeout 0): ``("xid", "Xid 79")``..."""
        c, nvml = self._c, self._c.nvml
        event_set = self._sets.get(i)
        if event_set is None:
            c.mark(i, "xid_events", un, self._reason.get(i, "api_absent"))
            return ()
        wait = nvml.nvmlEventSetWait_v2 if c.has("nvmlEventSetWait_v2") else nvml.nvmlEventSetWait
        out: list[tuple[str, str]] = []
        for _ in range(MAX_EVENTS_PER_SAMPLE):
            try:
                data = wait(event_set, 0)
            except nvml.NVMLError as e:
                if c.is_(e, "TIMEOUT"):
                    break  # nothing (more) pending
                c.raise_if_lost(e)
                c.mark(i, "xid_events", un, c.reason(e))
                break
            detail = f"Xid {int(data.eventData)}"
            gi, ci = (
                int(getattr(data, "gpuInstanceId", NO_INSTANCE)),
                int(getattr(data, "computeInstanceId", NO_INSTANCE)),
            )
            if gi != NO_INSTANCE:
                detail += f" in GPU instance {gi}" + (f" compute instance {ci}" if ci != NO_INSTANCE else "")
            _logger.warning("GPU %d: %s", i, detail)
            out.append(("xid", detail))
        return tuple(out)

    def close(self) -> None:
        """Free every event set."""
        nvml = self._c.nvml
        for i, event_set in self._sets.items():
            try:
                nvml.nvmlEventSetFree(event_set)
            except nvml.NVMLError as e:
                _logger.debug("GPU %d: nvmlEventSetFree failed: %s", i, self._c.reason(e))
        self._sets.clear()
