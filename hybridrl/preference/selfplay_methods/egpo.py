r"""EGPO: Extragradient Preference Optimization (Zhou, Fazel, Du, arXiv 2503.08942, COLM 2025).

Extragradient on the online-IPO loss ``losses.egpo_loss`` with an explicit proximal term: from
:math:`\theta_t`, steps against :math:`\pi_s = \pi_t` give the half-step :math:`\theta_{t+1/2}`; its answers
are sampled and judged; then :math:`\theta_t` **and the optimizer state** are restored and the steps are
taken again against :math:`\pi_s = \pi_{t+1/2}` (``SelfPlaySpec.extragradient``; the loop in ``selfplay.py``
does the restore). Each phase regresses the log-ratio margins onto the tabular step
:math:`(1-\eta\beta)\log\pi_t + \eta\beta\log\pi_{ref} + \eta P(\cdot \succ \pi_s)`.

Why the proximal term: the reference's loss has no anchor to :math:`\pi_t`, and a phase here is
``steps_per_iteration`` optimizer steps on one batch; fitted that hard, the unanchored loss reaches its
minimiser, the best response to :math:`\pi_s` (``eta * beta = 1``), which diverges on intransitive games.
The reference instead takes one optimizer step per phase on fresh samples, so its step is set by the
learning rate, steps and batch together. With the term the step is ``eta``, a hyperparameter: more
optimizer steps fit the step more exactly, never further. The default is the reference's tabular run
(SGD lr 0.1 on 10 actions at beta 0.1, i.e. eta = 4 lr / (n beta) = 0.4, ``games_solvers``).

Log-probs are averaged per token by default (``normalize_logprobs``), as the reference LM trainer, so
beta means the paper's per-token strength.

Deviations from the reference LM trainer (``lms/trainers/extragradient_trainer.py``):
- a phase is ``steps_per_iteration`` optimizer steps on one batch of samples, fitting the proximal step
  above, rather than one step on the unanchored loss;
- y, y' are always the current policy's answers (sampled once per iteration at the run's temperature,
  not temperature 2 / top-k 10); on the update phase they are compared with the half-step policy's
  answers (their OIPO1 form), not resampled from it.
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
    """EGPO hyperparameters (``lms/train_nlhf.py``: beta = 0.1, per-token log-probs)."""

    beta: float = 0.1
    """KL strength toward the reference (the game's regularization)."""
    eta: float = 0.4
    """Extragradient step size: each phase moves the log-policy to (1 - eta*beta) log pi_t +
    eta*beta log pi_ref + eta P(y > pi_s); eta*beta = 1 is best-response play. Default: the reference's
    tabular run (0.4 at beta 0.1)."""
    normalize_logprobs: bool = True
    """Average each answer's log-probs over its tokens (the reference LM trainer's setting)."""

    def __post_init__(self) -> None:
        if self.beta <= 0 or self.eta <= 0 or self.eta * self.beta > 1:
            raise ValueError(f"need beta > 0, eta > 0 and eta * beta <= 1, got beta={self.beta}, eta={self.eta}")


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
