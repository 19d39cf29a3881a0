"""The truth of a scenario: what each job of a site really was, known only to its generator.

Labels come only from this truth, never from names: which tenants ran which job on how many
GPUs from when, what it was (``family``), whether it is a positive, the most severe finding
it allows, and how many FLOP it really did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RAMP_S = 60.0
"""Training ramps from idle to its plateau over this long; steady state starts after it."""


@dataclass
class TruthJob:
    """What a training job really was. ``steps``: (time s, GPUs) whenever its size changes."""

    id: str
    kind: str
    tenants: tuple[str, ...]
    start_s: float
    end_s: float
    steps: list[tuple[float, int]]
    model: str
    mfu: float
    flop: float = 0.0
    gpu_s: float = 0.0
    # Added for the scenario families (collector.evaluate.scenarios); defaults keep the old
    # sites' meaning: every TruthJob there is a training run, any severity allowed.
    family: str = ""
    positive: bool = True
    """False: a negative (inference, fleets, sweeps, small jobs): not a run to find."""
    max_severity: str = "critical"
    """The most severe finding allowed on this job's tenants while it runs ("none": no finding)."""
    transparent: bool = False
    """Run by a fully transparent tenant: findings on it must be at most ``low``."""

    @property
    def peak_gpus(self) -> int:
        return max((g for _, g in self.steps), default=0)

    def first_at_least(self, gpus: int) -> float | None:
        """Steady-state time the job first ran on ``gpus`` GPUs or more (None: never)."""
        for t, g in self.steps:
            if g >= gpus:
                return max(t, self.start_s + RAMP_S)
        return None

    def seconds_at_least(self, gpus: int) -> float:
        total = 0.0
        for i, (t, g) in enumerate(self.steps):
            nxt = self.steps[i + 1][0] if i + 1 < len(self.steps) else self.end_s
            if g >= gpus:
                total += max(0.0, min(nxt, self.end_s) - max(t, self.start_s + RAMP_S))
        return total

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["peak_gpus"] = self.peak_gpus
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TruthJob:
        return cls(
            id=d["id"],
            kind=d["kind"],
            tenants=tuple(d["tenants"]),
            start_s=d["start_s"],
            end_s=d["end_s"],
            steps=[(float(t), int(g)) for t, g in d["steps"]],
            model=d["model"],
            mfu=d["mfu"],
            flop=d["flop"],
            gpu_s=d["gpu_s"],
            family=d.get("family", ""),
            positive=d.get("positive", True),
            max_severity=d.get("max_severity", "critical"),
            transparent=d.get("transparent", False),
        )


__all__ = ["RAMP_S", "TruthJob"]
