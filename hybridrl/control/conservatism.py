r"""How far a Q-learning method's critic is from the returns it claims, measured at each evaluation.

The protocol. A method takes part when it exposes

    q_values(obs: (B, obs_dim) tensor, action: (B, act_dim) tensor in [-1, 1]) -> (B,) tensor

(CQL today; TD3+BC, IQL, PRDC and A2PR expose the same name): the value the method acts on, for
clipped double-Q methods the minimum over the critic ensemble, taking raw observations exactly as
``act`` does (a method that normalizes observations does so inside), in the dataset's reward units
(a method that trains on rescaled rewards divides its Q by the scale before returning it). Its
config has a ``gamma`` field, the discount the critic is trained with. Methods without
``q_values`` are not measured and log nothing of it.

Two comparisons, each of an estimate with what was obtained, as means (gap = estimate - obtained:
positive is overestimation, negative is conservatism):

1. Start states of the evaluation episodes. ``q_start`` = mean_i Q(s0_i, pi(s0_i)) with pi the
   deterministic evaluation policy, against ``discounted_return`` = mean_i sum_t gamma^t r_t of the
   same episodes. An evaluation episode cut by the env's time limit T obtains no reward past T,
   while the critic values the continuation too; the omitted part is gamma^T V(s_T): below 5e-5 of
   V's scale for MuJoCo's T = 1000 at gamma = 0.99, but large for short time limits (gamma^200 = 0.13),
   where ``q_start_gap`` then reads as overestimation by up to that much.
2. A fixed sample of dataset states with their dataset actions (``samples`` states, the same in every
   run on the dataset: drawn with a fixed seed). ``q_data`` = mean_j Q(s_j, a_j) against ``rtg_data``
   = mean_j G_j, the discounted return-to-go G_t = sum_{k>=0} gamma^k r_{t+k} to the episode's end.
   Truncation: an episode that ends in a termination has exact returns-to-go at every step; one cut
   by a time limit (or ending with neither flag, e.g. when data collection stopped) lacks its tail, and
   for a step k steps before the cut the missing part weighs gamma^k. Only its states with
   gamma^k <= ``tail_bound`` (default 0.01) enter the sample, so the returns-to-go used are exact for
   terminated episodes and miss at most ``tail_bound`` times the tail's value for truncated ones. With
   gamma = 0.99 that keeps the first L - 458 steps of a truncated episode of L steps; a dataset of
   short truncated episodes only may have no eligible state, and then the data comparison is left out.

The returns-to-go need the episode boundaries, which the runner has from ``OfflineData``; they are
computed once per run (:func:`dataset_sample`), and :meth:`Conservatism.measure` runs at each evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from hybridrl.control.datasets import OfflineData
from hybridrl.control.evaluate import EvalResult

__all__ = ["Conservatism", "DatasetSample", "QValueMethod", "dataset_sample", "eligible_states", "has_q_values",
           "returns_to_go"]


@runtime_checkable
class QValueMethod(Protocol):
    """A method whose critic can be measured (see the module docstring for units and inputs)."""

    def q_values(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor: ...

    def act(self, obs: torch.Tensor, *, deterministic: bool = True) -> torch.Tensor: ...


def has_q_values(algo: Any) -> bool:
    return callable(getattr(algo, "q_values", None))


def _episode_index(episode_lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: its episode, its distance to the episode's last row (0 there), and the episodes' last rows."""
    lengths = np.asarray(episode_lengths, dtype=np.int64)
    if lengths.sum() != n or (lengths <= 0).any():
        raise ValueError(f"episode lengths sum to {int(lengths.sum())} for {n} rows: they must split the rows "
                         "into non-empty episodes")
    ends = np.cumsum(lengths) - 1
    episode = np.repeat(np.arange(len(lengths)), lengths)
    to_end = ends[episode] - np.arange(n)
    return episode, to_end, ends


def returns_to_go(rewards: np.ndarray, episode_lengths: np.ndarray, gamma: float) -> np.ndarray:
    """(N,) float64: sum_{k>=0} gamma^k r_{t+k} up to the last recorded step of t's episode.

    A parallel suffix scan: after the round with shift d every row holds the discounted sum of its
    next 2d rewards (fewer at the episode's end), so log2(longest episode) vectorized rounds replace
    a Python loop over a million rows.
    """
    n = len(rewards)
    episode, _, _ = _episode_index(episode_lengths, n)
    total = np.asarray(rewards, dtype=np.float64).copy()
    longest = int(np.max(episode_lengths))
    shift, weight = 1, gamma
    while shift < longest:
        later = np.zeros(n)
        same = episode[shift:] == episode[:-shift]
        later[:-shift] = np.where(same, total[shift:], 0.0)
        total = total + weight * later
        shift, weight = 2 * shift, weight * weight
    return total


