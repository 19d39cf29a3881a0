"""NVLink bandwidth without GPM (pre-Hopper, or GPM off).

The cumulative NVLink data counters ``NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX``/``_RX`` (KiB,
summed over all links: scope id UINT_MAX) are read with ``nvmlDeviceGetFieldValues`` and
turned into bytes per second from the difference between two samples over NVML's own
timestamps. A counter that goes back (driver reload, wrap) gives no rate for that sample
(``counter_reset``), never a number.
"""

from __future__ import annotations

from agent.sources.nvml.api import DeviceHandle
from agent.sources.nvml.common import Ctx

# nvmlFieldValue_t.scopeId for the NVLink throughput counters: UINT_MAX sums all links (nvml.h).
ALL_LINKS = 0xFFFFFFFF
_KIB = 1024
# nvmlFieldValue_t.valueType -> the member of the value union that holds it (nvml.h
# nvmlValueType_t); a throughput counter is an unsigned integer.
_FIELD_VALUE_MEMBER = {1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
# GpuSample field -> NVML field id name
_FIELDS = (
    ("nvlink_tx_bytes_per_s", "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX"),
    ("nvlink_rx_bytes_per_s", "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX"),
)


class NvlinkCounters:
    """Per GPU: the previous reading of each counter (KiB, NVML's time in s), or why the
    counters are not read (the GPU has no NVLink, or the binding cannot read them)."""

    def __init__(self, c: Ctx) -> None:
        self._c = c
        self._prev: dict[tuple[int, str], tuple[int, float]] = {}  # (GPU, field) -> (KiB, s)
        self._off: dict[int, str] = {}  # GPU -> why its NVLink counters are not read

    def read(self, i: int, h: DeviceHandle, un: dict[str, str], t: float, no_gpm: str) -> dict[str, float]:
        """NVLink bytes per second from the cumulative KiB data counters (all links), for a
        GPU without GPM: the counter's difference since the previous sample over the time
        between NVML's timestamps of the two readings (``t``, the sample clock, where NVML
        gives none). ``no_gpm`` is why the GPU has no GPM: it stands for the counters too
        when the binding cannot read them.
        """
        c, nvml, k = self._c, self._c.nvml, self._c.k
        off = self._off.get(i)
        if off is None and not (c.has("nvmlDeviceGetFieldValues") and all(n in k.fields for _, n in _FIELDS)):
            off = self._off[i] = no_gpm
        if off is not None:
            for f, _ in _FIELDS:
                c.mark(i, f, un, off)
            return {}
        try:
            values = nvml.nvmlDeviceGetFieldValues(h, [(k.fields[n], ALL_LINKS) for _, n in _FIELDS])
        except nvml.NVMLError as e:
            c.raise_if_lost(e)
            reason = c.reason(e)
            if c.is_(e, "NOT_SUPPORTED"):
                self._off[i] = reason  # no NVLink on this GPU: not asked again
            for f, _ in _FIELDS:
                c.mark(i, f, un, reason)
            return {}
        out: dict[str, float] = {}
        unsupported = 0
        for (f, _), v in zip(_FIELDS, values, strict=True):
            ret = int(v.nvmlReturn)
            if ret != k.success:
                unsupported += ret == k.error("NOT_SUPPORTED")
                c.mark(i, f, un, c.code_name(ret))
                continue
            member = _FIELD_VALUE_MEMBER.get(int(v.valueType))
            kib = int(getattr(v.value, member)) if member is not None else -1
            if kib < 0:
                c.mark(i, f, un, "unexpected_value_type" if member is None else "NVML_VALUE_NOT_AVAILABLE")
                continue
            at = int(v.timestamp) / 1e6 if int(v.timestamp) > 0 else t
            prev = self._prev.get((i, f))
            self._prev[(i, f)] = (kib, at)
            if prev is None:
                un[f] = "first_sample"
            elif kib < prev[0]:
                # Reset (driver reload) or wrap: the bytes moved since are unknown.
                c.mark(i, f, un, "counter_reset")
            elif at <= prev[1]:
                c.mark(i, f, un, "no_interval")
            else:
                un.pop(f, None)
                out[f] = (kib - prev[0]) * _KIB / (at - prev[1])
        if unsupported == len(_FIELDS):
            self._off[i] = "NVML_ERROR_NOT_SUPPORTED"
        return out
