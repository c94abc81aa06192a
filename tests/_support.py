"""Helpers shared by the test modules (a plain module: two conftest.py files cannot both be imported by name)."""

from __future__ import annotations

import numpy as np

TINY_DATASET = "hybridrl/hopper/random-v0"


def make_episode(steps: int, obs_dim: int = 3, act_dim: int = 2, *, terminated: bool = True,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """A Minari-style episode: T+1 observations for T steps; the last step terminates or truncates."""
    rng = np.random.default_rng(seed)
    terminations = np.zeros(steps, dtype=bool)
    truncations = np.zeros(steps, dtype=bool)
    (terminations if terminated else truncations)[-1] = True
    return {
        "observations": rng.normal(size=(steps + 1, obs_dim)),
        "actions": rng.uniform(-1, 1, size=(steps, act_dim)),
        "rewards": rng.normal(size=steps),
        "terminations": terminations,
        "truncations": truncations,
    }
