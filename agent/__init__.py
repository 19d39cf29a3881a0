"""gpuaudit node agent: reads GPU telemetry, attributes it to tenants, signs usage windows.

Its version is gpuaudit's, ``core.__version__`` (from the package metadata).
"""
