r"""Tabular preference games: the KL-regularized Nash equilibrium and the self-play methods that seek it.

A preference game over ``n`` responses is a matrix ``P`` with ``P[i, j]`` the probability that
response ``i`` is preferred to response ``j`` (so ``P + P.T = 1`` and ``P[i, i] = 1/2``), plus a
reference policy :math:`\pi_{ref}`. Nash learning from human feedback (Munos et al., 2023,
arXiv 2312.00886) looks for the symmetric equilibrium of

.. math::

    J_\beta(\pi, \pi') = \pi^\top P \pi' - \beta\,\mathrm{KL}(\pi \,\|\, \pi_{ref})
        + \beta\,\mathrm{KL}(\pi' \,\|\, \pi_{ref}),
    \qquad \pi^*_\beta = \arg\max_\pi \min_{\pi'} J_\beta(\pi, \pi').

For ``beta > 0`` the equilibrium is unique and is the fixed point
:math:`\log\pi^* = \log\pi_{ref} + P\pi^*/\beta + c`. Its distance is measured by the duality gap
:math:`\max_{\pi_1} J_\beta(\pi_1, \pi) - \min_{\pi_2} J_\beta(\pi, \pi_2)`, whose best responses
are softmax tilts of the reference, :math:`\mathrm{BR}(\pi) \propto \pi_{ref}\exp(P\pi/\beta)`.

Every method is written in its exact tabular (population) form on log-probabilities
:math:`\ell = \log\pi`, with :math:`w(\pi) = P\pi` the vector of win rates
:math:`P(y \succ \pi)` and step size :math:`\eta` (``lr``):

* ``nash_mp``: Nash Mirror Prox (Tiapkin et al., 2025, arXiv 2505.19731), two KL-prox steps anchored
  at :math:`\pi_k`, the second against the extrapolated :math:`\pi_{k+1/2}`:
  :math:`\ell_{k+1/2} \propto (\ell_k + \eta\beta\ell_{ref} + \eta w(\pi_k)) / (1 + \eta\beta)` and
  :math:`\ell_{k+1} \propto (\ell_k + \eta\beta\ell_{ref} + \eta w(\pi_{k+1/2})) / (1 + \eta\beta)`.
* ``egpo``: extragradient (Zhou, Fazel, Du, 2025, arXiv 2503.08942, the logit form of their
  online-IPO gradients):
  :math:`\ell_{t+1/2} \propto (1-\eta\beta)\ell_t + \eta\beta\ell_{ref} + \eta w(\pi_t)`,
  :math:`\ell_{t+1} \propto (1-\eta\beta)\ell_t + \eta\beta\ell_{ref} + \eta w(\pi_{t+1/2})`.
* ``nash_md``: Nash mirror descent (Munos et al., 2023): play against the geometric mixture
  :math:`\ell^\mu_t \propto (1-\eta_t\beta)\ell_t + \eta_t\beta\ell_{ref}`, then
  :math:`\ell_{t+1} \propto \ell^\mu_t + \eta_t w(\pi^\mu_t)`.
* ``inpo``: INPO's online mirror descent target (Zhang et al., 2024, arXiv 2407.00617):
  :math:`\pi_{t+1} \propto \pi_t^{1-\eta\beta}\pi_{ref}^{\eta\beta}\exp(\eta w(\pi_t))`.
* ``sppo``: SPPO (Wu et al., 2024, arXiv 2405.00675), multiplicative weights against itself,
  :math:`\pi_{t+1} \propto \pi_t \exp(\eta (w(\pi_t) - 1/2))`. SPPO has no reference anchor, so
  ``beta`` does not enter its update (pass ``beta=0`` to score it on the unregularized game). This is
  plain multiplicative weights: its time average converges, its last iterate does not.
* ``online_ipo``: online IPO (Calandriello et al., 2024, arXiv 2403.08635) with both responses drawn
  from the current policy; its population gradient on the softmax logits is the self-play policy
  gradient :math:`\nabla_\theta [\pi_\theta^\top P \pi_t - \beta\mathrm{KL}(\pi_\theta\|\pi_{ref})]` at
  :math:`\theta = \ell_t` (Tiapkin et al., COLT 2026 version of 2505.19731), i.e.
  :math:`\ell_{t+1} = \ell_t + \eta\,\pi_t \odot (h_t - \pi_t^\top h_t)` with
  :math:`h_t = w(\pi_t) - \beta(\ell_t - \ell_{ref})`.

Exact versus sampled preferences: with ``samples=K`` every evaluation of a win-rate vector
:math:`w(\pi_s)` is replaced by an unbiased estimate from ``K`` Bernoulli preference queries, spread
evenly over the ``n`` responses (response ``y`` is compared with opponents :math:`y'' \sim \pi_s` and
the outcome is drawn with probability ``P[y, y'']``). Extragradient methods (``nash_mp``, ``egpo``)
query twice per iteration, as in both papers.

Deviations from the reference code, stated so results can be compared:

* EGPO's simulations (``zhourunlong/EGPO``, ``simulations/loss_funcs.py``) take SGD steps on the
  online-IPO-1 loss; an SGD step with learning rate ``lr_sgd`` on that loss is exactly the ``egpo``
  logit update above with :math:`\eta = 4\,\mathrm{lr_{sgd}}/(n\beta)` (their ``lr=0.1``, ``n=10``,
  ``beta=0.1`` gives :math:`\eta = 0.4`). Their sampled version uses the probabilities
  ``P[y, y'']`` of sampled triples; ours draws Bernoulli outcomes.
* In this exact tabular form EGPO with step :math:`\eta` and Nash-MP with step
  :math:`\eta/(1-\eta\beta)` produce the same iterates (divide the EGPO update by
  :math:`1-\eta\beta`); the methods differ once each step is fitted by a parametric policy.
* INPO and SPPO regress on pairwise / per-response targets whose minimizer is the update above; here
  the minimizer is applied exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from hybridrl.core.seeding import resolve_device

__all__ = [
    "METHODS",
    "PreferenceGame",
    "default_lr",
    "duality_gap",
    "duality_gap_batched",
    "game_value",
    "gap_curves",
    "random_games",
    "regularized_nash",
    "regularized_nash_batched",
    "solve",
    "solve_batched",
]

# Lipschitz constant of the win-rate map pi -> P pi from the l1 norm to the sup norm: for a
# difference d of two policies (sum d = 0), |(P d)_y| = |sum_x (P[y, x] - 1/2) d_x| <= ||d||_1 / 2.
# Mirror-prox theory (KL is 1-strongly convex w.r.t. l1 by Pinsker) allows eta <= 1 / L.
WIN_RATE_LIPSCHITZ = 0.5

# Tolerance of the P + P.T = 1 and sum(reference) = 1 checks; inputs are then projected exactly.
_VALIDATION_ATOL = 1e-9

Tensor = torch.Tensor
WinRateFn = Callable[[Tensor], Tensor]
StepFn = Callable[[Tensor, Tensor, float, float, WinRateFn], Tensor]


# --------------------------------------------------------------------------------------------
# Validation and the game object
# --------------------------------------------------------------------------------------------


def _check_preference_matrices(P: Tensor) -> Tensor:
    """Validate a (G, n, n) stack of preference matrices; return them projected onto P + P.T = 1."""
    if P.ndim != 3 or P.shape[-1] != P.shape[-2]:
        raise ValueError(
            f"P must be a square (n, n) matrix (or a (G, n, n) stack), got shape {tuple(P.shape)}; "
            "pass one row and one column per response"
        )
    n = P.shape[-1]
    if n < 2:
        raise ValueError(f"a preference game needs at least 2 responses, got n={n}; add responses")
    if not torch.isfinite(P).all():
        raise ValueError("P contains NaN or inf; every entry must be a probability in [0, 1]")
    if (P < 0).any() or (P > 1).any():
        lo, hi = P.min().item(), P.max().item()
        raise ValueError(
            f"P entries must lie in [0, 1] (they are win probabilities), got range [{lo:.4g}, {hi:.4g}]; "
            "rescale or clip them"
        )
    diagonal = torch.diagonal(P, dim1=-2, dim2=-1)
    if (diagonal - 0.5).abs().max() > _VALIDATION_ATOL:
        raise ValueError(
            "P must have 0.5 on the diagonal (a response ties with itself); "
            f"max |P[i, i] - 0.5| is {(diagonal - 0.5).abs().max().item():.3g}; set the diagonal to 0.5"
        )
    skew_error = (P + P.transpose(-1, -2) - 1).abs()
    if skew_error.max() > _VALIDATION_ATOL:
        flat = int(skew_error.reshape(-1).argmax())
        i, j = (flat // n) % n, flat % n
        raise ValueError(
            f"P + P.T must equal 1 (P[i, j] is the probability that i beats j); max deviation "
            f"{skew_error.max().item():.3g} at (i, j) = ({i}, {j}); set P[j, i] = 1 - P[i, j]"
        )
    # Project out rounding so that pi^T P pi = 1/2 holds to machine precision (the gap formula uses it).
    return 0.5 * (P + 1 - P.transpose(-1, -2))


def _check_references(reference: Tensor, n: int) -> Tensor:
    """Validate a (G, n) stack of reference policies; return them renormalized."""
    if reference.ndim != 2 or reference.shape[-1] != n:
        raise ValueError(
            f"reference must be a probability vector of length n={n} (or (G, n)), "
            f"got shape {tuple(reference.shape)}; pass one probability per response"
        )
    if not torch.isfinite(reference).all() or (reference <= 0).any():
        raise ValueError(
            "reference must have positive, finite entries (the KL to it must be finite); "
            "mix in a little uniform mass, e.g. 0.99 * ref + 0.01 / n"
        )
    totals = reference.sum(-1)
    if (totals - 1).abs().max() > _VALIDATION_ATOL:
        raise ValueError(
            f"reference must sum to 1, got sums in [{totals.min().item():.6g}, {totals.max().item():.6g}]; "
            "normalize it with reference / reference.sum()"
        )
    return reference / totals.unsqueeze(-1)


def _check_beta(beta: float, *, allow_zero: bool) -> float:
    if not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number, got {beta!r}")
    if beta < 0 or (beta == 0 and not allow_zero):
        needed = "beta >= 0" if allow_zero else "beta > 0 (the unregularized game has no unique equilibrium)"
        raise ValueError(f"need {needed}, got beta={beta}")
    return float(beta)


class PreferenceGame:
    """A symmetric preference game ``(P, reference)`` over ``n`` responses.

    Args:
        P: (n, n) array; ``P[i, j]`` is the probability that response ``i`` beats ``j``.
            Must satisfy ``P + P.T == 1`` and ``P[i, i] == 0.5`` (tolerance 1e-9; the stored copy
            is projected so both hold to machine precision).
        reference: (n,) reference policy with positive entries summing to 1 (renormalized).

    Raises:
        ValueError: naming the violated condition and how to fix it.
    """

    def __init__(self, P: np.ndarray | Tensor, reference: np.ndarray | Tensor) -> None:
        P_t = torch.as_tensor(np.asarray(P, dtype=np.float64))
        if P_t.ndim != 2:
            raise ValueError(
                f"P must be a square (n, n) matrix, got shape {tuple(P_t.shape)}; "
                "use solve_batched / random_games for stacks of games"
            )
        ref_t = torch.as_tensor(np.asarray(reference, dtype=np.float64))
        if ref_t.ndim != 1:
            raise ValueError(f"reference must be a 1-D probability vector, got shape {tuple(ref_t.shape)}")
        P_t = _check_preference_matrices(P_t.unsqueeze(0))[0]
        ref_t = _check_references(ref_t.unsqueeze(0), P_t.shape[0])[0]
        self.P: np.ndarray = P_t.numpy()
        self.reference: np.ndarray = ref_t.numpy()
        self.P.flags.writeable = False
        self.reference.flags.writeable = False

    @property
    def n(self) -> int:
        """Number of responses."""
        return self.P.shape[0]

    def __repr__(self) -> str:
        return f"PreferenceGame(n={self.n}, cycle={self.preference_cycle()})"

    @classmethod
    def random(
        cls,
        n: int,
        seed: int = 0,
        *,
        reference: Literal["random", "uniform"] = "random",
    ) -> PreferenceGame:
        """A random intransitive game, the first game of :func:`random_games` ``(1, n, seed)``.

        ``P[i, j] ~ U(0, 1)`` below the diagonal as in EGPO's simulations (``simulations/utils.py``),
        redrawn until no response beats every other one (no Condorcet winner), which guarantees a
        preference cycle ``i > j > k > i`` (see :meth:`preference_cycle`).
        """
        P, ref = random_games(1, n, seed, reference=reference)
        return cls(P[0].numpy(), ref[0].numpy())

    def condorcet_winner(self) -> int | None:
        """The response that beats every other with probability > 1/2, or None."""
        beats = self.P > 0.5
        wins = beats.sum(1)
        winners = np.flatnonzero(wins == self.n - 1)
        return int(winners[0]) if winners.size else None

    def preference_cycle(self) -> tuple[int, int, int] | None:
        """A majority cycle ``(i, j, k)`` with P[i, j], P[j, k], P[k, i] all > 1/2, or None.

        A tournament has a cycle if and only if it has one of length 3, so this is a complete check
        of (majority) intransitivity.
        """
        beats = (self.P > 0.5).astype(np.int64)
        # (beats @ beats)[i, k] counts j with i > j > k; a cycle closes when also k > i.
        closing = (beats @ beats) * beats.T
        found = np.argwhere(closing > 0)
        if found.size == 0:
            return None
        i, k = (int(v) for v in found[0])
        j = int(np.flatnonzero(beats[i] * beats[:, k])[0])
        return i, j, k


def random_games(
    num_games: int,
    n: int,
    seed: int = 0,
    *,
    reference: Literal["random", "uniform"] = "random",
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """A stack of random intransitive preference games.

    ``P[g, i, j] ~ U(0, 1)`` for ``i > j`` and ``P[g, j, i] = 1 - P[g, i, j]`` (EGPO's generator);
    games with a Condorcet winner are redrawn, so every game contains a majority cycle. The reference
    is ``softmax(N(0, I))`` (EGPO's ``random_init``) or uniform. Drawn with NumPy from ``seed``, so the
    games do not depend on the device.

    Returns:
        ``(P, reference)``: float64 tensors of shapes (num_games, n, n) and (num_games, n).
    """
    if n < 3:
        raise ValueError(f"an intransitive game needs n >= 3 responses, got n={n}")
    if reference not in ("random", "uniform"):
        raise ValueError(f"reference must be 'random' or 'uniform', got {reference!r}")
    lower_mask = np.tril(np.ones((n, n), dtype=bool), -1)
    P = np.empty((num_games, n, n))
    ref = np.empty((num_games, n))
    # One child generator per game, so game g depends only on (seed, g): PreferenceGame.random(n, seed)
    # is game 0 of any stack. Drawing is cheap; the solvers are what is vectorized over games.
    for g, child in enumerate(np.random.SeedSequence(seed).spawn(num_games)):
        rng = np.random.default_rng(child)
        for _ in range(10_000):
            lower = np.where(lower_mask, rng.uniform(size=(n, n)), 0.0)
            P[g] = lower + np.where(lower_mask, 1.0 - lower, 0.0).T + 0.5 * np.eye(n)
            # Without a Condorcet winner the majority tournament is not transitive, hence has a 3-cycle.
            if not ((P[g] > 0.5).sum(-1) == n - 1).any():
                break
        else:  # pragma: no cover - probability n 2^(1-n) per draw
            raise RuntimeError("could not draw a game without a Condorcet winner")
        if reference == "random":
            weights = np.exp(rng.normal(size=n))
            ref[g] = weights / weights.sum()
        else:
            ref[g] = 1.0 / n
    target = torch.device("cpu") if device is None else resolve_device(str(device))
    return torch.from_numpy(P).to(target), torch.from_numpy(ref).to(target)


def _as_batch(
    P: np.ndarray | Tensor, reference: np.ndarray | Tensor, device: torch.device | str | None
) -> tuple[Tensor, Tensor]:
    """Validated float64 tensors (G, n, n), (G, n) on the chosen device (default: where P lives)."""
    if device is None:
        target = P.device if isinstance(P, Tensor) else torch.device("cpu")
    else:
        target = resolve_device(str(device))
    # np.array copies read-only NumPy inputs (PreferenceGame's) that torch cannot wrap.
    P_t = torch.as_tensor(P if isinstance(P, Tensor) else np.array(P, dtype=np.float64), device=target)
    ref_t = reference if isinstance(reference, Tensor) else np.array(reference, dtype=np.float64)
    P_t = P_t.to(torch.float64)
    ref_t = torch.as_tensor(ref_t, device=target).to(torch.float64)
    if P_t.ndim == 2:
        P_t = P_t.unsqueeze(0)
    if ref_t.ndim == 1:
        ref_t = ref_t.unsqueeze(0)
    P_t = _check_preference_matrices(P_t)
    ref_t = _check_references(ref_t, P_t.shape[-1])
    if ref_t.shape[0] != P_t.shape[0]:
        raise ValueError(
            f"got {P_t.shape[0]} preference matrices but {ref_t.shape[0]} references; pass one per game"
        )
    return P_t, ref_t


def _win_rates(P: Tensor, policy: Tensor) -> Tensor:
    """(P pi)[..., g, y] = P(y > pi_g): P (G, n, n), policy (..., G, n) -> (..., G, n)."""
    return (P @ policy.unsqueeze(-1)).squeeze(-1)


# --------------------------------------------------------------------------------------------
# Equilibrium, game value and duality gap
# --------------------------------------------------------------------------------------------


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
    that the duality gap is below 1e-12.

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
    gap = duality_gap_batched(P_t, ref, equilibrium, beta)
    if (gap > 1e-12).any():
        raise RuntimeError(
            f"regularized_nash did not converge: max gap {gap.max().item():.3g} after {max_iter} "
            "Newton steps; raise max_iter"
        )
    return equilibrium


def regularized_nash(game: PreferenceGame, beta: float) -> np.ndarray:
    """The unique equilibrium of the beta-regularized game, as an (n,) array (see the batched version).

    Damped Newton on :math:`\\log\\pi = \\log\\pi_{ref} + P\\pi/\\beta` to machine precision (errors
    ~1e-15, duality gap checked below 1e-12).
    """
    return regularized_nash_batched(game.P, game.reference, beta)[0].numpy()


# --------------------------------------------------------------------------------------------
# Methods: one step each, on log-policies (G, n); `win_rate(pi)` returns P pi (exact or sampled).
# --------------------------------------------------------------------------------------------


def _nash_mp_step(log_pi: Tensor, log_ref: Tensor, eta: float, beta: float, win_rate: WinRateFn) -> Tensor:
    # Tiapkin et al. (2025) mirror prox: argmax_pi eta [P(pi > opp) - beta KL(pi||ref)] - KL(pi||pi_k),
    # solved in closed form; the opponent is pi_k for the extrapolation, pi_{k+1/2} for the update.
    anchor = log_pi + eta * beta * log_ref
    log_half = torch.log_softmax((anchor + eta * win_rate(log_pi.exp())) / (1 + eta * beta), -1)
    return torch.log_softmax((anchor + eta * win_rate(log_half.exp())) / (1 + eta * beta), -1)


def _egpo_step(log_pi: Tensor, log_ref: Tensor, eta: float, beta: float, win_rate: WinRateFn) -> Tensor:
    # Zhou et al. (2025): extragradient on the logits; both half-steps start from theta_t, the second
    # uses the win rates of pi_{t+1/2} (their `extragradient` undoes the first SGD step, then re-steps).
    anchor = (1 - eta * beta) * log_pi + eta * beta * log_ref
    log_half = torch.log_softmax(anchor + eta * win_rate(log_pi.exp()), -1)
    return torch.log_softmax(anchor + eta * win_rate(log_half.exp()), -1)


def _nash_md_step(log_pi: Tensor, log_ref: Tensor, eta: float, beta: float, win_rate: WinRateFn) -> Tensor:
    # Munos et al. (2023), Nash-MD: mirror step from the geometric mixture against the mixture itself.
    log_mixture = torch.log_softmax((1 - eta * beta) * log_pi + eta * beta * log_ref, -1)
    return torch.log_softmax(log_mixture + eta * win_rate(log_mixture.exp()), -1)


def _inpo_step(log_pi: Tensor, log_ref: Tensor, eta: float, beta: float, win_rate: WinRateFn) -> Tensor:
    # Zhang et al. (2024), INPO: the OMD target pi_t^(1 - eta tau) ref^(eta tau) exp(eta P(y > pi_t)).
    update = (1 - eta * beta) * log_pi + eta * beta * log_ref + eta * win_rate(log_pi.exp())
    return torch.log_softmax(update, -1)


def _sppo_step(log_pi: Tensor, log_ref: Tensor, eta: float, beta: float, win_rate: WinRateFn) -> Tensor:
    # Wu et al. (2024), SPPO: pi_{t+1} ∝ pi_t exp(eta (P(y > pi_t) - 1/2)); no reference anchor, so
    # `beta` and `log_ref` are unused. The 1/2 is SPPO's log-normalizer approximation (it cancels here).
    return torch.log_softmax(log_pi + eta * (win_rate(log_pi.exp()) - 0.5), -1)


def _online_ipo_step(log_pi: Tensor, log_ref: Tensor, eta: float, beta: float, win_rate: WinRateFn) -> Tensor:
    # Calandriello et al. (2024) online IPO with y, y' ~ pi_t: the gradient of its population loss on the
    # logits is -(4/beta) x the self-play policy gradient below, so eta = 4 lr_sgd / beta.
    pi = log_pi.exp()
    advantage = win_rate(pi) - beta * (log_pi - log_ref)
    gradient = pi * (advantage - (pi * advantage).sum(-1, keepdim=True))
    return torch.log_softmax(log_pi + eta * gradient, -1)


_STEPS: dict[str, StepFn] = {
    "nash_mp": _nash_mp_step,
    "egpo": _egpo_step,
    "nash_md": _nash_md_step,
    "inpo": _inpo_step,
    "sppo": _sppo_step,
    "online_ipo": _online_ipo_step,
}
METHODS: tuple[str, ...] = tuple(_STEPS)

# Methods that need beta > 0 (their fixed point is the regularized equilibrium).
_REGULARIZED = frozenset(METHODS) - {"sppo"}


def default_lr(method: str, beta: float, n: int) -> float:
    r"""Default constant step :math:`\eta` for ``method`` (for ``nash_md``, the cap of its schedule).

    * ``nash_mp``: :math:`1/L = 2`, the mirror-prox step (L = 1/2 is the l1-to-sup Lipschitz constant
      of :math:`\pi \mapsto P\pi`); each iteration then contracts KL by :math:`(1+2\beta)^{-1}`, the
      paper's :math:`(1+2\beta)^{-N/2}` with N = 2 queries per iteration (Tiapkin et al., 2025).
    * ``egpo``: :math:`1/(\beta + L)`, the step whose tabular iterates equal Nash-MP's with
      :math:`\eta = 1/L` (see module notes); :math:`\eta\beta < 1` always. The EGPO paper's own
      tabular run (lr 0.1, n = 10, beta = 0.1) corresponds to :math:`\eta = 0.4`.
    * ``inpo``: :math:`\beta/(\beta^2 + L^2)`, the classical step :math:`\mu/L_F^2` of forward
      (non-extrapolated) steps on a :math:`\mu = \beta` strongly monotone operator with Lipschitz
      constant :math:`L_F^2 = \beta^2 + L^2`; INPO's LM choice :math:`\eta\tau = 1/3` can oscillate on
      games with small beta. 0.385 for beta = 0.1.
    * ``online_ipo``: :math:`n\beta/(\beta^2+L^2)`: the policy-gradient step is scaled by
      :math:`\pi(y)\approx 1/n`, so this matches INPO's step at the uniform policy.
    * ``sppo``: 1/2. Any constant step leaves the last iterate cycling (Bailey & Piliouras, 2018).
    * ``nash_md``: :math:`1/\beta`, the start of the schedule :math:`\eta_t = 2/(\beta(t+2))` used
      for its O(1/T) last-iterate rate (Munos et al., 2023, Thm. 1; constants ours).
    """
    if method not in _STEPS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    L = WIN_RATE_LIPSCHITZ
    if method == "nash_mp":
        return 1 / L
    if method == "egpo":
        return 1 / (beta + L)
    if method == "inpo":
        return beta / (beta**2 + L**2)
    if method == "online_ipo":
        return n * beta / (beta**2 + L**2)
    if method == "nash_md":
        return 1 / beta
    return 0.5


def _step_sizes(
    method: str, beta: float, n: int, iterations: int, lr: float | None, sampled: bool
) -> list[float]:
    """Step size of every iteration: constant ``lr`` when given, else the method's default schedule.

    Without ``lr``, Nash-MD uses :math:`2/(\\beta(t+2))`. With sampled preferences the regularized
    methods use :math:`\\min(\\eta, 2/(\\beta(t+2)))` (``2n/(\\beta(t+2))`` for online IPO, whose step on
    response y is scaled by :math:`\\pi(y) \\approx 1/n`): a constant step only reaches a noise floor
    proportional to :math:`\\eta`; the 1/t decay is the standard one for strongly monotone stochastic
    problems (the same schedule Nash-MD uses).
    """
    if lr is not None:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number or None (method default), got {lr!r}")
        return [float(lr)] * iterations
    eta = default_lr(method, beta, n)
    if method == "nash_md" or (sampled and method in _REGULARIZED):
        # Online IPO's policy-gradient step moves response y by eta * pi(y) ~ eta / n: scale the decay by n.
        scale = n if method == "online_ipo" else 1
        return [min(eta, 2 * scale / (beta * (t + 2))) for t in range(iterations)]
    return [eta] * iterations


def _sampled_win_rate(P: Tensor, samples: int, generator: torch.Generator) -> WinRateFn:
    """Unbiased estimate of P pi from `samples` Bernoulli queries per call, spread evenly over responses.

    Response y gets ``samples // n`` queries (the first ``samples % n`` responses one more); each query
    draws an opponent y'' ~ pi and a win with probability P[y, y''].
    """
    num_games, n, _ = P.shape
    per_response = torch.full((n,), samples // n, device=P.device)
    per_response[: samples % n] += 1
    width = int(per_response.max())
    used = torch.arange(width, device=P.device) < per_response.unsqueeze(-1)  # (n, width)

    def win_rate(opponent: Tensor) -> Tensor:
        opponents = torch.multinomial(opponent, n * width, replacement=True, generator=generator)
        opponents = opponents.view(num_games, n, width)
        win_prob = torch.gather(P, 2, opponents)
        wins = torch.rand(win_prob.shape, generator=generator, device=P.device, dtype=P.dtype) < win_prob
        return (wins & used).sum(-1).to(P.dtype) / per_response

    return win_rate


def solve_batched(
    P: np.ndarray | Tensor,
    reference: np.ndarray | Tensor,
    method: str,
    beta: float,
    iterations: int,
    lr: float | None = None,
    samples: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Run ``method`` on G games at once (one vectorized computation, no loop over games).

    Args:
        P: (G, n, n) preference matrices (or one (n, n)).
        reference: (G, n) reference policies (or one (n,)); also the initial policy.
        method: one of :data:`METHODS`.
        beta: KL coefficient of the game (> 0; ``sppo`` also accepts 0 and ignores it).
        iterations: number of updates T.
        lr: constant step size eta; None for the method's default (:func:`default_lr`: constant with
            exact preferences except Nash-MD's 2/(beta(t+2)); capped by a 1/t decay with samples).
        samples: None for exact win rates, else the number K >= n of Bernoulli preference queries per
            win-rate estimate (two estimates per iteration for ``nash_mp`` and ``egpo``).
        seed: seed of the query sampler (sampled mode only).
        device: "cpu", "cuda", "auto" (CUDA when available) or None (the device of ``P``).

    Returns:
        (T + 1, G, n) float64 tensor of policies; row 0 is the reference.
    """
    if method not in _STEPS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    beta = _check_beta(beta, allow_zero=method not in _REGULARIZED)
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
    P_t, ref = _as_batch(P, reference, device)
    num_games, n, _ = P_t.shape
    if samples is not None and (not isinstance(samples, int) or samples < n):
        raise ValueError(
            f"samples must be None (exact preferences) or an int >= n={n} (queries per estimate), "
            f"got {samples!r}"
        )
    step_sizes = _step_sizes(method, beta, n, iterations, lr, samples is not None)
    if samples is None:

        def win_rate(opponent: Tensor) -> Tensor:
            return _win_rates(P_t, opponent)

    else:
        generator = torch.Generator(device=P_t.device)
        generator.manual_seed(seed)
        win_rate = _sampled_win_rate(P_t, samples, generator)

    step = _STEPS[method]
    log_ref = ref.log()
    log_pi = torch.log_softmax(log_ref, -1)
    history = torch.empty((iterations + 1, num_games, n), dtype=torch.float64, device=P_t.device)
    history[0] = ref
    for t, eta in enumerate(step_sizes):
        log_pi = step(log_pi, log_ref, eta, beta, win_rate)
        history[t + 1] = log_pi.exp()
    return history


def solve(
    game: PreferenceGame,
    method: str,
    beta: float,
    iterations: int,
    lr: float | None = None,
    samples: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Run ``method`` on one game (CPU); see :func:`solve_batched` for the arguments.

    Returns:
        (iterations + 1, n) array of policies; row 0 is the reference.
    """
    history = solve_batched(
        game.P, game.reference, method, beta, iterations, lr=lr, samples=samples, seed=seed, device="cpu"
    )
    return history[:, 0].numpy()


def gap_curves(
    methods: list[str] | tuple[str, ...],
    n: int = 10,
    beta: float = 0.1,
    iterations: int = 3000,
    samples: int | None = None,
    seed: int = 0,
    num_games: int = 10,
    device: torch.device | str | None = None,
) -> dict[str, np.ndarray]:
    """Duality gap per iteration of each method on ``num_games`` random games drawn from ``seed``.

    Data behind ``hybridrl pref games``; plotting lives in ``benchmarks/nash_games.py``. ``sppo`` is
    scored on the unregularized game (beta = 0), as it has no reference term.

    Returns:
        ``{method: (iterations + 1, num_games) array of gaps}``.
    """
    P, ref = random_games(num_games, n, seed, device=device)
    curves: dict[str, np.ndarray] = {}
    for method in methods:
        history = solve_batched(P, ref, method, beta, iterations, samples=samples, seed=seed)
        score_beta = 0.0 if method == "sppo" else beta
        curves[method] = duality_gap_batched(P, ref, history, score_beta).cpu().numpy()
    return curves


GAP_FLOOR = 1e-17  # gaps are plotted above this (exact zeros after rounding)


def gap_bands(curves: dict[str, np.ndarray]) -> dict[str, dict[str, list[float]]]:
    """The median, min and max over games of each method's gap, at every iteration.

    Args:
        curves: ``{method: (iterations + 1, num_games) array of gaps}``, as :func:`gap_curves` returns.

    Returns:
        ``{method: {"iterations", "median", "min", "max"}}``: the layout of a games run's
        ``gap_curves`` with the extremes in place of the quartiles, which ``hybridrl pref games``
        draws with the report's gap plot.
    """
    return {
        method: {
            "iterations": list(range(gaps.shape[0])),
            "median": np.median(gaps, axis=1).tolist(),
            "min": gaps.min(1).tolist(),
            "max": gaps.max(1).tolist(),
        }
        for method, gaps in curves.items()
    }


def exact_winrate_matrix(P: np.ndarray, policies: Sequence[np.ndarray], names: Sequence[str]) -> dict:
    """Win-rate matrix of tabular ``policies`` under the exact preference ``P``: ``pi_i^T P pi_j``.

    Same JSON layout as :func:`hybridrl.preference.winrate.matrix_from_outcomes`; being exact, the
    intervals have zero width and ``num_comparisons`` is 0 (no samples were drawn).
    """
    P = np.asarray(P, dtype=np.float64)
    _check_preference_matrices(torch.as_tensor(P)[None])
    pis = np.stack([np.asarray(pi, dtype=np.float64) for pi in policies])
    if pis.ndim != 2 or pis.shape[1] != P.shape[0] or len(names) != len(pis):
        raise ValueError(f"need one name per policy and policies of length {P.shape[0]}, got {pis.shape}")
    if (pis < 0).any() or (np.abs(pis.sum(1) - 1) > 1e-8).any():
        raise ValueError("every policy must be a probability vector (non-negative, sums to 1)")
    win = pis @ P @ pis.T
    win[np.diag_indices_from(win)] = 0.5
    return {
        "players": list(names),
        "win_rate": win.tolist(),
        "ci_low": win.tolist(),
        "ci_high": win.tolist(),
        "judge": "exact",
        "num_comparisons": np.zeros_like(win, dtype=int).tolist(),
        "seed": 0,
    }
