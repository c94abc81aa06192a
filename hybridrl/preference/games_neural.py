r"""Neural versions of the tabular Nash-learning methods: a small MLP policy trained with the methods' losses.

This follows the neural simulations of EGPO (Zhou, Fazel, Du, 2025, arXiv 2503.08942; code
``zhourunlong/EGPO``, ``simulations/policies.py`` and ``loss_funcs.py``): each game has its own
network, a learned "virtual input" of width ``d`` followed by ``depth - 1`` hidden layers
``Linear(d, d) + ReLU`` and ``Linear(d, n)`` (Xavier-normal weights, zero biases), trained with plain SGD
on population (exact) or sampled online-IPO losses. All G networks are one batched computation.

With :math:`r_\theta = \log\pi_\theta - \log\pi_{ref}` and a detached target win-rate vector
:math:`w = P\pi_s`, the losses are

* online IPO 1 (EGPO's name; OMD / INPO's population loss):
  :math:`\frac{1}{n^2}\sum_{y,y'} \big((r_\theta(y) - r_\theta(y')) - (w(y) - w(y'))/\beta\big)^2`,
* online IPO 2 (Calandriello et al., 2024):
  :math:`\sum_{y,y'} \pi_t(y)\pi_t(y')
  \big((r_\theta(y) - r_\theta(y')) - (P(y \succ y') - 1/2)/\beta\big)^2`,

and the methods are

* ``egpo``: extragradient, two SGD steps from :math:`\theta_t` (the first with :math:`\pi_s = \pi_t`
  to reach :math:`\theta_{t+1/2}`, the second with :math:`\pi_s = \pi_{t+1/2}`), as EGPO's
  ``extragradient``;
* ``inpo``: one SGD step of online IPO 1 with :math:`\pi_s = \pi_t`;
* ``nash_md``: online IPO 1 against the geometric mixture
  :math:`\pi^\mu \propto \pi_t^{1-\tilde\eta\beta}\pi_{ref}^{\tilde\eta\beta}`,
  :math:`\tilde\eta = 4\,\mathrm{lr}/(n\beta)` (the tabular equivalent step; EGPO uses
  :math:`2\,\mathrm{lr}/(n\beta)`);
* ``online_ipo``: one SGD step of online IPO 2;
* ``nash_mp``: each of Nash-MP's two prox steps (Tiapkin et al., 2025) is fitted by ``inner_steps`` SGD
  steps regressing the network's log-probability differences onto the closed-form prox target
  :math:`(\ell_k + \eta\beta\ell_{ref} + \eta w)/(1 + \eta\beta)`; the extrapolated opponent
  :math:`\pi_{k+1/2}` is the closed-form one (not in EGPO's code; our construction);
* ``sppo``: SPPO's per-response regression (Wu et al., 2024) of
  :math:`\log\pi_\theta - \log\pi_t` onto :math:`\eta(w - 1/2)` (pairwise differences, so the
  normalizer drops out), fitted by ``inner_steps`` SGD steps.

Deviations: the network's output is offset so that the initial policy equals the game's reference
(EGPO instead uses the initial network as the reference); the sampled versions use
:mod:`hybridrl.preference.games`' Bernoulli win-rate estimates instead of EGPO's sampled triples.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from hybridrl.preference.games_core import WIN_RATE_LIPSCHITZ, _as_batch, _check_beta, _win_rates
from hybridrl.preference.games_solvers import _sampled_win_rate

__all__ = ["NEURAL_METHODS", "BatchedMLPPolicy", "gradient_steps_per_iteration", "online_ipo1_loss",
           "online_ipo2_loss", "solve_neural"]

Tensor = torch.Tensor
WinRateFn = Callable[[Tensor], Tensor]
NEURAL_METHODS: tuple[str, ...] = ("nash_mp", "egpo", "nash_md", "inpo", "sppo", "online_ipo")


class BatchedMLPPolicy(nn.Module):
    """G independent MLP softmax policies over n responses, evaluated as one batched computation.

    Args:
        log_reference: (G, n) log-probabilities of the reference; the initial policy equals it.
        width: width ``d`` of the virtual input and hidden layers (EGPO: 10).
        depth: number of linear layers (EGPO: 3).
        generator: torch generator for the Xavier-normal initialization.
    """

    def __init__(
        self,
        log_reference: Tensor,
        *,
        width: int = 10,
        depth: int = 3,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        num_games, n = log_reference.shape
        options = {"dtype": log_reference.dtype, "device": log_reference.device}
        sizes = [width] * depth + [n]
        self.virtual_input = nn.Parameter(torch.randn(num_games, width, generator=generator, **options))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            std = math.sqrt(2.0 / (fan_in + fan_out))  # Xavier normal, as EGPO's NeuralPolicy
            self.weights.append(
                nn.Parameter(std * torch.randn(num_games, fan_in, fan_out, generator=generator, **options))
            )
            self.biases.append(nn.Parameter(torch.zeros(num_games, fan_out, **options)))
        with torch.no_grad():
            offset = log_reference - self._raw_logits()
        self.register_buffer("offset", offset)

    def _raw_logits(self) -> Tensor:
        hidden = self.virtual_input
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            hidden = torch.einsum("gi,gio->go", hidden, weight) + bias
            if index < len(self.weights) - 1:
                hidden = torch.relu(hidden)
        return hidden

    def log_probs(self) -> Tensor:
        """(G, n) log-policy."""
        return torch.log_softmax(self._raw_logits() + self.offset, -1)


def _pair_differences(values: Tensor) -> Tensor:
    """(G, n) -> (G, n, n) with [g, y, y'] = values[g, y] - values[g, y']."""
    return values.unsqueeze(-1) - values.unsqueeze(-2)


def online_ipo1_loss(log_pi: Tensor, log_ref: Tensor, target_win_rates: Tensor, beta: float) -> Tensor:
    """EGPO's online IPO 1 over all (y, y') pairs, summed over games; target_win_rates (G, n) detached."""
    n = log_pi.shape[-1]
    residual = _pair_differences(log_pi - log_ref) - _pair_differences(target_win_rates.detach()) / beta
    return (residual**2).sum() / n**2


def online_ipo2_loss(log_pi: Tensor, log_ref: Tensor, P: Tensor, beta: float) -> Tensor:
    """Calandriello et al.'s online IPO with (y, y') ~ pi_t (weights detached), summed over games."""
    pi = log_pi.exp().detach()
    residual = _pair_differences(log_pi - log_ref) - (P - 0.5) / beta
    return (pi.unsqueeze(-1) * pi.unsqueeze(-2) * residual**2).sum()


def _regression_loss(log_pi: Tensor, target_log_pi: Tensor) -> Tensor:
    """Squared error between all pairwise log-probability differences (normalizer-free), per pair."""
    n = log_pi.shape[-1]
    return ((_pair_differences(log_pi) - _pair_differences(target_log_pi.detach())) ** 2).sum() / n**2


def _sgd_step(policy: BatchedMLPPolicy, loss: Tensor, lr: float) -> None:
    gradients = torch.autograd.grad(loss, list(policy.parameters()))
    with torch.no_grad():
        for parameter, gradient in zip(policy.parameters(), gradients, strict=True):
            parameter -= lr * gradient


def _fit(policy: BatchedMLPPolicy, target_log_pi: Tensor, lr: float, steps: int) -> None:
    for _ in range(steps):
        _sgd_step(policy, _regression_loss(policy.log_probs(), target_log_pi), lr)


def solve_neural(
    P: np.ndarray | Tensor,
    reference: np.ndarray | Tensor,
    method: str,
    beta: float,
    iterations: int,
    lr: float = 1e-2,
    samples: int | None = None,
    seed: int = 0,
    *,
    width: int = 10,
    depth: int = 3,
    inner_steps: int = 10,
    device: torch.device | str | None = None,
) -> Tensor:
    """Train one MLP policy per game with ``method``'s loss (see module docstring).

    Args:
        P: (G, n, n) preference matrices; reference: (G, n) reference policies (the initial policy).
        method: one of :data:`NEURAL_METHODS`.
        beta: KL coefficient (> 0; ``sppo`` ignores it and accepts 0).
        iterations: number of outer updates.
        lr: SGD learning rate (EGPO's neural runs: 3e-3 at beta = 0.01 exact, 1e-3 at beta = 0.1 sampled).
        samples: None for exact win rates, else Bernoulli queries per win-rate estimate (>= n).
        seed: seed of the initialization and of the query sampler.
        width, depth: network shape (EGPO: 10, 3).
        inner_steps: SGD steps fitting each prox / SPPO target (``nash_mp``, ``sppo``).
        device: as in :func:`hybridrl.preference.games.solve_batched`.

    Returns:
        (iterations + 1, G, n) float64 tensor of policies; row 0 is the reference.
    """
    if method not in NEURAL_METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(NEURAL_METHODS)}")
    beta = _check_beta(beta, allow_zero=method == "sppo")
    P_t, ref = _as_batch(P, reference, device)
    num_games, n, _ = P_t.shape
    generator = torch.Generator(device=P_t.device)
    generator.manual_seed(seed)
    log_ref = ref.log()
    policy = BatchedMLPPolicy(log_ref, width=width, depth=depth, generator=generator)
    if samples is None:

        def win_rate(opponent: Tensor) -> Tensor:
            return _win_rates(P_t, opponent)

    else:
        win_rate = _sampled_win_rate(P_t, samples, generator)
    step = _NEURAL_STEPS[method]
    history = torch.empty((iterations + 1, num_games, n), dtype=torch.float64, device=P_t.device)
    history[0] = ref
    for t in range(iterations):
        step(policy, log_ref, P_t, beta, lr, inner_steps, win_rate)
        with torch.no_grad():
            history[t + 1] = policy.log_probs().exp()
    return history


NeuralStep = Callable[[BatchedMLPPolicy, Tensor, Tensor, float, float, int, WinRateFn], None]


def gradient_steps_per_iteration(method: str, inner_steps: int = 10) -> int:
    """SGD steps one iteration of ``method`` takes: EGPO two (the half step and the step), Nash-MP and
    SPPO ``inner_steps`` fitting their target, the others one. A fair x-axis across methods."""
    if method not in NEURAL_METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(NEURAL_METHODS)}")
    return {"egpo": 2, "nash_mp": inner_steps, "sppo": inner_steps}.get(method, 1)


def _egpo(
    policy: BatchedMLPPolicy,
    log_ref: Tensor,
    P: Tensor,
    beta: float,
    lr: float,
    inner_steps: int,
    win_rate: WinRateFn,
) -> None:
    # EGPO `extragradient`: step to theta_{t+1/2}, read its win rates, return to theta_t, step again.
    saved = [parameter.detach().clone() for parameter in policy.parameters()]
    log_pi = policy.log_probs()
    _sgd_step(policy, online_ipo1_loss(log_pi, log_ref, win_rate(log_pi.exp().detach()), beta), lr)
    with torch.no_grad():
        half_win_rates = win_rate(policy.log_probs().exp())
        for parameter, value in zip(policy.parameters(), saved, strict=True):
            parameter.copy_(value)
    _sgd_step(policy, online_ipo1_loss(policy.log_probs(), log_ref, half_win_rates, beta), lr)


def _inpo(
    policy: BatchedMLPPolicy,
    log_ref: Tensor,
    P: Tensor,
    beta: float,
    lr: float,
    inner_steps: int,
    win_rate: WinRateFn,
) -> None:
    log_pi = policy.log_probs()
    _sgd_step(policy, online_ipo1_loss(log_pi, log_ref, win_rate(log_pi.exp().detach()), beta), lr)


def _nash_md(
    policy: BatchedMLPPolicy,
    log_ref: Tensor,
    P: Tensor,
    beta: float,
    lr: float,
    inner_steps: int,
    win_rate: WinRateFn,
) -> None:
    # Geometric-mixture weight eta~ beta with eta~ = 4 lr / (n beta), the tabular step of this SGD lr.
    mixture_weight = min(1.0, 4 * lr / log_ref.shape[-1])
    log_pi = policy.log_probs()
    log_mixture = torch.log_softmax((1 - mixture_weight) * log_pi.detach() + mixture_weight * log_ref, -1)
    _sgd_step(policy, online_ipo1_loss(log_pi, log_ref, win_rate(log_mixture.exp()), beta), lr)


def _online_ipo(
    policy: BatchedMLPPolicy,
    log_ref: Tensor,
    P: Tensor,
    beta: float,
    lr: float,
    inner_steps: int,
    win_rate: WinRateFn,
) -> None:
    _sgd_step(policy, online_ipo2_loss(policy.log_probs(), log_ref, P, beta), lr)


def _nash_mp(
    policy: BatchedMLPPolicy,
    log_ref: Tensor,
    P: Tensor,
    beta: float,
    lr: float,
    inner_steps: int,
    win_rate: WinRateFn,
) -> None:
    # Prox step eta = 1 / L (the tabular default); both targets are anchored at pi_k.
    eta = 1 / WIN_RATE_LIPSCHITZ
    with torch.no_grad():
        log_pi = policy.log_probs()
        anchor = log_pi + eta * beta * log_ref
        log_half = torch.log_softmax((anchor + eta * win_rate(log_pi.exp())) / (1 + eta * beta), -1)
        target = torch.log_softmax((anchor + eta * win_rate(log_half.exp())) / (1 + eta * beta), -1)
    _fit(policy, target, lr, inner_steps)


def _sppo(
    policy: BatchedMLPPolicy,
    log_ref: Tensor,
    P: Tensor,
    beta: float,
    lr: float,
    inner_steps: int,
    win_rate: WinRateFn,
) -> None:
    eta = 0.5  # the tabular default (games.default_lr)
    with torch.no_grad():
        log_pi = policy.log_probs()
        target = log_pi + eta * (win_rate(log_pi.exp()) - 0.5)
    _fit(policy, target, lr, inner_steps)


_NEURAL_STEPS: dict[str, NeuralStep] = {
    "nash_mp": _nash_mp,
    "egpo": _egpo,
    "nash_md": _nash_md,
    "inpo": _inpo,
    "sppo": _sppo,
    "online_ipo": _online_ipo,
}
