"""What every concern of the NVML source shares: the binding, its constants, NVML's "value
not available" sentinels, and how a failed call becomes a reason.

Every reading that fails is recorded, not guessed: the value is None and
``unavailable[field]`` holds the NVML error's name (``NVML_ERROR_NOT_SUPPORTED`` ...) or a
reason of the source's own. Each distinct (GPU, field, reason) is logged once.
NVML_ERROR_GPU_IS_LOST is raised as :class:`GpuLostError`: the whole GPU is left out of the sample.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from agent.errors import AgentError
from agent.sources.nvml.api import Nvml
from agent.sources.nvml.constants import NvmlConstants

_logger = logging.getLogger(__name__)

MIB = 1024 * 1024
# NVML's "value not available" sentinels: (unsigned int)-1 and (unsigned long long)-1.
NA_UINT = 2**32 - 1
NA_ULONGLONG = 2**64 - 1
NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId when the GPU is not in MIG mode
# Reasons that mean "this GPU/driver has no such thing": logged at INFO, not as a warning.
_ABSENT = ("NVML_ERROR_NOT_SUPPORTED", "gpm_not_supported", "gpm_api_absent", "gpm_disabled", "api_absent")

P = ParamSpec("P")
T = TypeVar("T")


class GpuLostError(AgentError):
    """This GPU raised NVML_ERROR_GPU_IS_LOST; carries the reason string."""


class Ctx:
    """The binding, its constants and the log of what was noted, shared by the concerns."""

    def __init__(self, nvml: Nvml) -> None:
        self.nvml = nvml
        self.k = NvmlConstants.of(nvml)
        self.logged: set[tuple[int, str, str]] = set()

    # -- errors -----------------------------------------------------------------------

    def reason(self, e: BaseException) -> str:
        """The NVML_ERROR_* name of ``e``, or its class name when it carries no code."""
        value = getattr(e, "value", None)
        if isinstance(value, int):
            return self.code_name(value)
        return type(e).__name__

    def code_name(self, ret: int) -> str:
        """The NVML_ERROR_* name of a return code (of an exception or in a GPM metric, a field value)."""
        return self.k.error_names.get(ret, f"NVML_ERROR_{ret}")

    def is_(self, e: BaseException, name: str) -> bool:
        """Whether ``e`` is NVML_ERROR_<name> (``"NOT_FOUND"``); never when the binding lacks the code."""
        code = self.k.error(name)
        return code is not None and getattr(e, "value", None) == code

    def raise_if_lost(self, e: BaseException) -> None:
        """Raise :class:`GpuLostError` (from ``e``) when ``e`` is NVML_ERROR_GPU_IS_LOST."""
        if self.is_(e, "GPU_IS_LOST"):
            raise GpuLostError(self.reason(e)) from e

    def has(self, *names: str) -> bool:
        """Whether the binding has every one of ``names`` (an older pynvml may not)."""
        return all(hasattr(self.nvml, n) for n in names)

    # -- recording ----------------------------------------------------------------------

    def note(self, index: int, field: str, reason: str) -> None:
        """Log a field that could not be read, once per (GPU, field, reason)."""
        key = (index, field, reason)
        if key in self.logged:
            return
        self.logged.add(key)
        if reason in _ABSENT:
            _logger.info("GPU %d: %s is not available on this GPU/driver (%s)", index, field, reason)
        else:
            _logger.warning("GPU %d: cannot read %s: %s", index, field, reason)

    def mark(self, index: int, field: str, unavailable: dict[str, str], reason: str) -> None:
        """``unavailable[field] = reason``, noted once."""
        unavailable[field] = reason
        self.note(index, field, reason)

    def call(
        self, index: int, field: str, unavailable: dict[str, str], fn: Callable[P, T], *args: P.args, **kw: P.kwargs
    ) -> T | None:
        """``fn(*args)``; on an NVML error, None and ``unavailable[field] = reason``.

        NVML_ERROR_GPU_IS_LOST is raised as :class:`GpuLostError`.
        """
        try:
            return fn(*args, **kw)
        except self.nvml.NVMLError as e:
            self.raise_if_lost(e)
            self.mark(index, field, unavailable, self.reason(e))
            return None

    def opt(
        self,
        index: int,
        field: str,
        unavailable: dict[str, str],
        fn: Callable[P, T] | None,
        *args: P.args,
        **kw: P.kwargs,
    ) -> T | None:
        """Like :meth:`call`, for a function an older pynvml may lack: ``fn`` is None then
        (``nvml.f if c.has("f") else None``), and so is the result, with reason ``api_absent``."""
        if fn is None:
            self.mark(index, field, unavailable, "api_absent")
            return None
        return self.call(index, field, unavailable, fn, *args, **kw)

    def not_na(self, index: int, field: str, unavailable: dict[str, str], v: T | None, sentinel: int) -> T | None:
        """``v``, or None with reason NVML_VALUE_NOT_AVAILABLE when it is NVML's sentinel."""
        if v is not None and v == sentinel:
            self.mark(index, field, unavailable, "NVML_VALUE_NOT_AVAILABLE")
            return None
        return v


def text(v: object) -> str:
    """NVML strings: str in nvidia-ml-py, bytes in old pynvml releases; None -> ""."""
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)
