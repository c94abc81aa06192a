r"""Online IPO (Calandriello et al., arXiv 2403.08635), the baseline of the Nash-MP and EGPO papers.

Both answers are sampled from the current policy and the IPO loss is regressed on the oracle's
preference: ``losses.online_ipo_loss``,
:math:`([r(y) - r(y')] - (P(y \succ y') - 1/2)/\beta)^2` with :math:`r = \log\pi_\theta/\pi_{ref}`.
Its gradient is the self-play policy gradient, which can be unstable (Tiapkin et al.); the proximal
and extragradient methods exist to fix that. Every pair of the K answers to a prompt is used.

One optimizer step per iteration on fresh samples, as the reference trainers (TRL's online trainers,
EGPO's ``online_ipo`` baselines): the loss has no anchor to the previous policy, so fitting one batch
of samples hard would reach its minimiser :math:`\log\pi_{ref} + P(\cdot \succ \pi_t)/\beta`, the best
response to :math:`\pi_t`, whatever the step size. That step's gradient is the mean over every pair of
the iteration (``SelfPlaySpec.one_step``), so its size is the run's learning rate alone (default 5e-7,
the reference trainers'), not a product of learning rate, steps and batch size.

Log-probs are summed over the answer, not averaged per token, as TRL's online trainers (the offline
``ipo`` loss, ``losses.ipo_loss``, averages per token as TRL's ``DPOTrainer``); beta is therefore on the
summed scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridrl.preference.selfplay_spec import SelfPlaySpec, every_pair_targets, register_selfplay


@dataclass(frozen=True, kw_only=True)
class OnlineIPOConfig:
    """Online IPO hyperparameters (EGPO's LM baselines use beta = 0.1)."""

    beta: float = 0.1
    """KL strength toward the reference: the target margin is (P - 1/2) / beta."""

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")


register_selfplay(
    SelfPlaySpec(name="online_ipo",
        summary="Online IPO: IPO on the policy's own judged answers (Calandriello et al. 2024)",
        config=OnlineIPOConfig, loss="online_ipo", build_targets=every_pair_targets, one_step=True)
)
