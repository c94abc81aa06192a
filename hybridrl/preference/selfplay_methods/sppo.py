r"""SPPO: Self-Play Preference Optimization (Wu et al., arXiv 2405.00675, ICLR 2025).

Multiplicative weights against itself,
:math:`\pi_{t+1}(y) \propto \pi_t(y)\exp(\eta P(y \succ \pi_t))`, fitted per answer with the square loss
``losses.sppo_loss``: :math:`(\log\pi_\theta(y)/\pi_t(y) - \eta(\hat P(y \succ \pi_t) - 1/2))^2`, anchored at
the previous iterate (no reference term).

As the reference recipe (uclaml/SPPO ``compute_prob.py``): :math:`\hat P` of an answer is its mean
preference over the K answers of its prompt *including itself* (0.5), and only the best and the worst
answer of each prompt are kept. Deviation: the oracle's preference is used directly instead of
``sigmoid(s_i - s_j)`` of PairRM scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hybridrl.preference.selfplay_spec import PairTargets, SelfPlaySpec, register_selfplay


@dataclass(frozen=True, kw_only=True)
class SPPOConfig:
    """SPPO hyperparameters; the default is the paper's ``beta = 0.001``, i.e. eta = 1000."""

    eta: float = 1000.0
    """Step size eta (the code's ``1/beta``): the log-ratio target is eta * (P - 1/2)."""

    def __post_init__(self) -> None:
        if self.eta <= 0:
            raise ValueError(f"eta must be positive, got {self.eta}")


def build_targets(preferences: Tensor, opponents: Tensor | None, config: Any) -> PairTargets:
    """Per prompt the answer with the highest and the lowest mean preference, with those means as targets."""
    num_prompts, k, _ = preferences.shape
    win = preferences.mean(-1)  # the diagonal's 0.5 included, as SPPO does
    best = win.argmax(-1)
    # ties everywhere would make best == worst: take the lowest among the others instead
    worst = win.masked_fill(torch.nn.functional.one_hot(best, k).bool(), float("inf")).argmin(-1)
    base = torch.arange(num_prompts) * k
    rows = torch.arange(num_prompts)
    return PairTargets(base + best, base + worst, {"win_chosen": win[rows, best], "win_rejected": win[rows, worst]})


register_selfplay(SelfPlaySpec(name="sppo",
        summary="SPPO: multiplicative weights against itself (Wu et al. 2024)",
        config=SPPOConfig, loss="sppo", build_targets=build_targets))
