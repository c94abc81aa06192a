"""What a method is built from: sizes, action bounds, device, seed, budget and (offline, hybrid) its data.

``build(config, ctx)`` is the one way a method comes to life. The context is frozen and carries
everything a method may need at build time, so that methods stay free of envs and dataset files:
TD3+BC reads the observation statistics it normalizes with, IQL the total step count of its
schedule, PRDC the whole dataset for its nearest-neighbour index.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from hybridrl.core.buffers import D4RL_KEYS, FIELDS, as_tensor


@dataclass(frozen=True, eq=False)
class OfflineView:
    """A dataset's transitions on the training device (N rows, float32) and their statistics.

    Actions are in [-1, 1] (the data layer scales them with the dataset's action space). The
    statistics are computed once here, so every method that normalizes reads the same numbers.
    """

    obs: torch.Tensor  # (N, obs_dim)
    action: torch.Tensor  # (N, act_dim)
    reward: torch.Tensor  # (N,)
    next_obs: torch.Tensor  # (N, obs_dim)
    terminated: torch.Tensor  # (N,)
    obs_mean: torch.Tensor  # (obs_dim,)
    obs_std: torch.Tensor  # (obs_dim,), floored at 1e-3 (CORL's eps) so constant features stay finite
    reward_mean: float
    reward_std: float
    reward_min: float
    reward_max: float
    return_min: float
    """Lowest undiscounted episode return in the dataset (IQL's reward scale uses max - min)."""
    return_max: float

    def __len__(self) -> int:
        return self.obs.shape[0]

    @classmethod
    def from_arrays(cls, data: Mapping[str, np.ndarray], episode_returns: np.ndarray,
                    device: torch.device | str) -> OfflineView:
        """From D4RL-style arrays (observations, actions, rewards, next_observations, terminals)."""
        device = torch.device(device)
        rows = {name: as_tensor(data[D4RL_KEYS[name]], device) for name in FIELDS}
        obs = rows["obs"]
        reward = rows["reward"]
        returns = np.asarray(episode_returns, dtype=np.float64)
        stats = torch.stack([reward.mean(), reward.std(correction=0), reward.min(), reward.max()]).tolist()
        return cls(**rows, obs_mean=obs.mean(0), obs_std=obs.std(0, correction=0).clamp_min(1e-3),
                   reward_mean=stats[0], reward_std=stats[1], reward_min=stats[2], reward_max=stats[3],
                   return_min=float(returns.min()) if returns.size else 0.0,
                   return_max=float(returns.max()) if returns.size else 0.0)


@dataclass(frozen=True)
class BuildContext:
    """Everything a method is built from; see the module docstring."""

    obs_dim: int
    action_low: tuple[float, ...]
    """The environment's action bounds. Methods act in [-1, 1]; the loop maps actions to these."""
    action_high: tuple[float, ...]
    device: torch.device = torch.device("cpu")  # noqa: RUF009 (an immutable value)
    seed: int = 0
    total_steps: int = 1_000_000
    """Steps of the whole run (gradient updates offline, environment steps online)."""
    offline: OfflineView | None = None
    """The dataset, for offline and hybrid runs; None for purely online ones."""

    @property
    def act_dim(self) -> int:
        return len(self.action_low)

    @classmethod
    def of_sizes(cls, obs_dim: int, act_dim: int, **kwargs) -> BuildContext:
        """A context for a [-1, 1]^act_dim action space (tests, scripts)."""
        return cls(obs_dim=obs_dim, action_low=(-1.0,) * act_dim, action_high=(1.0,) * act_dim, **kwargs)

    def require_offline(self, method: str) -> OfflineView:
        """The dataset, or one line saying the method needs one."""
        if self.offline is None:
            raise ValueError(f"{method} is built from a dataset: train it with --dataset")
        return self.offline
