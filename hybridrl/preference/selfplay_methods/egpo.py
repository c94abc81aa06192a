r"""EGPO: Extragradient Preference Optimization (Zhou, Fazel, Du, arXiv 2503.08942, COLM 2025).

Extragradient on the online-IPO loss ``losses.egpo_loss``,
:math:`([r(y) - r(y')] - [P(y \succ \pi_s) - P(y' \succ \pi_s)]/\beta)^2`: from :math:`\theta_t`, steps against
:math:`\pi_s = \pi_t` give the half-step :math:`\theta_{t+1/2}`; its answers are sampled and judged; then
:math:`\theta_t` **and the optimizer state** are restored and the steps are taken again against
:math:`\pi_s = \pi_{t+1/2}` (``SelfPlaySpec.extragradient``; the loop in ``selfplay.py`` does the restore).

Deviations from the reference LM trainer (``lms/trainers/extragradient_trainer.py``):
- a phase is ``steps_per_iteration`` optimizer steps on one batch of samples rather than one step;
- y, y' are always the current policy's answers (sampled once per iteration at the run's temperature,
  not temperature 2 / top-k 10); on the update phase they are compared with the half-step policy's
  answers (their OIPO1 form), not resampled from it;
- summed, not length-normalised, log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from hybridrl.preference.selfplay_spec import (
    PairTargets,
    SelfPlaySpec,
    all_pairs,
    register_selfplay,
    win_rates,
)


@dataclass(frozen=True, kw_only=True)
class EGPOConfig:
    """EGPO hyperparameters (``lms/train_nlhf.py``: beta = 0.1)."""

    beta: float = 0.1
    """KL strength toward the reference: targets are win-rate differences divided by beta."""

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")


def build_targets(preferences: Tensor, opponents: Tensor | None, config: Any) -> PairTargets:
    """Every pair i < j with each answer's win rate against the opponent policy's answers.

    ``opponents`` is None on the half step (the opponent is the policy itself: leave-one-out win rates
    among its own answers) and the half-step policy's judgments on the update step.
    """
    num_prompts, k, _ = preferences.shape
    first, second = all_pairs(num_prompts, k)
    wins = win_rates(preferences, opponents).reshape(-1)
    return PairTargets(first, second, {"win_chosen": wins[first], "win_rejected": wins[second]})


register_selfplay(
    SelfPlaySpec(name="egpo",
        summary="EGPO: extragradient on the online-IPO loss by self-play (Zhou, Fazel, Du 2025)",
        config=EGPOConfig, loss="egpo", build_targets=build_targets, extragradient=True)
)
