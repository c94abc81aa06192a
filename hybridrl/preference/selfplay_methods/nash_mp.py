r"""Nash-MP: Nash Mirror Prox (Tiapkin, Calandriello, Belomestny, Moulines, Naumov, Rasul, Valko, Ménard;
arXiv 2505.19731).

Two KL-proximal steps per iteration, both anchored at :math:`\pi_k`, on the beta-regularized game:

.. math::
    \pi_{k+1/2} = \arg\max_\pi \eta[P(\pi \succ \pi_k) - \beta KL(\pi\|\pi_{ref})] - KL(\pi\|\pi_k),\qquad
    \pi_{k+1} = \arg\max_\pi \eta[P(\pi \succ \pi_{k+1/2}) - \beta KL(\pi\|\pi_{ref})] - KL(\pi\|\pi_k).

Each prox step has the closed form
:math:`(1+\eta\beta)\log\pi' = \log\pi_k + \eta\beta\log\pi_{ref} + \eta P(y \succ \pi_s) + c`, fitted on answer
pairs by the square loss ``losses.nash_mp_loss``. The second step restarts from :math:`\theta_k` and its
optimizer state (``SelfPlaySpec.extragradient``), and compares :math:`\pi_k`'s answers with
:math:`\pi_{k+1/2}`'s.

Deviations: the paper approximates each prox step with stochastic policy gradients; we regress its
closed form on pairs of :math:`\pi_k`'s answers instead (the same fixed point, and the anchors are
cached log-probs). The paper's exact LLM recipe (inner steps, step size) could not be checked, so the
defaults follow the tabular analysis: :math:`\eta = 1/L = 2` (L = 1/2, the Lipschitz constant of the win
rate), and beta = 0.1 as the EGPO comparison.
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
class NashMPConfig:
    """Nash-MP hyperparameters (tabular defaults, see the module docstring)."""

    eta: float = 2.0
    """Prox step size eta: each step contracts the distance to the equilibrium by about 1/(1 + eta*beta)."""
    beta: float = 0.1
    """KL strength toward the reference (the game's regularization)."""

    def __post_init__(self) -> None:
        if self.eta <= 0 or self.beta < 0:
            raise ValueError(f"need eta > 0 and beta >= 0, got eta={self.eta}, beta={self.beta}")


def build_targets(preferences: Tensor, opponents: Tensor | None, config: Any) -> PairTargets:
    """Every pair i < j with each answer's win rate against pi_k (half step) or pi_{k+1/2} (update)."""
    num_prompts, k, _ = preferences.shape
    first, second = all_pairs(num_prompts, k)
    wins = win_rates(preferences, opponents).reshape(-1)
    return PairTargets(first, second, {"win_chosen": wins[first], "win_rejected": wins[second]})


register_selfplay(
    SelfPlaySpec(name="nash_mp",
        summary="Nash-MP: Nash mirror prox, two KL-prox steps per iteration (Tiapkin et al. 2025)",
        config=NashMPConfig, loss="nash_mp", build_targets=build_targets, extragradient=True)
)
