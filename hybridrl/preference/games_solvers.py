r"""Self-play methods that seek the regularized Nash equilibrium of a tabular preference game.

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
  :math:`1-\eta\beta`); the methods differ once each step is fitted by a parametric policy. Their
  default steps, :math:`1/(\beta+L)` and :math:`1/L`, are such a pair, so at their defaults with exact
  preferences the two produce the same iterates for every beta and n. With sampled preferences (the same
  seed) both defaults are capped by :math:`2/(\beta(t+2))`: the iterates agree until Nash-MP's cap binds,
  at :math:`t + 2 > 1/\beta`, and differ after.
* INPO and SPPO regress on pairwise / per-response targets whose minimizer is the update above; here
  the minimizer is applied exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hybridrl.preference.games_core import (
    WIN_RATE_LIPSCHITZ,
    PreferenceGame,
    Tensor,
    _as_batch,
    _check_beta,
    _check_preference_matrices,
    _win_rates,
    random_games,
)
from hybridrl.preference.games_equilibrium import duality_gap_batched
from hybridrl.registry import MethodSpec, register

__all__ = [
    "METHODS",
    "SOLVERS",
    "GameSolver",
    "default_lr",
    "exact_winrate_matrix",
    "gap_curves",
    "queries_per_iteration",
    "solve",
    "solve_batched",
]

WinRateFn = Callable[[Tensor], Tensor]
StepFn = Callable[[Tensor, Tensor, float, float, WinRateFn], Tensor]


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



# --------------------------------------------------------------------------------------------
# Default step sizes: a function of (beta, n) per method. L = WIN_RATE_LIPSCHITZ = 1/2 is the
# l1-to-sup Lipschitz constant of pi -> P pi.
# --------------------------------------------------------------------------------------------


def _mirror_prox_lr(beta: float, n: int) -> float:
    """1/L = 2, the mirror-prox step; KL then contracts by (1+2beta)^-1 per iteration (Tiapkin et al., 2025)."""
    return 1 / WIN_RATE_LIPSCHITZ


def _extragradient_lr(beta: float, n: int) -> float:
    """1/(beta + L): EGPO's tabular iterates then equal Nash-MP's at 1/L (module notes); eta beta < 1."""
    # The EGPO paper's own tabular run (lr 0.1, n = 10, beta = 0.1) corresponds to eta = 0.4.
    return 1 / (beta + WIN_RATE_LIPSCHITZ)


def _nash_md_lr(beta: float, n: int) -> float:
    """1/beta, the start of Nash-MD's schedule 2/(beta(t+2)) for its O(1/T) rate (Munos et al., 2023, Thm. 1)."""
    return 1 / beta


def _forward_step_lr(beta: float, n: int) -> float:
    """beta/(beta^2 + L^2), the classical mu/L_F^2 forward step on a beta-strongly monotone operator."""
    # L_F^2 = beta^2 + L^2 is the operator's squared Lipschitz constant; 0.385 for beta = 0.1. INPO's
    # LM choice eta tau = 1/3 can oscillate on games with small beta.
    return beta / (beta**2 + WIN_RATE_LIPSCHITZ**2)


def _policy_gradient_lr(beta: float, n: int) -> float:
    """n beta/(beta^2 + L^2): INPO's forward step, scaled by n because the gradient carries pi(y) ~ 1/n."""
    return n * beta / (beta**2 + WIN_RATE_LIPSCHITZ**2)


def _multiplicative_weights_lr(beta: float, n: int) -> float:
    """1/2; any constant step leaves SPPO's last iterate cycling (Bailey & Piliouras, 2018)."""
    return 0.5


@dataclass(frozen=True)
class GameSolver:
    """One self-play method: its update and how its step size is chosen.

    Attributes:
        step: ``(log_pi, log_ref, eta, beta, win_rate) -> log_pi``, one iteration on (G, n) log-policies.
        default_lr: ``(beta, n) -> eta``, the constant step used when no ``lr`` is given (for a
            decaying schedule, its cap).
        regularized: whether the method anchors at the reference, so needs ``beta > 0``.
        decays: whether, without ``lr``, the step follows 2/(beta(t+2)) even with exact preferences.
        per_response: whether its step on response y is scaled by pi(y) ~ 1/n (policy gradient), so a
            1/t decay is scaled by n.
        evaluations: win-rate evaluations per iteration (2 for the extragradient methods).
    """

    step: StepFn
    default_lr: Callable[[float, int], float]
    regularized: bool = True
    decays: bool = False
    per_response: bool = False
    evaluations: int = 1


