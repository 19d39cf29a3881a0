"""Wall-clock jumps on the node, seen by comparing sample times with the monotonic clock.

Windows and statements are in wall-clock time (what an auditor compares across nodes), so
a node whose clock is stepped must neither sign windows that overlap nor leave a silent
hole in time:

- backward: samples are not used until the clock passes the latest sample already used
  (or the end of the last signed window), so nothing is counted twice and no window
  overlaps; the real time that passed meanwhile is lost, and the next statement says so;
- forward: the windows the clock skipped were never lived through; the next statement
  says the clock jumped, so the gap before the following window is explained.

Both explanations are ``clock_jump`` events in the predicate's ``events`` (signed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from attestation.statement import Event

_logger = logging.getLogger(__name__)

CLOCK_JUMP_EVENT = "clock_jump"


class ClockWatch:
    """Decides whether each sample may be used and which jumps the chain must explain."""

    def __init__(self, tolerance_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        # Jumps smaller than this are NTP slewing or scheduling jitter, not steps.
        self.tolerance_s = tolerance_s
        self._monotonic = monotonic
        self._last: tuple[float, float] | None = None  # (sample t, monotonic) of the latest sample seen
        self._high_t: float | None = None  # latest sample time used
        self._back: tuple[float, float, int] | None = None  # (jump s, monotonic at the jump, samples skipped)
        # Steps seen by this process, by direction (agent/metrics.py exports them); a backward
        # step counts once, however many samples it keeps from being used.
        self.jumps_back = 0
        self.jumps_forward = 0

    @property
    def jumps(self) -> int:
        return self.jumps_back + self.jumps_forward

    def admit(self, t: float, floor_ms: int | None) -> tuple[bool, Event | None]:
        """Whether the sample taken at wall time ``t`` may be used (``floor_ms``: end of the
        last signed window), and an event the next statement must carry, if any."""
        mono = self._monotonic()
        event: Event | None = None
        if self._last is not None:
            jump = (t - self._last[0]) - (mono - self._last[1])
            if jump > self.tolerance_s:
                self.jumps_forward += 1
                _logger.warning("the wall clock jumped forward by %.1f s; the skipped time has no windows", jump)
                event = Event(
                    CLOCK_JUMP_EVENT,
                    f"wall clock jumped forward by {round(jump * 1000)} ms at {round(t * 1000)} ms: "
                    "no time passed in the windows it skipped",
                )
            elif jump < -self.tolerance_s and self._back is None:
                self.jumps_back += 1
                _logger.warning(
                    "the wall clock went back by %.1f s; samples are not used until it passes %s",
                    -jump,
                    self._high_t,
                )
                self._back = (-jump, mono, 0)
        self._last = (t, mono)
        floor = max(self._high_t or 0.0, (floor_ms or 0) / 1000.0)
        if t * 1000 < floor * 1000 or (self._high_t is not None and t <= self._high_t):
            if self._back is None and self._high_t is not None and t <= self._high_t:
                # Behind a sample already used in this run: the clock went back, however
                # slowly the loop ran meanwhile (a step within the tolerance is still one).
                self.jumps_back += 1
                self._back = (self._high_t - t, mono, 0)
            if self._back is not None:
                jump_s, since, skipped = self._back
                self._back = (jump_s, since, skipped + 1)
            return False, event
        self._high_t = t
        if self._back is not None:
            jump_s, since, skipped = self._back
            self._back = None
            event = Event(
                CLOCK_JUMP_EVENT,
                f"wall clock went back by {round(jump_s * 1000)} ms; {skipped} sample(s) over "
                f"{round((mono - since) * 1000)} ms of real time were not used until it passed "
                f"{round(floor * 1000)} ms again",
            )
        return True, event
