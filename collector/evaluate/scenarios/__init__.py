"""Scenario generators for the detector's evaluation (``python -m collector.evaluate``).

Written from the physics and the published descriptions of the workloads, not from the
detector: ``physics`` (per-GPU readings per GPU model), ``training`` (positives: large runs
of many shapes), ``negatives`` (inference, fleets, sweeps, small jobs), ``shocks`` (site-wide
common events), ``masks`` (telemetry fields delivered), ``site`` (sampling into Trace v1) and
``family`` (the list of scenarios, their axes, and what is held out).
"""