SOLVERS: dict[str, GameSolver] = {
    "nash_mp": GameSolver(_nash_mp_step, _mirror_prox_lr, evaluations=2),
    "egpo": GameSolver(_egpo_step, _extragradient_lr, evaluations=2),
    "nash_md": GameSolver(_nash_md_step, _nash_md_lr, decays=True),
    "inpo": GameSolver(_inpo_step, _forward_step_lr),
    "sppo": GameSolver(_sppo_step, _multiplicative_weights_lr, regularized=False),
    "online_ipo": GameSolver(_online_ipo_step, _policy_gradient_lr, per_response=True),
}
METHODS: tuple[str, ...] = tuple(SOLVERS)


@dataclass(frozen=True, kw_only=True)
class GameSolverConfig:
    """Settings of a self-play method on a tabular game (``solve_batched``'s arguments)."""

    beta: float = 0.1
    """KL strength toward the reference policy (the game's regularization)."""
    lr: float | None = None
    """Step size eta (None: the method's own rule for beta and n, see ``SOLVERS``)."""
    samples: int | None = None
    """Preference samples per step to estimate win rates (None: exact win rates)."""


_SUMMARIES = {
    "nash_mp": "Nash-MP on exact tabular games: two KL-prox steps per iteration",
    "egpo": "EGPO on exact tabular games: extragradient on the online-IPO gradients",
    "nash_md": "Nash-MD on exact tabular games: mirror descent against the reference mixture",
    "inpo": "INPO on exact tabular games: online mirror descent anchored at the reference",
    "sppo": "SPPO on exact tabular games: multiplicative weights, no reference anchor",
    "online_ipo": "Online IPO on exact tabular games: policy-gradient steps on sampled pairs",
}
for _name in SOLVERS:
    register(MethodSpec(name=_name, family="games", config=GameSolverConfig, summary=_SUMMARIES[_name]))


def _solver(method: str) -> GameSolver:
    if method not in SOLVERS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    return SOLVERS[method]


def default_lr(method: str, beta: float, n: int) -> float:
    r"""Default constant step :math:`\eta` for ``method`` (for ``nash_md``, the cap of its schedule).

    Looked up in :data:`SOLVERS`; each method's rule states where it comes from.
    """
    return _solver(method).default_lr(beta, n)


def queries_per_iteration(method: str, n: int, samples: int | None) -> int:
    r"""Preference-oracle queries one iteration of ``method`` uses on an n-response game.

    An exact win-rate vector :math:`P\pi` reads all ``n * n`` preferences; a sampled one asks ``samples``
    Bernoulli queries. Nash-MP and EGPO evaluate it twice per iteration, the others once.
    """
    return _solver(method).evaluations * (n * n if samples is None else samples)


def _step_sizes(
    solver: GameSolver, beta: float, n: int, iterations: int, lr: float | None, sampled: bool
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
    eta = solver.default_lr(beta, n)
    if solver.decays or (sampled and solver.regularized):
        # Online IPO's policy-gradient step moves response y by eta * pi(y) ~ eta / n: scale the decay by n.
        scale = n if solver.per_response else 1
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
    solver = _solver(method)
    beta = _check_beta(beta, allow_zero=not solver.regularized)
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
    P_t, ref = _as_batch(P, reference, device)
    num_games, n, _ = P_t.shape
    if samples is not None and (not isinstance(samples, int) or samples < n):
        raise ValueError(
            f"samples must be None (exact preferences) or an int >= n={n} (queries per estimate), "
            f"got {samples!r}"
        )
    step_sizes = _step_sizes(solver, beta, n, iterations, lr, samples is not None)
    if samples is None:

        def win_rate(opponent: Tensor) -> Tensor:
            return _win_rates(P_t, opponent)

    else:
        generator = torch.Generator(device=P_t.device)
        generator.manual_seed(seed)
        win_rate = _sampled_win_rate(P_t, samples, generator)

    step = solver.step
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
