"""Vectorized policy evaluation: several episodes stepped together, one batched policy call a step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from hybridrl.control.envs import make_env
from hybridrl.control.scores import normalized_score

ActFn = Callable[[np.ndarray], np.ndarray]
"""(n, obs_dim) observations -> (n, act_dim) actions in [-1, 1]."""


@dataclass(frozen=True)
class EvalResult:
    returns: list[float]
    lengths: list[int]
    mean: float
    std: float
    normalized_mean: float | None
    normalized_std: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(act: ActFn, task: str, *, episodes: int = 10, seed: int = 0,
             ref_scores: tuple[float, float] | None = None, max_episode_steps: int | None = None) -> EvalResult:
    """Run ``episodes`` episodes at once; episode i is reset with seed ``seed + i``.

    Actions are scaled from [-1, 1] to the env's bounds. Returns are undiscounted; the normalized
    score uses ``ref_scores`` = (random, expert) when given.
    """
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    envs = [make_env(task, **kwargs) for _ in range(episodes)]
    low, high = envs[0].action_space.low, envs[0].action_space.high
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    alive = np.ones(episodes, dtype=bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        actions = np.clip(np.asarray(act(obs[idx].astype(np.float32)), dtype=np.float64), -1.0, 1.0)
        actions = low + (actions + 1.0) * 0.5 * (high - low)
        for row, i in enumerate(idx):
            next_obs, reward, terminated, truncated, _ = envs[i].step(actions[row])
            obs[i] = next_obs
            returns[i] += reward
            lengths[i] += 1
            if terminated or truncated:
                alive[i] = False
    for env in envs:
        env.close()
    normalized = None if ref_scores is None else normalized_score(returns, *ref_scores)
    return EvalResult(
        returns=returns.tolist(), lengths=lengths.tolist(), mean=float(returns.mean()), std=float(returns.std()),
        normalized_mean=None if normalized is None else float(normalized.mean()),
        normalized_std=None if normalized is None else float(normalized.std()),
    )
