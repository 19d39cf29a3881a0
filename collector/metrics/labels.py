"""The bounded label values of the collector's metrics, and its histograms' buckets.

Series that alerts take ``increase()`` of are created at 0 for each of these values before
their first event (collector/metrics/exporter.py): ``increase()`` cannot see the step from
"no series" to 1.
"""

from __future__ import annotations

# Every reason ingest and the service refuse a statement with (collector/ingest.py,
# collector/service.py, attestation/chain.py). Others are counted too, from their first.
REFUSAL_REASONS = (
    "unknown_key",
    "revoked_key",
    "too_large",
    "malformed_envelope",
    "bad_payload_type",
    "bad_signature",
    "bad_schema",
    "bad_predicate_type",
    "node_mismatch",
    "key_mismatch",
    "seq_gap",
    "prev_mismatch",
    "seq_replay",
    "equivocation",
    "window_overlap",
    "energy_decrease",
    "internal_error",
    "no_hello",
    "unexpected_message",
    # Streams refused by the collector's limits (collector/service.py); the agent retries later.
    "rate_limited",
    "too_many_streams",
    "hello_timeout",
    "malformed_message",
)
# Why agents drop unsent statements (attestation.statement.Dropped.reason); others count as "other".
AGENT_DROP_REASONS = ("spool_size", "spool_age")
# Refusals that mean a node's chain is broken (a statement missing) or forked (two
# different statements claim one place in it).
CHAIN_BREAK_REASONS = ("seq_gap", "prev_mismatch", "seq_replay", "equivocation")
ENROLL_REFUSAL_REASONS = (
    "bad_request",
    "bad_key",
    "bad_token",
    "token_used",
    "token_expired",
    "key_exists",
    "timeout",
)

BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

OTHER_TENANTS = "_other"
# ``tenant_pseudonym`` of a finding whose tenant the statements name by something other than a pseudonym.
NOT_PSEUDONYMISED = "not_pseudonymised"
# The ``level`` label of the findings-by-axis gauges (collector/detect/build.py, evidence.levels).
OPACITY_LEVELS = ("transparent", "partly_opaque", "opaque")
END_USE_LEVELS = ("none", "elevated", "high", "not_assessed")
