r"""The KL-regularized Nash equilibrium of a preference game and the duality gap that measures distance to it.

Nash learning from human feedback (Munos et al., 2023, arXiv 2312.00886) looks for the symmetric
equilibrium of

.. math::

    J_\beta(\pi, \pi') = \pi^\top P \pi' - \beta\,\mathrm{KL}(\pi \,\|\, \pi_{ref})
        + \beta\,\mathrm{KL}(\pi' \,\|\, \pi_{ref}),
    \qquad \pi^*_\beta = \arg\max_\pi \min_{\pi'} J_\beta(\pi, \pi').

For ``beta > 0`` the equilibrium is unique and is the fixed point
:math:`\log\pi^* = \log\pi_{ref} + P\pi^*/\beta + c`. Its distance is measured by the duality gap
:math:`\max_{\pi_1} J_\beta(\pi_1, \pi) - \min_{\pi_2} J_\beta(\pi, \pi_2)`, whose best responses
are softmax tilts of the reference, :math:`\mathrm{BR}(\pi) \propto \pi_{ref}\exp(P\pi/\beta)`.
"""

from __future__ import annotations

import numpy as np
import torch

from hybridrl.preference.games_core import (
    PreferenceGame,
    Tensor,
    _as_batch,
    _check_beta,
    _win_rates,
)

__all__ = [
    "duality_gap",
    "duality_gap_batched",
    "game_value",
    "regularized_nash",
    "regularized_nash_batched",
]


def game_value(
    P: np.ndarray | Tensor, reference: np.ndarray | Tensor, policy: Tensor, opponent: Tensor, beta: float
) -> Tensor:
    r"""Regularized payoff :math:`J_\beta(\pi, \pi')` of the max player.

    Args:
        P: (G, n, n) preference matrices; reference: (G, n).
        policy, opponent: (..., G, n) policies (broadcast against each other).
        beta: KL coefficient (>= 0).

    Returns:
        (..., G) tensor :math:`\pi^\top P \pi' - \beta KL(\pi\|ref) + \beta KL(\pi'\|ref)`.
    """
    P_t = torch.as_tensor(P, dtype=torch.float64)
    ref = torch.as_tensor(reference, dtype=torch.float64, device=P_t.device)
    policy = policy.to(P_t)
    opponent = opponent.to(P_t)

    def kl(pi: Tensor) -> Tensor:
        return (torch.special.xlogy(pi, pi) - pi * ref.log()).sum(-1)

    payoff = (policy * _win_rates(P_t, opponent)).sum(-1)
    return payoff - beta * kl(policy) + beta * kl(opponent)


def duality_gap_batched(
    P: np.ndarray | Tensor, reference: np.ndarray | Tensor, policy: Tensor, beta: float
) -> Tensor:
    r"""Duality gap of the symmetric profile :math:`(\pi, \pi)` in each game.

    Uses the closed-form best responses: against :math:`\pi`, the max player's best response is
    :math:`\mathrm{BR}(\pi) \propto \pi_{ref}\exp(P\pi/\beta)` and so is the min player's (because
    :math:`P^\top\pi = 1 - P\pi`). Substituting them,

    .. math::
        \max_{\pi_1} J_\beta(\pi_1, \pi) - \min_{\pi_2} J_\beta(\pi, \pi_2)
        = 2\beta\,\mathrm{KL}(\pi \,\|\, \mathrm{BR}(\pi)),

    computed in this form because it has no cancellation of O(1) terms, so gaps down to ~1e-16
    are resolved. For ``beta = 0`` it is :math:`2\max_y (P\pi)_y - 1`.

    Args:
        P: (G, n, n) preference matrices (validated games; see :func:`solve_batched`).
        reference: (G, n) reference policies.
        policy: (..., G, n) policies, e.g. the (T + 1, G, n) output of :func:`solve_batched`.
        beta: KL coefficient (>= 0).

    Returns:
        (..., G) float64 tensor of gaps, clamped at 0 (rounding can give -1e-17).
    """
    beta = _check_beta(beta, allow_zero=True)
    P_t = torch.as_tensor(P, dtype=torch.float64)
    ref = torch.as_tensor(reference, dtype=torch.float64, device=P_t.device)
    policy = torch.as_tensor(policy, dtype=torch.float64, device=P_t.device)
    win_rates = _win_rates(P_t, policy)
    if beta == 0:
        return (2 * win_rates.max(-1).values - 1).clamp_min(0)
    log_best_response = torch.log_softmax(ref.log() + win_rates / beta, dim=-1)
    kl = (torch.special.xlogy(policy, policy) - policy * log_best_response).sum(-1)
    return (2 * beta * kl).clamp_min(0)


