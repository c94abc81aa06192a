"""A method's data plan: what it trains on, declared once, read by the one RL loop.

- ``offline``: batches from a fixed dataset; a step is a gradient update.
- ``online``: one environment step, then ``updates_per_step`` updates on the replay ring.
- ``hybrid``: the same, but every batch takes ``offline_fraction`` of its rows from the dataset
  and the rest from the online ring, and arrives as a ``MixedBatch`` that keeps them apart.
- ``custom``: the method's own loop (on-policy rollouts, model-learning stages) on the same session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Source = Literal["offline", "online", "hybrid", "custom"]


@dataclass(frozen=True)
class DataPlan:
    source: Source
    offline_fraction: float = 0.5
    """Hybrid: share of each batch drawn from the dataset (0.5: symmetric halves, as RLPD samples)."""
    updates_per_step: int = 1
    """Online and hybrid: gradient updates per environment step (the update-to-data ratio)."""

    def __post_init__(self) -> None:
        if self.source not in ("offline", "online", "hybrid", "custom"):
            raise ValueError(f"unknown data source {self.source!r}: use offline, online, hybrid or custom")
        if not 0.0 <= self.offline_fraction <= 1.0:
            raise ValueError(f"offline_fraction must be in [0, 1], got {self.offline_fraction}")
        if self.updates_per_step < 1:
            raise ValueError(f"updates_per_step must be at least 1, got {self.updates_per_step}")

    @property
    def uses_env(self) -> bool:
        """Whether the loop steps a training environment."""
        return self.source in ("online", "hybrid")

    @property
    def uses_dataset(self) -> bool:
        return self.source in ("offline", "hybrid")
