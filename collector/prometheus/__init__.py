"""Detection on the operator's Prometheus history: dcgm-exporter series in, findings out.

``client`` reads the Prometheus HTTP API (standard library only: bearer token or basic auth,
a custom CA bundle, timeouts, requests split by time and host to stay within the server's
limits); ``windows`` turns the series into the same ``UsageWindow`` records the agents sign,
unsigned; ``rules`` reads the tenant rules (the agent's ``[tenants]`` table); ``source``
ties them together for ``gpuaudit-collector detect --prometheus``.

This is operator data: nothing is signed, and dcgm-exporter labels GPUs with a pod or an HPC
job, never with processes. Findings from it say so (``"source": "prometheus"``).
"""