def eligible_states(terminals: np.ndarray, episode_lengths: np.ndarray, gamma: float,
                    tail_bound: float = 0.01) -> np.ndarray:
    """(N,) bool: rows whose return-to-go lacks at most ``tail_bound`` of the tail's value.

    Every row of an episode whose last row is terminal; in any other episode (a time-limit cut, or
    neither flag) the rows k >= 1 steps before the cut, counting the last recorded row as k = 1,
    with gamma^k <= ``tail_bound``.
    """
    n = len(terminals)
    episode, to_end, ends = _episode_index(episode_lengths, n)
    terminated = np.asarray(terminals)[ends] > 0.5
    if gamma >= 1.0:
        far_enough = np.zeros(n, dtype=bool)  # an undiscounted tail never fades
    else:
        k_min = math.ceil(math.log(tail_bound) / math.log(gamma)) if tail_bound < 1.0 else 0
        far_enough = to_end + 1 >= k_min
    return terminated[episode] | far_enough


@dataclass(frozen=True, eq=False)
class DatasetSample:
    """Dataset states, their dataset actions and their discounted returns-to-go (M rows)."""

    obs: np.ndarray  # (M, obs_dim) float32
    action: np.ndarray  # (M, act_dim) float32, in [-1, 1]
    rtg: np.ndarray  # (M,) float64
    eligible: int
    """How many of the dataset's rows qualified (see :func:`eligible_states`) before sampling."""


def dataset_sample(data: OfflineData, gamma: float, *, samples: int = 1000, seed: int = 0,
                   tail_bound: float = 0.01) -> DatasetSample | None:
    """``samples`` eligible rows of ``data`` (all when fewer), drawn with ``seed``; None when none qualify."""
    mask = eligible_states(data.terminals, data.episode_lengths, gamma, tail_bound)
    candidates = np.flatnonzero(mask)
    if candidates.size == 0:
        return None
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(candidates, size=min(samples, candidates.size), replace=False))
    rtg = returns_to_go(data.rewards, data.episode_lengths, gamma)
    return DatasetSample(obs=np.asarray(data.observations[chosen], dtype=np.float32),
                         action=np.asarray(data.actions[chosen], dtype=np.float32),
                         rtg=rtg[chosen], eligible=int(candidates.size))


class Conservatism:
    """The measurement of one run: its discount, its dataset sample (None: start states only), its device."""

    def __init__(self, gamma: float, sample: DatasetSample | None, device: torch.device | str = "cpu") -> None:
        self.gamma = float(gamma)
        self.sample = sample
        self.device = torch.device(device)

    @classmethod
    def for_run(cls, algo: Any, algo_config: Any, data: OfflineData | None, device: torch.device | str, *,
                samples: int = 1000) -> Conservatism | None:
        """The run's measurement, or None when the method has no ``q_values`` or its config no ``gamma``."""
        gamma = getattr(algo_config, "gamma", None)
        if not has_q_values(algo) or gamma is None:
            return None
        sample = None if data is None else dataset_sample(data, gamma, samples=samples)
        return cls(gamma, sample, device)

    def _tensor(self, values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def measure(self, algo: QValueMethod, result: EvalResult) -> dict[str, float]:
        """The ``eval/`` metrics of one evaluation: start-state values when ``result`` carries the start
        observations and discounted returns at this discount, dataset values when there is a sample."""
        row: dict[str, float] = {}
        if (result.start_obs is not None and result.discounted_returns is not None
                and result.gamma is not None and math.isclose(result.gamma, self.gamma)):
            s0 = self._tensor(result.start_obs)
            q_start = float(algo.q_values(s0, algo.act(s0, deterministic=True)).mean())
            obtained = float(np.mean(result.discounted_returns))
            row.update({"eval/q_start": q_start, "eval/discounted_return": obtained,
                        "eval/q_start_gap": q_start - obtained})
        if self.sample is not None:
            q_data = float(algo.q_values(self._tensor(self.sample.obs), self._tensor(self.sample.action)).mean())
            rtg = float(self.sample.rtg.mean())
            row.update({"eval/q_data": q_data, "eval/rtg_data": rtg, "eval/q_data_gap": q_data - rtg})
        return row
