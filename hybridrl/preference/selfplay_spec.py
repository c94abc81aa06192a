"""What a self-play method contributes, and the registry of self-play methods.

A method (one file in :mod:`hybridrl.preference.selfplay_methods`) gives its config, the name of its
loss in ``losses.LOSSES`` and how it turns judgments into pairs and targets; the loop in
:mod:`hybridrl.preference.selfplay` does the rest. The pure tensor helpers the methods share live here
too, below the loop, so that a method file never imports the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from hybridrl import registry
from hybridrl.core.config import with_overrides
from hybridrl.preference.losses import resolve_loss

# ---------------------------------------------------------------------------------------------------
# What a method contributes


@dataclass(frozen=True)
class PairTargets:
    """Pairs of answers to train on and their targets; answers are flat indices ``prompt * K + k``."""

    first: Tensor
    """``[M]`` index of the first answer of each pair (the chosen slot of :class:`PairLogps`)."""
    second: Tensor
    """``[M]`` index of the second answer."""
    extras: dict[str, Tensor]
    """``[M]`` oracle targets the loss reads (``preference``, ``win_chosen``, ``win_rejected``)."""


TargetBuilder = Callable[[Tensor, "Tensor | None", Any], PairTargets]
"""(self_preferences [P, K, K], opponent_preferences [P, K, K] or None, method config) -> PairTargets."""


@dataclass(frozen=True)
class SelfPlaySpec:
    """A self-play method: its config class, loss name, target construction and sampling needs."""

    name: str
    summary: str
    """One line for ``hybridrl algos``: the method and its paper."""
    config: type
    """Frozen dataclass of the method's hyperparameters (paper defaults)."""
    loss: str
    """Key of ``losses.LOSSES``."""
    build_targets: TargetBuilder
    extragradient: bool = False
    """Two phases per iteration, the second against the half-step policy from the restored state."""
    mixture_opponents: bool = False
    """Opponents sampled from the per-token geometric mixture of policy and reference (Nash-MD);
    the method config then has ``mixture_coef``."""
    one_step: bool = False
    """One optimizer step per phase on the phase's fresh samples, as the reference trainers take: for a
    loss with no anchor to the previous policy, fitting one batch hard is best-response play. The step
    averages the gradient over every pair of the iteration (accumulated over ``batch_size`` minibatches),
    so the run's learning rate alone sets its size; ``steps_per_iteration`` does not apply."""

    def optimizer_steps(self, iterations: int, steps_per_iteration: int) -> int:
        """Optimizer steps of a whole run: one per phase for one-step methods, ``steps_per_iteration``
        per phase otherwise, and two phases per iteration for extragradient methods."""
        per_phase = 1 if self.one_step else steps_per_iteration
        return iterations * per_phase * (2 if self.extragradient else 1)


SELFPLAY_METHODS: dict[str, SelfPlaySpec] = {}
"""Method name -> spec; filled by the modules of :mod:`hybridrl.preference.selfplay_methods`."""


def register_selfplay(spec: SelfPlaySpec) -> SelfPlaySpec:
    if spec.name in SELFPLAY_METHODS:
        raise ValueError(f"self-play method {spec.name!r} is already registered")
    resolve_loss(spec.loss)
    SELFPLAY_METHODS[spec.name] = spec
    registry.register(registry.MethodSpec(name=spec.name, family="selfplay", config=spec.config, summary=spec.summary))
    return spec


def method_config(spec: SelfPlaySpec, overrides: dict[str, Any] | None = None) -> Any:
    """The method's config with ``overrides`` (text is converted to the field's type by the one override
    parser, so ``false`` is False)."""
    known = [f.name for f in fields(spec.config)]
    for key in overrides or {}:
        if key not in known:
            raise ValueError(f"{spec.name} has no parameter {key!r}: choose one of {', '.join(known)}")
    return with_overrides(spec.config(), dict(overrides or {}))


# ---------------------------------------------------------------------------------------------------
# Helpers the methods share (pure tensor functions)


def all_pairs(num_prompts: int, k: int) -> tuple[Tensor, Tensor]:
    """Flat indices of every pair ``i < j`` of the ``k`` answers of each prompt: ``[P * k(k-1)/2]`` each."""
    i, j = torch.triu_indices(k, k, 1)
    base = (torch.arange(num_prompts) * k)[:, None]
    return (base + i).reshape(-1), (base + j).reshape(-1)


def pair_values(matrix: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """``matrix[p, i, j]`` for flat answer indices ``first = p*k + i``, ``second = p*k + j``."""
    k = matrix.size(-1)
    return matrix[first // k, first % k, second % k]


def every_pair_targets(preferences: Tensor, opponents: Tensor | None, config: Any) -> PairTargets:
    """Every pair i < j of a prompt's answers with P(y_i beats y_j) as its label (INPO, online IPO,
    online DPO): ``K(K-1)/2`` pairs per prompt, each judgment used once."""
    num_prompts, k, _ = preferences.shape
    first, second = all_pairs(num_prompts, k)
    return PairTargets(first, second, {"preference": pair_values(preferences, first, second)})


def win_rates(self_preferences: Tensor, opponent_preferences: Tensor | None) -> Tensor:
    r"""``[P, K]`` estimates of :math:`P(y_i \succ \pi_s)`: the mean over the opponents' answers when given,
    else over the *other* answers of the same policy (leave-one-out, so unbiased for :math:`\pi_t`)."""
    if opponent_preferences is not None:
        return opponent_preferences.mean(-1)
    k = self_preferences.size(-1)
    return (self_preferences.sum(-1) - 0.5) / (k - 1)
