r"""Pairwise preference losses as pure functions of per-sequence log-probabilities.

Every loss sees the same input, a :class:`PairLogps` (summed completion log-probs of the policy and of
the reference for the chosen and rejected answers, plus completion lengths), and returns one loss per
pair. :func:`preference_loss` averages it and adds the implicit rewards and the logged metrics.

DPO (Rafailov et al. 2023, arXiv 2305.18290, eq. 7), with
:math:`r = \log\pi_\theta(y|x) - \log\pi_{ref}(y|x)`:

.. math:: \mathcal{L}_{DPO} = -\log\sigma\big(\beta\,[s(r_w) - s(r_l)]\big)

f-DPO (Wang et al. 2023, arXiv 2309.16240) replaces the reverse KL by an f-divergence; the optimal
policy then satisfies :math:`\beta f'(\pi/\pi_{ref}) = r(x, y) - \lambda(x)`, so the loss is DPO with
the *score* :math:`s(r) = f'(e^{r})` in place of :math:`r`. The score transform is therefore a separate
registry (:data:`SCORE_TRANSFORMS`) composed with any link loss in :data:`LOSSES` (sigmoid, IPO, ...).

IPO (Azar et al. 2023, arXiv 2310.12036, eq. 17): :math:`(h - 1/(2\beta))^2`, with :math:`h` the
score margin; as in TRL, each score is first divided by its completion length (TRL: "confirmed with
the IPO authors").

Deviations from the papers, all matching TRL 1.16 ``DPOTrainer`` so that the two agree to 1e-5:
- scores keep TRL's constants: forward KL :math:`1 - 1/u`, JS :math:`\log 2 + \log\sigma(r)`,
  alpha :math:`(u^{a-1} - 1)/(a - 1)`, reverse KL :math:`r` (the paper's :math:`+1` is dropped). Constants
  cancel in the sigmoid loss, not in the length-normalised IPO loss.
- ``alpha`` is TRL's ``f_alpha_divergence_coef`` :math:`a`; the paper's :math:`\alpha` is :math:`1 - a`
  (:math:`a = 1` is reverse KL, :math:`a = 0` forward KL). The exponent is clamped at 80 (11 in fp16).
- implicit rewards are :math:`\beta r` (the raw log-ratio), whatever the divergence.

New losses (INPO, SPPO, ...) join by adding an entry to :data:`LOSSES` with :func:`register_loss`;
anchor log-probs they need beyond the reference go in ``PairLogps.extras``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class PairLogps:
    """Per-sequence inputs of a pairwise loss; every tensor has shape ``[B]`` (one entry per pair)."""

    policy_chosen: Tensor
    """Summed log-prob of the chosen completion under the policy (nats)."""
    policy_rejected: Tensor
    """Summed log-prob of the rejected completion under the policy."""
    ref_chosen: Tensor
    """Summed log-prob of the chosen completion under the reference (no gradient)."""
    ref_rejected: Tensor
    """Summed log-prob of the rejected completion under the reference."""
    chosen_lengths: Tensor
    """Completion tokens of each chosen answer (for length-normalised losses)."""
    rejected_lengths: Tensor
    """Completion tokens of each rejected answer."""
    extras: Mapping[str, Tensor] = field(default_factory=dict)
    """Further per-pair tensors a loss may need (e.g. log-probs under the previous iterate for INPO)."""

    @property
    def chosen_logratios(self) -> Tensor:
        return self.policy_chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> Tensor:
        return self.policy_rejected - self.ref_rejected


@dataclass(frozen=True)
class PreferenceLossOutput:
    """What :func:`preference_loss` returns."""

    loss: Tensor
    """Scalar loss, mean over pairs."""
    chosen_rewards: Tensor
    """``[B]`` implicit reward ``beta * (log pi - log pi_ref)`` of the chosen answers, detached."""
    rejected_rewards: Tensor
    """``[B]`` implicit reward of the rejected answers, detached."""
    metrics: dict[str, Tensor]
    """Detached scalars named as TRL logs them (``rewards/margins``, ``rewards/accuracies``, ...)."""


# ---------------------------------------------------------------------------------------------------
# Score transforms s(r) = f'(exp(r)), r = log pi - log pi_ref (f-DPO, Table 1; constants as in TRL 1.16).


def reverse_kl_score(logratio: Tensor, alpha: float) -> Tensor:
    """Reverse KL, f(u) = u log u: plain DPO."""
    return logratio


def forward_kl_score(logratio: Tensor, alpha: float) -> Tensor:
    """Forward KL, f(u) = -log u: f'(u) = -1/u, written 1 - 1/u as in TRL."""
    return 1.0 - torch.exp(-logratio)


