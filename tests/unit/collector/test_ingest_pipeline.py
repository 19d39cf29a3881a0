"""IngestBatcher's two stages: a batch is verified while the one before it commits; batches
commit one at a time, in arrival order; a failed commit acks nothing of its batch and holds
back the batches after it (tests/unit/collector/test_ingest_store_faults.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from attestation.dsse import Envelope
from collector.errors import StoreError
from collector.ingest import Accepted, IngestResult, VerifiedBatch
from collector.metrics import CollectorMetrics
from collector.service import IngestBatcher, Unstored


class _ScriptedIngestor:
    """Records the order of verify/commit calls; the first commit waits until the second
    batch has been verified, which only a pipelined batcher lets happen."""

    def __init__(self, fail_commit_of: int | None = None) -> None:
        self.events: list[str] = []
        self.second_verified = threading.Event()
        self.fail_commit_of = fail_commit_of
        self._lock = threading.Lock()
        self.committing = 0
        self.most_at_once = 0

    def _log(self, event: str) -> None:
        with self._lock:
            self.events.append(event)

    def verify_batch(self, items: Sequence[tuple[str, Envelope]]) -> VerifiedBatch:
        n = int(items[0][0])
        self._log(f"verify {n}")
        if n == 2:
            self.second_verified.set()
        return VerifiedBatch(len(items), n, [None] * len(items), [], [])

    def commit_batch(self, batch: VerifiedBatch) -> list[IngestResult]:
        n = batch.now_ms  # the batch number, carried through now_ms by verify_batch above
        if n == 1:
            assert self.second_verified.wait(10), "batch 2 was not verified while batch 1 committed"
        self._log(f"commit {n}")
        with self._lock:
            self.committing += 1
            self.most_at_once = max(self.most_at_once, self.committing)
        time.sleep(0.05)  # room for a second commit to start, were the batcher to allow it
        with self._lock:
            self.committing -= 1
        if n == self.fail_commit_of:
            raise StoreError("disk full")
        return [Accepted(seq=n, duplicate=False, window=None, key_id=str(n), digest="") for _ in range(batch.size)]  # type: ignore[arg-type]


async def _run(ingestor: _ScriptedIngestor) -> list[Any]:
    committed: list[int] = []
    batcher = IngestBatcher(
        ingestor,  # type: ignore[arg-type]
        lambda results: committed.extend(r.seq for r in results if isinstance(r, Accepted)),
        CollectorMetrics("test"),
        max_batch=2,
    )
    batcher.start()
    env = Envelope(payload=b"{}", payload_type="application/vnd.in-toto+json", signatures=())
    # Batch 1 is taken alone (the batcher starts on the first envelope); then two batches of two.
    first = batcher.submit("1", env)
    await asyncio.sleep(0)
    futures = [first] + [batcher.submit(str(n), env) for n in (2, 2, 3, 3)]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    await batcher.stop()
    return [committed, outcomes]


def test_a_batch_is_verified_while_the_one_before_commits_and_commits_follow_arrival() -> None:
    ingestor = _ScriptedIngestor()
    committed, outcomes = asyncio.run(_run(ingestor))
    assert ingestor.events.index("verify 2") < ingestor.events.index("commit 1")
    assert [e for e in ingestor.events if e.startswith("commit")] == ["commit 1", "commit 2", "commit 3"]
    assert committed == [1, 2, 2, 3, 3]
    assert [o.seq for o in outcomes] == [1, 2, 2, 3, 3]


def test_a_failed_commit_acks_nothing_of_its_batch_and_holds_back_the_batches_after_it() -> None:
    # The store "cannot write" (a StoreError of no known cause): batch 2 is held and retried;
    # batch 3 is not committed past it (its statements could follow batch 2's in a chain).
    ingestor = _ScriptedIngestor(fail_commit_of=2)
    committed, outcomes = asyncio.run(_run(ingestor))
    assert committed == [1]
    assert outcomes[0].seq == 1
    for o in outcomes[1:]:
        assert isinstance(o, Unstored) and o.reason == "other", o
    assert "commit 3" not in ingestor.events


@pytest.mark.parametrize("fail_commit_of", [None, 3])
def test_commits_never_overlap(fail_commit_of: int | None) -> None:
    ingestor = _ScriptedIngestor(fail_commit_of=fail_commit_of)
    asyncio.run(_run(ingestor))
    assert ingestor.most_at_once == 1
