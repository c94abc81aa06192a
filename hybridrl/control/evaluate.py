"""Vectorized policy evaluation: several episodes stepped together, one batched policy call a step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hybridrl.control.envs import EnvSpec, make_env, to_env_action
from hybridrl.control.scores import normalized_score

ActFn = Callable[[np.ndarray], np.ndarray]
"""(n, obs_dim) observations -> (n, act_dim) actions in [-1, 1]."""


@dataclass(frozen=True)
class EvalResult:
    """Per-episode undiscounted returns and lengths, their mean and std, and the normalized score.

    With a discount given to :func:`evaluate`, also each episode's discounted return; every result
    from :func:`evaluate` holds the episodes' start observations (what a critic is compared at).
    """

    returns: list[float]
    lengths: list[int]
    mean: float
    std: float
    normalized_mean: float | None
    normalized_std: float | None
    discounted_returns: list[float] | None = None
    """sum_t gamma^t r_t per episode with ``gamma``; None when no discount was given."""
    gamma: float | None = None
    start_obs: np.ndarray | None = field(default=None, repr=False, compare=False)
    """(episodes, obs_dim) float32: each episode's first observation, as the policy received it."""

    def to_dict(self) -> dict:
        """JSON-ready: the six fields every result has, plus ``gamma`` and ``discounted_returns`` when
        computed. The start observations are an input of measurements, not a result, and stay out."""
        out = {name: getattr(self, name)
               for name in ("returns", "lengths", "mean", "std", "normalized_mean", "normalized_std")}
        if self.discounted_returns is not None:
            out.update(gamma=self.gamma, discounted_returns=list(self.discounted_returns))
        return out


def evaluate(act: ActFn, env: str | EnvSpec, *, episodes: int = 10, seed: int = 0,
             ref_scores: tuple[float, float] | None = None, max_episode_steps: int | None = None,
             action_bounds: tuple[np.ndarray, np.ndarray] | None = None, gamma: float | None = None) -> EvalResult:
    """Run ``episodes`` episodes at once in ``env``; episode i is reset with seed ``seed + i``.

    ``env`` is a task name, a Gymnasium id (its registered time limit) or the :class:`EnvSpec` a
    dataset records (``OfflineData.eval_env_spec``: its kwargs and time limit); ``max_episode_steps``
    overrides either. Policy actions in [-1, 1] are mapped to ``action_bounds`` = (low, high), by
    default the env's action space, exactly as ``datasets.load`` mapped the dataset's actions into
    [-1, 1]. Returns are undiscounted; the normalized score uses ``ref_scores`` = (random, expert).
    With ``gamma``, each episode's discounted return sum_t gamma^t r_t is kept too (up to its end or
    time limit, as obtained). The start observations are always kept.
    """
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    envs = [make_env(env, **kwargs) for _ in range(episodes)]
    low, high = action_bounds if action_bounds is not None else (envs[0].action_space.low, envs[0].action_space.high)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    obs = np.stack([one.reset(seed=seed + i)[0] for i, one in enumerate(envs)])
    start_obs = obs.astype(np.float32)
    returns = np.zeros(episodes)
    discounted = np.zeros(episodes)
    discount = np.ones(episodes)  # gamma^t of each episode's current step
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
            if gamma is not None:
                discounted[i] += discount[i] * reward
                discount[i] *= gamma
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
        discounted_returns=None if gamma is None else discounted.tolist(), gamma=gamma, start_obs=start_obs,
    )
