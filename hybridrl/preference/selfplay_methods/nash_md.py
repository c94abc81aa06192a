r"""Nash-MD (Munos et al., "Nash Learning from Human Feedback", arXiv 2312.00886), the PG variant.

The policy plays against the geometric mixture :math:`\pi^\mu \propto \pi_t^{1-\alpha}\pi_{ref}^{\alpha}`,
mixed per token on the logits while sampling (``sampling.sample_completions``, as TRL's
``GeometricMixtureWrapper``); ``losses.nash_md_loss`` is REINFORCE on
:math:`P(\pi \succ \pi^\mu) - \beta KL(\pi\|\pi_{ref})` with a 1/2 baseline.

One optimizer step per iteration on fresh samples, as TRL's ``NashMDTrainer``: REINFORCE on one
batch is an on-policy gradient only at the parameters that sampled it, and its surrogate is linear in
:math:`\log\pi_\theta`, so more steps on the same batch only push the winners' log-probs further, with
no anchor to the previous policy. That step's gradient is the mean over every pair of the iteration
(``SelfPlaySpec.one_step``), so its size is the run's learning rate alone (default 5e-7, TRL's).

Deviations from TRL's ``NashMDTrainer``: K policy answers and K mixture answers per prompt, each
policy answer's win rate is its mean preference over all K mixture answers (TRL: one of each, one
comparison); the KL term is per sequence, not per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hybridrl.preference.selfplay_spec import PairTargets, SelfPlaySpec, register_selfplay, win_rates


@dataclass(frozen=True, kw_only=True)
class NashMDConfig:
    """Nash-MD hyperparameters (TRL ``NashMDConfig``: beta 0.1; the paper's best mixture was 0.125)."""

    beta: float = 0.1
    """KL strength toward the reference in the policy-gradient advantage."""
    mixture_coef: float = 0.125
    """Weight alpha of the reference's logits in the opponent mixture (0: plain self-play)."""

    def __post_init__(self) -> None:
        if self.beta < 0 or not 0 <= self.mixture_coef <= 1:
            raise ValueError(f"need beta >= 0 and mixture_coef in [0, 1], got {self.beta}, {self.mixture_coef}")


def build_targets(preferences: Tensor, opponents: Tensor | None, config: Any) -> PairTargets:
    """Consecutive answers paired (0-1, 2-3, ...); each answer carries its win rate against the mixture."""
    if opponents is None:
        raise ValueError("nash_md needs the mixture's answers as opponents")
    num_prompts, k, _ = preferences.shape
    wins = win_rates(preferences, opponents).reshape(-1)
    base = (torch.arange(num_prompts) * k)[:, None]
    first = (base + torch.arange(0, k - 1, 2)).reshape(-1)
    return PairTargets(first, first + 1, {"win_chosen": wins[first], "win_rejected": wins[first + 1]})


register_selfplay(
    SelfPlaySpec(
        name="nash_md",
        summary="Nash-MD: mirror descent against the policy-reference mixture (Munos et al. 2023)",
        config=NashMDConfig, loss="nash_md", build_targets=build_targets, mixture_opponents=True,
        one_step=True,
    )
)
