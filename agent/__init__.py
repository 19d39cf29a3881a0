"""gpuaudit node agent: reads GPU telemetry, attributes it to tenants, signs usage windows."""

__version__ = "0.1.0"
