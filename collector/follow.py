"""Detection on a store shared by several collectors: one collector runs it, over the log.

With several collectors on one PostgreSQL database each ingests only the nodes that stream
to it, but a training run spans nodes on all of them. So no collector detects from its own
batches; the one holding the store's detection lease (``Store.try_detection_lease``, a
PostgreSQL advisory lock) follows the transparency log (leaves are in commit order across
collectors) and feeds every stored window to its detector. The others only ingest, and
retry the lease every ``poll_s``: when the detecting collector dies, its database session
ends, the lock is released and another collector takes over. Before it follows the log from
its end at that moment, it warms its detector up (``warm_up``, collector/warmup.py): the
stored windows of the detector's look-back are replayed, and findings the previous leader
recorded are continued, not raised again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from attestation.errors import SchemaError
from attestation.statement import UsageWindow, parse_statement
from collector.errors import StoreError
from collector.store.base import Store

_logger = logging.getLogger(__name__)

_PAGE_LEAVES = 2000


class DetectionFollower:
    """Feeds ``observe`` every window of the shared log while this collector holds the lease."""

    def __init__(
        self,
        store: Store,
        observe: Callable[[UsageWindow], None],
        *,
        poll_s: float = 1.0,
        start_index: int | None = None,
        warm_up: Callable[[], int] | None = None,
    ) -> None:
        """``warm_up``: called (blocking) on taking the lease unless ``start_index`` is given;
        replays the recent past into ``observe``'s detector and returns the leaf to follow from."""
        self._store = store
        self._observe = observe
        self._poll_s = poll_s
        self._next: int | None = start_index
        self._warm_up = warm_up
        self._task: asyncio.Task[None] | None = None
        self.leader = False

    def step(self) -> int:
        """One poll (blocking): take or keep the lease, then feed new windows. Returns how many."""
        if not self._store.try_detection_lease():
            if self.leader:
                _logger.warning("detection lease lost; another collector detects now")
            self.leader = False
            self._next = None
            return 0
        if not self.leader:
            if self._next is None:
                # A failed warm-up leaves this a follower; the next poll starts it over.
                self._next = self._warm_up() if self._warm_up is not None else self._store.log_size()
            self.leader = True
            _logger.info("this collector runs detection, following the log from leaf %d", self._next)
        assert self._next is not None
        fed = 0
        while True:
            # Leaves below the size read first are all committed (indices follow commit order).
            end = min(self._next + _PAGE_LEAVES, self._store.log_size())
            if end <= self._next:
                return fed
            for index, rec in self._store.log_statements(self._next, end):
                try:
                    window = parse_statement(rec.payload)  # verified at ingest
                except (SchemaError, ValueError, RecursionError) as exc:  # pragma: no cover - stored bytes are valid
                    _logger.error("leaf %d cannot be parsed for detection: %s", index, exc)
                else:
                    self._observe(window)
                    fed += 1
            self._next = end

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.step)
            except StoreError as exc:
                _logger.warning("detection follower: %s; retrying", exc)
            await asyncio.sleep(self._poll_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