def js_divergence_score(logratio: Tensor, alpha: float) -> Tensor:
    """Jensen-Shannon: f'(u) = log(2u / (1 + u)) = log 2 + log sigmoid(log u)."""
    return math.log(2.0) + F.logsigmoid(logratio)


def alpha_divergence_score(logratio: Tensor, alpha: float) -> Tensor:
    """Alpha divergence in TRL's parameterisation: f'(u) = (u^(a-1) - 1) / (a - 1); a -> 1 is reverse KL."""
    if abs(alpha - 1.0) < 1e-6:
        return logratio
    exponent = (alpha - 1.0) * logratio
    # exp overflows past ~88 in fp32 and ~11 in fp16; compute in fp32 and clamp like TRL
    clamp_max = 11.0 if exponent.dtype == torch.float16 else 80.0
    powered = torch.exp(torch.clamp(exponent.float(), max=clamp_max)) - 1.0
    return powered.to(exponent.dtype) / (alpha - 1.0)


ScoreTransform = Callable[[Tensor, float], Tensor]

SCORE_TRANSFORMS: dict[str, ScoreTransform] = {
    "reverse_kl": reverse_kl_score,
    "forward_kl": forward_kl_score,
    "js_divergence": js_divergence_score,
    "alpha_divergence": alpha_divergence_score,
}
"""f-divergence name (TRL's ``f_divergence_type`` values) -> score transform."""

DIVERGENCE_ALIASES: dict[str, str] = {
    "rkl": "reverse_kl",
    "fkl": "forward_kl",
    "js": "js_divergence",
    "alpha": "alpha_divergence",
}
"""Short names accepted on the command line."""


def resolve_divergence(name: str) -> ScoreTransform:
    """The score transform called ``name`` (or one of its aliases); unknown names list the valid ones."""
    canonical = DIVERGENCE_ALIASES.get(name, name)
    if canonical not in SCORE_TRANSFORMS:
        valid = ", ".join(sorted(SCORE_TRANSFORMS))
        aliases = ", ".join(f"{k}={v}" for k, v in sorted(DIVERGENCE_ALIASES.items()))
        raise ValueError(f"unknown divergence {name!r}: choose one of {valid} (aliases: {aliases})")
    return SCORE_TRANSFORMS[canonical]


def pair_scores(pair: PairLogps, config: Any) -> tuple[Tensor, Tensor]:
    """Chosen and rejected scores ``s(r)`` under ``config.divergence`` (with ``config.alpha``)."""
    transform = resolve_divergence(config.divergence)
    return transform(pair.chosen_logratios, config.alpha), transform(pair.rejected_logratios, config.alpha)


# ---------------------------------------------------------------------------------------------------
# Link losses: one loss per pair, shape [B].


def dpo_sigmoid_loss(pair: PairLogps, config: Any) -> Tensor:
    """DPO (eq. 7): -log sigmoid(beta * (s_w - s_l))."""
    chosen, rejected = pair_scores(pair, config)
    return -F.logsigmoid(config.beta * (chosen - rejected))


def ipo_loss(pair: PairLogps, config: Any) -> Tensor:
    """IPO (eq. 17) on length-normalised scores: (s_w/|y_w| - s_l/|y_l| - 1/(2 beta))^2."""
    chosen, rejected = pair_scores(pair, config)
    margin = chosen / pair.chosen_lengths.clamp(min=1) - rejected / pair.rejected_lengths.clamp(min=1)
    return (margin - 1.0 / (2.0 * config.beta)) ** 2


