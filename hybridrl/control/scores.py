"""Reference returns and the D4RL normalized score.

normalized = 100 * (R - R_random) / (R_expert - R_random). The project's own datasets store D4RL's
published references for their task in Minari's ``ref_min_score`` / ``ref_max_score``; any other
Minari dataset brings its own.
"""

from __future__ import annotations

import numpy as np

# D4RL's reference returns (d4rl/gym_mujoco/__init__.py): (random, expert).
D4RL_REFERENCE_RETURNS: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}


def d4rl_reference(task_or_env_id: str) -> tuple[float, float] | None:
    """D4RL's (random, expert) returns for 'hopper' or 'Hopper-v5', else None."""
    key = task_or_env_id.split("-")[0].lower()
    return D4RL_REFERENCE_RETURNS.get(key)


def normalized_score(returns, ref_min: float, ref_max: float) -> np.ndarray:
    """100 * (R - ref_min) / (ref_max - ref_min), elementwise."""
    if ref_max == ref_min:
        raise ValueError("reference returns are equal: the normalized score is undefined")
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)
