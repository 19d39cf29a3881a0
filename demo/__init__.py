"""The demo site (``make demo``, ``gpuaudit-collector demo``): simulated agents streaming to a real
collector on one machine.

It composes ``agent`` (the replay) and ``collector`` (the server, the store), which do not import
each other, so it is a package of its own; nothing but ``python -m demo`` and the tests imports it.
"""