def duality_gap(game: PreferenceGame, policy: np.ndarray, beta: float) -> float | np.ndarray:
    """Duality gap of ``policy`` in ``game`` (see :func:`duality_gap_batched` for the formula).

    Args:
        game: the preference game.
        policy: (n,) probability vector, or (T, n) iterates such as the output of :func:`solve`.
        beta: KL coefficient (>= 0); 0 scores the unregularized game.

    Returns:
        A float for a single policy, a (T,) array for iterates.
    """
    pi = torch.as_tensor(np.asarray(policy, dtype=np.float64))
    if pi.shape[-1] != game.n or pi.ndim not in (1, 2):
        raise ValueError(f"policy must have shape (n,) or (T, n) with n={game.n}, got {tuple(pi.shape)}")
    if (pi < 0).any() or ((pi.sum(-1) - 1).abs() > 1e-8).any():
        raise ValueError("policy must be a probability vector (non-negative, sums to 1)")
    gaps = duality_gap_batched(
        torch.tensor(game.P)[None], torch.tensor(game.reference)[None], pi.unsqueeze(-2), beta
    )[..., 0]
    return float(gaps) if pi.ndim == 1 else gaps.numpy()


def _newton_fixed_point(P: Tensor, log_ref: Tensor, beta: float, x: Tensor, max_iter: int) -> Tensor:
    """Damped Newton on F(x) = x - log_ref - P softmax(x) / beta from x (G, n); see regularized_nash."""
    eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)

    def residual(x: Tensor) -> Tensor:
        return x - log_ref - _win_rates(P, torch.softmax(x, -1)) / beta

    F = residual(x)
    done = torch.zeros_like(F[..., :1], dtype=torch.bool)
    for _ in range(max_iter):
        # A game is done once its residual is at rounding level for the size of its logits, or when no
        # step along the Newton direction reduces ||F|| any more (the rounding floor, which for small
        # beta sits above that level because softmax(x) then loses eps * |x| relative accuracy).
        tolerance = 64 * torch.finfo(x.dtype).eps * (1 + x.abs().amax(-1, keepdim=True))
        done = done | (F.abs().amax(-1, keepdim=True) <= tolerance)
        if done.all():
            break
        pi = torch.softmax(x, -1)
        jac_pi = torch.diag_embed(pi) - pi.unsqueeze(-1) * pi.unsqueeze(-2)
        jacobian = eye - P @ jac_pi / beta
        direction = torch.linalg.solve(jacobian, -F.unsqueeze(-1)).squeeze(-1)
        direction = torch.where(done, 0.0, direction)
        # Backtracking per game (vectorized): halve the step where ||F|| did not decrease enough.
        step = torch.ones_like(F[..., :1])
        norm = F.norm(dim=-1, keepdim=True)
        accepted = done
        for _ in range(60):
            F_try = residual(x + step * direction)
            accepted = done | (F_try.norm(dim=-1, keepdim=True) <= (1 - 1e-4 * step) * norm)
            if accepted.all():
                break
            step = torch.where(accepted, step, step / 2)
        x = torch.where(accepted, x + step * direction, x)
        F = residual(x)
        # At the rounding floor Newton stops converging quadratically: a residual already below
        # sqrt(eps) * scale that no longer halves, or a step below 2^-20, means no digits are left to gain.
        stalled = (F.norm(dim=-1, keepdim=True) > 0.5 * norm) & (
            F.abs().amax(-1, keepdim=True) <= 1e-8 * (1 + x.abs().amax(-1, keepdim=True))
        )
        done = done | ~accepted | (step < 2.0**-20) | stalled
    return x


