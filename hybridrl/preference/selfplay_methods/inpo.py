r"""INPO: Iterative Nash Policy Optimization (Zhang et al., arXiv 2407.00617, ICLR 2025).

Online mirror descent on the KL-regularized preference game, one step per iteration:
:math:`\pi_{t+1} \propto \pi_t^{1-\eta\tau}\pi_{ref}^{\eta\tau}\exp(\eta P(y \succ \pi_t))`, fitted with the
IPO-style loss ``losses.inpo_loss`` on pairs of the current policy's answers:
:math:`(h_t(y_w, y_l) - \eta/2)^2`, whose minimiser needs no per-answer win rate.

Deviations from the reference code (``inpo_original``):
- every judged pair of the K answers to a prompt is used, with the oracle's (soft) preference as the
  label's probability, instead of one winner/loser pair from a tournament; with a hard judge and a
  single pair this is the paper's loss;
- anchors are cached log-probs of the previous iterate and the reference, as INPO's ``precompute.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridrl.preference.selfplay_spec import SelfPlaySpec, every_pair_targets, register_selfplay


@dataclass(frozen=True, kw_only=True)
class INPOConfig:
    """INPO hyperparameters; defaults from the paper's scripts (``eta_code = 0.005``, ``ratio = 1/3``)."""

    eta: float = 200.0
    """OMD step size eta (the code's ``1/eta``); the loss pulls the log-ratio margin toward eta/2."""
    tau: float = 1.0 / 600.0
    """KL coefficient tau toward the reference; eta * tau is the code's ``ratio`` (1/3)."""

    def __post_init__(self) -> None:
        if self.eta <= 0 or not 0 <= self.eta * self.tau <= 1:
            raise ValueError(f"need eta > 0 and 0 <= eta * tau <= 1, got eta={self.eta}, tau={self.tau}")


register_selfplay(SelfPlaySpec(name="inpo",
        summary="INPO: online mirror descent on the regularized preference game (Zhang et al. 2024)",
        config=INPOConfig, loss="inpo", build_targets=every_pair_targets))
