"""Chain rules: which statement may follow which, and the reason given when one may not."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from attestation.chain import ENERGY_RESET_EVENT, ChainHead, advance, check_next
from attestation.errors import ChainError, VerificationError
from attestation.statement import Chain, Event, GpuWindow, UsageWindow

KEY = "sha256:" + "1" * 64
OTHER_KEY = "sha256:" + "2" * 64
W = 60_000
T0 = 1_700_000_040_000


def digest(n: int) -> str:
    return f"{n:064x}"


def gpu(uuid: str = "GPU-0", start: int | None = 1000, end: int | None = 2000, reset: bool = False) -> GpuWindow:
    return GpuWindow(
        index=0,
        uuid=uuid,
        serial=None,
        model="m",
        mem_total_bytes=None,
        power_limit_mw=None,
        samples=60,
        energy_start_mj=start,
        energy_end_mj=end,
        power_mean_mw=None,
        power_max_mw=None,
        util_mean_permille=None,
        mem_used_max_bytes=None,
        workloads=(),
        events=(Event(ENERGY_RESET_EVENT, "driver reload"),) if reset else (Event("xid", "79"),),
    )


def stmt(seq: int, *, key: str = KEY, prev: Any = "auto", start_ms: int | None = None, gpus: Any = None) -> UsageWindow:
    """Statement ``seq`` of a regular chain: window seq, prev = digest(seq - 1), energy rising 1000 per window."""
    if prev == "auto":
        prev = digest(seq - 1) if seq else None
    start = T0 + seq * W if start_ms is None else start_ms
    if gpus is None:
        gpus = (gpu(start=1000 * (seq + 1), end=1000 * (seq + 2)),)
    return UsageWindow(
        node_id="n1",
        boot_id="b1",
        agent_version="0",
        start_ms=start,
        end_ms=start + W,
        sample_interval_ms=1000,
        chain=Chain(key_id=key, seq=seq, prev=prev),
        gpus=tuple(gpus),
    )


def head_after(n: int) -> ChainHead:
    """The head after accepting statements 0..n of the regular chain."""
    head = None
    for i in range(n + 1):
        s = stmt(i)
        check_next(head, s, digest(i), KEY)
        head = advance(head, s, digest(i))
    assert head is not None
    return head


def test_a_regular_chain_is_accepted_and_the_head_follows_it() -> None:
    head = head_after(4)
    assert head == ChainHead(
        key_id=KEY, seq=4, digest=digest(4), end_ms=T0 + 5 * W, boot_id="b1", energy_end_mj={"GPU-0": 6000}
    )


# (case id, head seq or None for a new chain, statement, reason)
REFUSED: list[tuple[str, int | None, UsageWindow, str]] = [
    ("first-statement-not-seq-0", None, stmt(1), "seq_gap"),
    ("first-statement-seq-5", None, stmt(5), "seq_gap"),
    ("replay-of-head", 2, stmt(2), "seq_replay"),
    ("replay-of-older", 2, stmt(0), "seq_replay"),
    ("gap-of-one", 2, stmt(4), "seq_gap"),
    ("prev-names-an-older-statement", 2, stmt(3, prev=digest(1)), "prev_mismatch"),
    ("prev-names-a-fork", 2, stmt(3, prev=digest(99)), "prev_mismatch"),
    ("prev-missing-after-seq-0", 0, stmt(1, prev=None), "prev_mismatch"),
    ("window-starts-inside-previous", 2, stmt(3, start_ms=T0 + 3 * W - 1), "window_overlap"),
    ("window-same-as-previous", 2, stmt(3, start_ms=T0 + 2 * W), "window_overlap"),
    ("window-before-previous", 2, stmt(3, start_ms=T0), "window_overlap"),
    ("energy-decreases-within-window", 2, stmt(3, gpus=[gpu(start=5000, end=4999)]), "energy_decrease"),
    ("energy-decreases-across-windows", 2, stmt(3, gpus=[gpu(start=3999, end=5000)]), "energy_decrease"),
    ("energy-from-zero-without-reset", 2, stmt(3, gpus=[gpu(start=0, end=10)]), "energy_decrease"),
    ("key-mismatch-new-chain", None, stmt(0, key=OTHER_KEY), "key_mismatch"),
    ("key-mismatch-in-chain", 2, stmt(3, key=OTHER_KEY), "key_mismatch"),
]


@pytest.mark.parametrize(
    ("head_seq", "s", "reason"), [(h, s, r) for _, h, s, r in REFUSED], ids=[i for i, _, _, _ in REFUSED]
)
def test_check_next_refuses_with_a_specific_reason(head_seq: int | None, s: UsageWindow, reason: str) -> None:
    head = None if head_seq is None else head_after(head_seq)
    with pytest.raises(ChainError) as exc:
        check_next(head, s, digest(s.chain.seq), KEY)
    assert exc.value.reason == reason, f"expected {reason!r}, got {exc.value.reason!r}: {exc.value}"
    assert isinstance(exc.value, VerificationError), "chain errors must be verification errors"


ACCEPTED: list[tuple[str, int | None, UsageWindow]] = [
    ("seq-0-new-chain", None, stmt(0)),
    ("next-in-chain", 2, stmt(3)),
    ("window-starts-exactly-at-previous-end", 2, stmt(3, start_ms=T0 + 3 * W)),
    ("window-after-a-gap-in-time", 2, stmt(3, start_ms=T0 + 100 * W)),
    ("energy-flat", 2, stmt(3, gpus=[gpu(start=4000, end=4000)])),
    ("energy-reset-within-window", 2, stmt(3, gpus=[gpu(start=4000, end=10, reset=True)])),
    ("energy-reset-across-windows", 2, stmt(3, gpus=[gpu(start=0, end=10, reset=True)])),
    ("energy-unreadable", 2, stmt(3, gpus=[gpu(start=None, end=None)])),
    ("energy-end-unreadable", 2, stmt(3, gpus=[gpu(start=4000, end=None)])),
    ("new-gpu-appears", 2, stmt(3, gpus=[gpu(start=4000, end=5000), gpu(uuid="GPU-NEW", start=1, end=2)])),
    ("first-statement-energy-any-level", None, stmt(0, gpus=[gpu(start=10**15, end=10**15 + 1)])),
]


@pytest.mark.parametrize(("head_seq", "s"), [(h, s) for _, h, s in ACCEPTED], ids=[i for i, _, _ in ACCEPTED])
def test_check_next_accepts(head_seq: int | None, s: UsageWindow) -> None:
    head = None if head_seq is None else head_after(head_seq)
    check_next(head, s, digest(s.chain.seq), KEY)


def test_reset_event_on_another_gpu_does_not_excuse_a_decrease() -> None:
    s = stmt(3, gpus=[gpu(start=3000, end=3500), gpu(uuid="GPU-1", start=0, end=1, reset=True)])
    with pytest.raises(ChainError) as exc:
        check_next(head_after(2), s, digest(3), KEY)
    assert exc.value.reason == "energy_decrease"
    assert "GPU-0" in str(exc.value), f"the error should name the GPU whose counter went back: {exc.value}"


def test_energy_after_a_reset_is_the_new_baseline() -> None:
    head = head_after(2)
    reset = stmt(3, gpus=[gpu(start=0, end=100, reset=True)])
    check_next(head, reset, digest(3), KEY)
    head = advance(head, reset, digest(3))
    assert head.energy_end_mj == {"GPU-0": 100}
    check_next(head, stmt(4, gpus=[gpu(start=100, end=200)]), digest(4), KEY)
    with pytest.raises(ChainError, match="below 100 mJ"):
        check_next(head, stmt(4, gpus=[gpu(start=99, end=200)]), digest(4), KEY)


def test_energy_of_a_gpu_missing_from_a_window_is_remembered() -> None:
    head = head_after(2)  # GPU-0 ended at 4000
    no_gpu = stmt(3, gpus=[])
    check_next(head, no_gpu, digest(3), KEY)
    head = advance(head, no_gpu, digest(3))
    assert head.energy_end_mj == {"GPU-0": 4000}, "a window without the GPU must not forget its counter"
    with pytest.raises(ChainError) as exc:
        check_next(head, stmt(4, gpus=[gpu(start=3000, end=3100)]), digest(4), KEY)
    assert exc.value.reason == "energy_decrease"


def test_advance_does_not_mutate_the_previous_head() -> None:
    head = head_after(1)
    before = dataclasses.replace(head, energy_end_mj=dict(head.energy_end_mj))
    advance(head, stmt(2, gpus=[gpu(start=3000, end=7777)]), digest(2))
    assert head == before