def _gap_tolerance(beta: float, n: int) -> float:
    """Largest duality gap that float64 rounding alone can give an exact equilibrium over n responses.

    The gap is 2 beta KL(pi || BR(pi)). A float64 probability vector sums to 1 only within about
    n eps (each entry is rounded, then summed), and a mass error m moves the KL by m, so the gap moves
    by 2 beta n eps; the KL's own terms pi_i (log pi_i - log BR_i) carry a few eps times the entropy
    (at most log n <= n), and for beta < 1 the tilt P pi / beta is the larger term, which 2 beta
    scales back to O(eps) -- hence max(1, beta). The constant 64 = 2 (the factor 2 beta) x 32 (a few
    rounded operations per term and the summation order, which differs across CPUs' SIMD widths)
    keeps margin over all of this while an error of 1e-6 in the policy, which moves the gap by
    about beta x 1e-12 x n, is still refused.
    """
    return 64 * torch.finfo(torch.float64).eps * max(1.0, beta) * n


def _check_equilibrium(P: Tensor, reference: Tensor, policy: Tensor, beta: float, max_iter: int) -> None:
    """Raise unless ``policy`` (G, n) is the equilibrium of every game to rounding level."""
    gap = duality_gap_batched(P, reference, policy, beta)
    tolerance = _gap_tolerance(beta, P.shape[-1])
    if (gap > tolerance).any():
        raise RuntimeError(
            f"regularized_nash did not converge: max gap {gap.max().item():.3g} (rounding allows "
            f"{tolerance:.3g}) after {max_iter} Newton steps; raise max_iter"
        )


def regularized_nash_batched(
    P: np.ndarray | Tensor,
    reference: np.ndarray | Tensor,
    beta: float,
    *,
    max_iter: int = 100,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""The unique equilibrium :math:`\pi^*_\beta` of every game, to machine precision.

    Method: globally damped Newton on the fixed-point equation in log space,

    .. math:: F(x) = x - \log\pi_{ref} - P\,\mathrm{softmax}(x)/\beta = 0,

    whose root is :math:`x^* = \log\pi^*`, exactly normalized. The Jacobian
    :math:`I - P J(\pi)/\beta` with :math:`J = \mathrm{diag}(\pi) - \pi\pi^\top` equals
    :math:`I - A J/\beta` with :math:`A = P - 1/2` skew-symmetric, so its eigenvalues are
    :math:`1 + i\lambda` with :math:`\lambda` real: it is never singular, the Newton direction is always a
    descent direction of :math:`\|F\|^2`, and backtracking makes the iteration converge from the
    reference (then quadratically). For beta < 1/4 it is run by continuation over beta, 2 beta,
    4 beta, ... (up to 1/4) from the largest down, each level warm-started from the previous one.
    Stops when :math:`\|F\|_\infty` reaches rounding level (or Newton stops making progress) and then checks
    that the duality gap is at rounding level, :math:`64\,\epsilon\,n\max(1, \beta)` (about 1.4e-13
    for n = 10 and beta <= 1; the gap scales with beta, and so does its rounding).

    Args:
        P: (G, n, n) or (n, n) preference matrices; reference: (G, n) or (n,).
        beta: KL coefficient, > 0.
        max_iter: Newton iterations per continuation level before giving up.
        device: where to compute (default: the device of ``P``).

    Returns:
        (G, n) float64 tensor of equilibria.

    Raises:
        RuntimeError: if the residual or the gap did not reach rounding level.
    """
    beta = _check_beta(beta, allow_zero=False)
    P_t, ref = _as_batch(P, reference, device)
    log_ref = ref.log()
    # Continuation in beta: for small beta the softmax is close to a max and Newton started at the
    # reference needs many damped steps; solving for 2 beta first and rescaling the tilt puts every
    # start in Newton's quadratic basin (a few steps per level).
    levels = [beta]
    while levels[-1] < 0.25:
        levels.append(2 * levels[-1])
    x = log_ref + _win_rates(P_t, ref) / levels[-1]
    previous = levels[-1]
    for level in reversed(levels):
        x = log_ref + (x - log_ref) * (previous / level)
        x = _newton_fixed_point(P_t, log_ref, level, x, max_iter)
        previous = level
    equilibrium = torch.softmax(x, -1)
    _check_equilibrium(P_t, ref, equilibrium, beta, max_iter)
    return equilibrium


def regularized_nash(game: PreferenceGame, beta: float) -> np.ndarray:
    """The unique equilibrium of the beta-regularized game, as an (n,) array (see the batched version).

    Damped Newton on :math:`\\log\\pi = \\log\\pi_{ref} + P\\pi/\\beta` to machine precision (errors
    ~1e-15, duality gap checked at rounding level, which grows with beta and n).
    """
    return regularized_nash_batched(game.P, game.reference, beta)[0].numpy()
