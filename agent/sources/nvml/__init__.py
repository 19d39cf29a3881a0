"""The NVML source: reads NVIDIA GPUs through ``pynvml`` (package nvidia-ml-py).

Only this package calls NVML, and only through the typed interface of :mod:`.api` (every
call the source makes, with its units). Every reading that fails is recorded, not guessed:
the value is None and ``unavailable[field]`` holds the NVML error's name
(``NVML_ERROR_NOT_SUPPORTED``, ``NVML_ERROR_NO_PERMISSION`` ...) or one of the source's
reasons (``gpm_not_supported``, ``gpm_api_absent``, ``first_sample``,
``NVML_VALUE_NOT_AVAILABLE``, ``proc_unreadable``). Each distinct (GPU, field, reason) is
logged once, not every second.

One module per concern, each holding its own per-GPU state:

- :mod:`.api`: the NVML interface (a Protocol) and its constants; :mod:`.common`: errors
  into reasons, logging once, NVML's sentinels;
- :mod:`.identity`: identity and limits (PCI bus id, board part number, VBIOS, driver and
  CUDA driver versions, architecture, MIG and confidential-computing mode);
- :mod:`.activity`: utilisation, memory, power, energy;
- :mod:`.processes`: compute list, MPS clients, accounting, per-process SM share;
- :mod:`.health`: temperature, clocks, ECC, retired pages, remapped rows, Xid events;
- :mod:`.gpm`: GPM metrics (Hopper and newer); :mod:`.nvlink`: NVLink counters without GPM;
- :mod:`.mig`: MIG instances; :mod:`.confidential`: CC attestation reports;
- :mod:`.source`: :class:`NvmlSource`, which puts them together.

Units, as NVML gives them: power in milliwatts, energy in millijoules since the driver was
loaded, memory in bytes, utilisation in percent. GPM bandwidths come in MiB/s and are
converted to bytes per second.
"""

from agent.sources.nvml.source import NvmlSource

__all__ = ["NvmlSource"]