def hinge_loss(pair: PairLogps, config: Any) -> Tensor:
    """SLiC hinge (Zhao et al. 2023, arXiv 2305.10425): relu(1 - beta * (s_w - s_l))."""
    chosen, rejected = pair_scores(pair, config)
    return torch.relu(1.0 - config.beta * (chosen - rejected))


def robust_dpo_loss(pair: PairLogps, config: Any) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024, arXiv 2403.00409, eq. 8): unbiased under label-flip rate eps."""
    chosen, rejected = pair_scores(pair, config)
    logits = config.beta * (chosen - rejected)
    eps = config.label_smoothing
    return (-(1.0 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1.0 - 2.0 * eps)


PairLoss = Callable[[PairLogps, Any], Tensor]

LOSSES: dict[str, PairLoss] = {
    "sigmoid": dpo_sigmoid_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "robust": robust_dpo_loss,
}
"""``loss_type`` name (TRL's names) -> per-pair loss. Extend with :func:`register_loss`."""


def register_loss(name: str, fn: PairLoss) -> None:
    """Add a pairwise loss under ``name``; names are never silently overwritten."""
    if name in LOSSES:
        raise ValueError(f"loss {name!r} is already registered")
    LOSSES[name] = fn


def resolve_loss(name: str) -> PairLoss:
    """The loss called ``name``; unknown names list the valid ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss_type {name!r}: choose one of {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PreferenceLossConfig:
    """Hyperparameters of the pairwise losses; names and defaults follow TRL's ``DPOConfig``."""

    beta: float = 0.1
    """KL strength (DPO paper, App. B; TRL default). For IPO it is the paper's tau."""
    loss_type: str = "sigmoid"
    """Link loss, a key of LOSSES: sigmoid (DPO), ipo, hinge, robust."""
    divergence: str = "reverse_kl"
    """f-DPO divergence, a key of SCORE_TRANSFORMS (TRL ``f_divergence_type``); reverse_kl is DPO."""
    alpha: float = 0.5
    """Alpha-divergence coefficient a (TRL ``f_alpha_divergence_coef``, default 0.5 = paper alpha 0.5)."""
    label_smoothing: float = 0.0
    """Assumed label-flip rate eps for the robust loss (TRL default 0)."""

    def __post_init__(self) -> None:
        resolve_loss(self.loss_type)
        resolve_divergence(self.divergence)
        # store the canonical name, so that configs written to disk never hold an alias
        object.__setattr__(self, "divergence", DIVERGENCE_ALIASES.get(self.divergence, self.divergence))
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


def preference_loss(pair: PairLogps, config: PreferenceLossConfig) -> PreferenceLossOutput:
    """Mean pairwise loss of ``config.loss_type`` plus implicit rewards and TRL-named metrics."""
    per_pair = resolve_loss(config.loss_type)(pair, config)
    chosen_rewards = config.beta * pair.chosen_logratios.detach()
    rejected_rewards = config.beta * pair.rejected_logratios.detach()
    margins = chosen_rewards - rejected_rewards
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": margins.mean(),
        "rewards/accuracies": (margins > 0).float().mean(),
        "logps/chosen": pair.policy_chosen.detach().mean(),
        "logps/rejected": pair.policy_rejected.detach().mean(),
        # E over dataset answers of log pi/pi_ref: an off-policy proxy of KL(pi || pi_ref) (exact only
        # for answers sampled from pi), cheap because both log-probs are already there.
        "kl/dataset_logratio": 0.5 * (pair.chosen_logratios + pair.rejected_logratios).detach().mean(),
    }
    return PreferenceLossOutput(
        loss=per_pair.mean(),
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        metrics=metrics,
    )


METHODS: dict[str, PreferenceLossConfig] = {
    "dpo": PreferenceLossConfig(),
    "ipo": PreferenceLossConfig(loss_type="ipo"),
    # f-DPO's paper singles out Jensen-Shannon as the divergence that keeps diversity at little cost
    "fdpo": PreferenceLossConfig(divergence="js_divergence"),
}
"""Method name (the CLI's ``train METHOD``) -> its default loss settings."""


def resolve_method(name: str) -> PreferenceLossConfig:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]
