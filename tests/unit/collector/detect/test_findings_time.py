"""Finding times: RFC 3339 text and back, exactly (findings carry them; warm-up and the report read them)."""

from __future__ import annotations

import pytest

from collector.detect.findings import parse_rfc3339_ms, rfc3339_ms


@pytest.mark.parametrize("ms", [0, 999, 1_772_424_000_000, 1_772_424_000_123, 1_772_424_000_001, 4_102_444_799_999])
def test_rfc3339_round_trip_is_exact(ms: int) -> None:
    assert parse_rfc3339_ms(rfc3339_ms(ms)) == ms


def test_offsets_are_honoured_and_garbage_is_refused() -> None:
    assert parse_rfc3339_ms("2026-03-02T06:00:00+02:00") == parse_rfc3339_ms("2026-03-02T04:00:00Z")
    with pytest.raises(ValueError):
        parse_rfc3339_ms("yesterday")
