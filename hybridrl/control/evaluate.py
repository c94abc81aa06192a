"""Vectorized policy evaluation: several episodes stepped together, one batched policy call a step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from hybridrl.control.envs import EnvSpec, make_env, to_env_action
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


def evaluate(act: ActFn, env: str | EnvSpec, *, episodes: int = 10, seed: int = 0,
             ref_scores: tuple[float, float] | None = None, max_episode_steps: int | None = None,
             action_bounds: tuple[np.ndarray, np.ndarray] | None = None) -> EvalResult:
    """Run ``episodes`` episodes at once in ``env``; episode i is reset with seed ``seed + i``.

    ``env`` is a task name, a Gymnasium id (its registered time limit) or the :class:`EnvSpec` a
    dataset records (``OfflineData.eval_env_spec``: its kwargs and time limit); ``max_episode_steps``
    overrides either. Policy actions in [-1, 1] are mapped to ``action_bounds`` = (low, high), by
    default the env's action space, exactly as ``datasets.load`` mapped the dataset's actions into
    [-1, 1]. Returns are undiscounted; the normalized score uses ``ref_scores`` = (random, expert).
    """
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    envs = [make_env(env, **kwargs) for _ in range(episodes)]
    low, high = action_bounds if action_bounds is not None else (envs[0].action_space.low, envs[0].action_space.high)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    obs = np.stack([one.reset(seed=seed + i)[0] for i, one in enumerate(envs)])
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    alive = np.ones(episodes, dtype=bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        actions = np.clip(np.asarray(act(obs[idx].astype(np.float32)), dtype=np.float64), -1.0, 1.0)
        actions = to_env_action(actions, low, high)
        for row, i in enumerate(idx):
            next_obs, reward, terminated, truncated, _ = envs[i].step(actions[row])
            obs[i] = next_obs
            returns[i] += reward
            lengths[i] += 1
            if terminated or truncated:
                alive[i] = False
    for one in envs:
        one.close()
    normalized = None if ref_scores is None else normalized_score(returns, *ref_scores)
    return EvalResult(
        returns=returns.tolist(), lengths=lengths.tolist(), mean=float(returns.mean()), std=float(returns.std()),
        normalized_mean=None if normalized is None else float(normalized.mean()),
        normalized_std=None if normalized is None else float(normalized.std()),
    )
