"""Tabular preference games: equilibrium solver, duality gap, validation and the six methods."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hybridrl.preference import games_equilibrium, games_solvers
from hybridrl.preference.games import (
    METHODS,
    PreferenceGame,
    default_lr,
    duality_gap,
    duality_gap_batched,
    game_value,
    gap_bands,
    gap_curves,
    queries_per_iteration,
    random_games,
    regularized_nash,
    regularized_nash_batched,
    solve,
    solve_batched,
)

# Tiny tensors (n <= 10): extra intra-op threads only add overhead, badly so on a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rock_paper_scissors(strength: float = 0.3) -> np.ndarray:
    """Cyclic 3-response game: 0 beats 1, 1 beats 2, 2 beats 0, each with probability 1/2 + strength."""
    P = np.full((3, 3), 0.5)
    for i in range(3):
        P[i, (i + 1) % 3] = 0.5 + strength
        P[(i + 1) % 3, i] = 0.5 - strength
    return P


def simplex_grid(steps: int) -> np.ndarray:
    """All points (a, b, c) / steps with a + b + c = steps: a (M, 3) grid on the 3-simplex."""
    a, b = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
    keep = a + b <= steps
    a, b = a[keep], b[keep]
    return np.stack([a, b, steps - a - b], axis=-1) / steps


# --------------------------------------------------------------------------------------------
# Equilibrium solver
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p, r, beta", [(0.8, 0.5, 0.1), (0.3, 0.2, 0.05), (0.95, 0.9, 1.0), (0.6, 0.01, 0.01)]
)
def test_regularized_nash_matches_two_by_two_closed_form(p: float, r: float, beta: float) -> None:
    # For n = 2, (P pi)_0 - (P pi)_1 = p - 1/2 for every pi, so logit(pi*_0) = logit(r) + (p - 1/2) / beta.
    game = PreferenceGame(np.array([[0.5, p], [1 - p, 0.5]]), np.array([r, 1 - r]))
    expected = 1 / (1 + math.exp(-(math.log(r / (1 - r)) + (p - 0.5) / beta)))
    equilibrium = regularized_nash(game, beta)
    assert equilibrium[0] == pytest.approx(expected, abs=1e-12)
    assert equilibrium.sum() == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("beta", [1e-3, 0.1, 10.0])
def test_regularized_nash_of_symmetric_cycle_with_uniform_reference_is_uniform(beta: float) -> None:
    game = PreferenceGame(rock_paper_scissors(), np.full(3, 1 / 3))
    np.testing.assert_allclose(regularized_nash(game, beta), np.full(3, 1 / 3), atol=1e-13)


def test_regularized_nash_of_all_ties_is_the_reference() -> None:
    reference = np.array([0.1, 0.2, 0.3, 0.4])
    game = PreferenceGame(np.full((4, 4), 0.5), reference)
    np.testing.assert_allclose(regularized_nash(game, 0.01), reference, atol=1e-13)


def test_regularized_nash_tends_to_the_reference_as_beta_grows() -> None:
    game = PreferenceGame.random(8, seed=3)
    distances = [np.abs(regularized_nash(game, beta) - game.reference).max() for beta in (1e2, 1e4, 1e6)]
    assert distances[2] < 1e-6
    # log pi* - log ref = P pi* / beta + c, so the distance shrinks like 1 / beta.
    assert distances[0] / distances[1] == pytest.approx(100, rel=0.05)


def test_the_convergence_check_accepts_rounding_and_refuses_real_errors_at_large_beta() -> None:
    game = PreferenceGame.random(8, seed=3)
    P, reference = torch.tensor(game.P)[None], torch.tensor(game.reference)[None]
    beta = 1e4
    equilibrium = regularized_nash_batched(P, reference, beta)
    # A softmax whose normalizer is summed in another order (another SIMD width) scales every entry
    # by the same 1 + O(n eps); the gap 2 beta KL then moves by about 2 beta x that mass error.
    eps = torch.finfo(torch.float64).eps
    rounded = equilibrium * (1 + 4 * eps)
    assert duality_gap_batched(P, reference, rounded, beta).item() > 1e-12  # above an absolute 1e-12
    games_equilibrium._check_equilibrium(P, reference, rounded, beta, max_iter=100)
    # An error of 1e-6 in two probabilities is no rounding: it must still be refused.
    off = equilibrium.clone()
    off[0, 0] += 1e-6
    off[0, 1] -= 1e-6
    with pytest.raises(RuntimeError, match="did not converge"):
        games_equilibrium._check_equilibrium(P, reference, off, beta, max_iter=100)


@pytest.mark.parametrize("n, seed", [(3, 0), (5, 1), (8, 3), (10, 2)])
def test_regularized_nash_converges_at_very_large_beta(n: int, seed: int) -> None:
    # At beta 1e6 the gap's rounding floor (~2 beta eps) is far above any absolute tolerance.
    game = PreferenceGame.random(n, seed=seed)
    equilibrium = regularized_nash(game, 1e6)
    # log pi* - log ref = P pi* / beta + c moves each log-probability by at most 1 / beta.
    np.testing.assert_allclose(equilibrium, game.reference, rtol=2e-6, atol=0)


@pytest.mark.parametrize("beta", [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0])
def test_regularized_nash_solves_the_fixed_point_to_machine_precision(beta: float) -> None:
    P, reference = random_games(16, 10, seed=1)
    equilibrium = regularized_nash_batched(P, reference, beta)
    residual = equilibrium.log() - reference.log() - torch.einsum("gij,gj->gi", P, equilibrium) / beta
    # log pi* = log ref + P pi* / beta + c; compare with the most likely response (small beta drives
    # some probabilities to exactly 0, where the log-space check is void).
    residual = residual - residual.gather(-1, equilibrium.argmax(-1, keepdim=True))
    # An error e in pi moves P pi / beta by e / beta: below beta = 1e-2 allow 1e-12 / beta in log space.
    assert residual[equilibrium > 1e-200].abs().max() < max(1e-10, 1e-12 / beta)
    assert duality_gap_batched(P, reference, equilibrium, beta).max() < 1e-13 * max(1.0, beta)
    assert torch.allclose(equilibrium.sum(-1), torch.ones(16, dtype=torch.float64), atol=1e-14)


# --------------------------------------------------------------------------------------------
# Duality gap
# --------------------------------------------------------------------------------------------


def test_duality_gap_is_nonnegative_and_zero_only_at_the_equilibrium() -> None:
    game = PreferenceGame.random(6, seed=0)
    beta = 0.1
    policies = np.random.default_rng(0).dirichlet(np.ones(6), size=500)
    gaps = duality_gap(game, policies, beta)
    assert gaps.shape == (500,)
    assert (gaps > 1e-6).all()
    equilibrium = regularized_nash(game, beta)
    assert duality_gap(game, equilibrium, beta) < 1e-15
    # Moving off the equilibrium makes the gap positive, quadratically in the distance.
    direction = np.array([1.0, -1.0, 0, 0, 0, 0])
    near = [duality_gap(game, equilibrium + eps * direction, beta) for eps in (1e-3, 1e-4)]
    assert near[0] > 0 and near[1] > 0
    assert near[0] / near[1] == pytest.approx(100, rel=0.05)


def test_duality_gap_equals_game_values_at_the_closed_form_best_responses() -> None:
    # EGPO's definition (simulations/utils.py::dual_gap): J(BR(pi), pi) - J(pi, BR(pi)).
    P, reference = random_games(4, 7, seed=2)
    beta = 0.05
    policy = torch.distributions.Dirichlet(torch.ones(4, 7, dtype=torch.float64)).sample()
    best_response = torch.softmax(reference.log() + torch.einsum("gij,gj->gi", P, policy) / beta, -1)
    expected = game_value(P, reference, best_response, policy, beta) - game_value(
        P, reference, policy, best_response, beta
    )
    torch.testing.assert_close(duality_gap_batched(P, reference, policy, beta), expected, atol=1e-14, rtol=0)


@pytest.mark.parametrize("beta", [0.05, 0.5])
def test_closed_form_best_responses_match_brute_force_search(beta: float) -> None:
    game = PreferenceGame(
        np.array([[0.5, 0.9, 0.2], [0.1, 0.5, 0.7], [0.8, 0.3, 0.5]]), np.array([0.5, 0.3, 0.2])
    )
    P = torch.tensor(game.P)[None]
    reference = torch.tensor(game.reference)[None]
    policy = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    grid = torch.from_numpy(simplex_grid(400)).unsqueeze(1)  # (M, 1, 3)
    best_response = torch.softmax(reference.log() + torch.einsum("gij,gj->gi", P, policy) / beta, -1)
    # The max player's best value: no grid point beats it, and the grid gets arbitrarily close.
    grid_max = game_value(P, reference, grid, policy, beta).max()
    closed_max = game_value(P, reference, best_response, policy, beta)[0]
    assert grid_max <= closed_max + 1e-14
    assert grid_max >= closed_max - 1e-4
    # The min player's best response is the same tilt (P^T pi = 1 - P pi).
    grid_min = game_value(P, reference, policy, grid, beta).min()
    closed_min = game_value(P, reference, policy, best_response, beta)[0]
    assert grid_min >= closed_min - 1e-14
    assert grid_min <= closed_min + 1e-4
    gap = duality_gap(game, policy[0].numpy(), beta)
    assert gap == pytest.approx(float(closed_max - closed_min), abs=1e-14)


def test_unregularized_gap_is_exploitability() -> None:
    game = PreferenceGame(rock_paper_scissors(0.3), np.full(3, 1 / 3))
    assert duality_gap(game, np.full(3, 1 / 3), 0.0) == pytest.approx(0.0, abs=1e-15)
    # Pure rock loses to paper with probability 0.8: the gap is 2 * 0.8 - 1.
    assert duality_gap(game, np.array([1.0, 0.0, 0.0]), 0.0) == pytest.approx(0.6, abs=1e-14)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "P, reference, message",
    [
        (np.full((2, 3), 0.5), np.full(3, 1 / 3), "square"),
        (np.array([[0.5, 0.7], [0.4, 0.5]]), np.full(2, 0.5), r"P \+ P\.T must equal 1"),
        (np.array([[0.4, 0.7], [0.3, 0.6]]), np.full(2, 0.5), "0.5 on the diagonal"),
        (np.array([[0.5, 1.5], [-0.5, 0.5]]), np.full(2, 0.5), r"in \[0, 1\]"),
        (np.array([[0.5, np.nan], [np.nan, 0.5]]), np.full(2, 0.5), "NaN"),
        (rock_paper_scissors(), np.array([0.5, 0.5, 0.0]), "positive"),
        (rock_paper_scissors(), np.array([0.5, 0.5, 0.5]), "sum to 1"),
        (rock_paper_scissors(), np.full(4, 0.25), "length n=3"),
    ],
)
def test_invalid_games_are_rejected_with_a_clear_message(
    P: np.ndarray, reference: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PreferenceGame(P, reference)


def test_invalid_solver_arguments_are_rejected() -> None:
    game = PreferenceGame.random(4, seed=0)
    with pytest.raises(ValueError, match="unknown method 'dpo'; valid methods: nash_mp, egpo, nash_md"):
        solve(game, "dpo", 0.1, 10)
    with pytest.raises(ValueError, match="beta > 0"):
        solve(game, "nash_mp", 0.0, 10)
    with pytest.raises(ValueError, match="beta > 0"):
        regularized_nash(game, -1.0)
    with pytest.raises(ValueError, match="samples must be None"):
        solve(game, "egpo", 0.1, 10, samples=2)
    with pytest.raises(ValueError, match="lr must be a positive"):
        solve(game, "inpo", 0.1, 10, lr=0.0)
    with pytest.raises(ValueError, match="iterations must be a non-negative int"):
        solve(game, "inpo", 0.1, -1)
    with pytest.raises(ValueError, match="policy must have shape"):
        duality_gap(game, np.ones(3) / 3, 0.1)
    with pytest.raises(ValueError, match="one per game"):
        solve_batched(*random_games(2, 4, seed=0)[:1], np.full((3, 4), 0.25), "inpo", 0.1, 1)


def test_the_game_stores_projected_read_only_copies() -> None:
    P = rock_paper_scissors()
    P[0, 1] += 1e-12  # within tolerance: accepted, then made exactly skew
    game = PreferenceGame(P, np.array([0.2, 0.3, 0.5]))
    np.testing.assert_array_equal(game.P + game.P.T, np.ones((3, 3)))
    with pytest.raises(ValueError):
        game.P[0, 0] = 1.0


# --------------------------------------------------------------------------------------------
# Random intransitive games
# --------------------------------------------------------------------------------------------


def test_random_games_are_valid_intransitive_and_seeded() -> None:
    P, reference = random_games(50, 10, seed=7)
    assert P.shape == (50, 10, 10) and reference.shape == (50, 10)
    torch.testing.assert_close(P + P.transpose(1, 2), torch.ones_like(P), atol=0, rtol=0)
    for g in range(50):
        game = PreferenceGame(P[g].numpy(), reference[g].numpy())
        assert game.condorcet_winner() is None
        i, j, k = game.preference_cycle()
        assert game.P[i, j] > 0.5 and game.P[j, k] > 0.5 and game.P[k, i] > 0.5
    again, _ = random_games(50, 10, seed=7)
    assert torch.equal(P, again)
    np.testing.assert_allclose(PreferenceGame.random(10, seed=7).P, P[0].numpy(), atol=1e-15, rtol=0)


def test_transitive_game_has_no_cycle_and_a_condorcet_winner() -> None:
    n = 5
    P = np.where(np.triu(np.ones((n, n)), 1) > 0, 0.9, 0.1)
    np.fill_diagonal(P, 0.5)
    game = PreferenceGame(P, np.full(n, 1 / n))
    assert game.preference_cycle() is None
    assert game.condorcet_winner() == 0


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("samples", [None, 40])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_policies_on_the_simplex(method: str, samples: int | None) -> None:
    game = PreferenceGame.random(6, seed=4)
    history = solve(game, method, 0.1, 25, samples=samples, seed=1)
    assert history.shape == (26, 6)
    assert history.dtype == np.float64
    np.testing.assert_allclose(history[0], game.reference, atol=1e-15, rtol=0)
    assert np.isfinite(history).all() and (history >= 0).all()
    np.testing.assert_allclose(history.sum(-1), 1.0, atol=1e-12)
    assert not np.allclose(history[-1], history[0])


@pytest.mark.parametrize("method", ["nash_mp", "egpo"])
def test_extragradient_methods_converge_linearly_on_an_intransitive_game(method: str) -> None:
    game = PreferenceGame.random(5, seed=11)
    beta = 0.1
    history = solve(game, method, beta, 300)
    gaps = duality_gap(game, history, beta)
    assert gaps[0] > 1e-2
    assert gaps[150] < 1e-12
    np.testing.assert_allclose(history[-1], regularized_nash(game, beta), atol=1e-10)
    # Linear rate: in the linear phase the gap drops by at least (1 + 2 beta) per iteration.
    assert gaps[60] / gaps[40] < (1 + 2 * beta) ** -20


@pytest.mark.parametrize("method", ["nash_md", "inpo", "online_ipo"])
def test_baselines_approach_the_equilibrium(method: str) -> None:
    game = PreferenceGame.random(5, seed=11)
    gaps = duality_gap(game, solve(game, method, 0.1, 1000), 0.1)
    assert gaps[-1] < 1e-3 * gaps[0]


def test_plain_multiplicative_weights_does_not_converge_in_last_iterate() -> None:
    # SPPO = multiplicative weights on the unregularized game (beta = 0): the last iterate spirals
    # away from the interior equilibrium (uniform) while the time average approaches it.
    game = PreferenceGame(rock_paper_scissors(0.3), np.array([0.5, 0.3, 0.2]))
    history = solve(game, "sppo", 0.0, 2000)
    last_gaps = duality_gap(game, history, 0.0)
    average_gap = duality_gap(game, history.mean(0), 0.0)
    assert last_gaps[-500:].min() > last_gaps[0]
    assert average_gap < 0.1 * last_gaps[0]
    # The regularized methods do converge on the same game.
    assert duality_gap(game, solve(game, "nash_mp", 0.1, 200)[-1], 0.1) < 1e-12


def test_egpo_and_nash_mp_coincide_under_the_step_reparametrization() -> None:
    # Module notes: in the exact tabular form, EGPO with step eta is Nash-MP with step eta / (1 - eta beta).
    game, beta, eta = PreferenceGame.random(6, seed=5), 0.2, 0.7
    egpo = solve(game, "egpo", beta, 20, lr=eta)
    nash_mp = solve(game, "nash_mp", beta, 20, lr=eta / (1 - eta * beta))
    np.testing.assert_allclose(egpo, nash_mp, atol=1e-13)


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5])
def test_egpo_at_its_default_step_coincides_with_nash_mp_at_its_default(beta: float) -> None:
    # 1/(beta + L) and 1/L are a pair of the reparametrization: eta / (1 - eta beta) = 1/L
    P, reference = random_games(4, 7, seed=3)
    egpo = solve_batched(P, reference, "egpo", beta, 30)
    nash_mp = solve_batched(P, reference, "nash_mp", beta, 30)
    torch.testing.assert_close(egpo, nash_mp, rtol=0, atol=1e-12)
    # with sampled preferences both defaults are capped by 2/(beta(t+2)): the pairing holds until Nash-MP's
    # cap binds (t + 2 > 1/beta), then breaks
    sampled = [solve_batched(P, reference, m, beta, 30, samples=50, seed=1) for m in ("egpo", "nash_mp")]
    paired = max(0, math.ceil(1 / beta) - 1)  # iterates 0..paired come from uncapped steps only
    torch.testing.assert_close(sampled[0][: paired + 1], sampled[1][: paired + 1], rtol=0, atol=1e-12)
    if paired < 30:
        assert (sampled[0][-1] - sampled[1][-1]).abs().max() > 1e-6


def test_oracle_queries_count_n_squared_per_exact_evaluation_and_two_per_extragradient_iteration() -> None:
    assert queries_per_iteration("nash_md", 10, None) == 100
    assert queries_per_iteration("egpo", 10, None) == queries_per_iteration("nash_mp", 10, None) == 200
    assert queries_per_iteration("sppo", 10, 100) == 100 and queries_per_iteration("egpo", 10, 100) == 200
    bands = gap_bands(gap_curves(["egpo", "inpo"], n=4, iterations=3, num_games=2),
                      {m: queries_per_iteration(m, 4, None) for m in ("egpo", "inpo")})
    assert bands["egpo"]["queries"] == [0, 32, 64, 96] and bands["inpo"]["queries"] == [0, 16, 32, 48]


def test_inpo_step_equals_an_sgd_step_on_egpo_online_ipo_loss() -> None:
    # EGPO simulations/loss_funcs.py::online_ipo_1: sum over all (y, y') of
    # ((r(y) - r(y')) - (Ppi(y) - Ppi(y')) / beta)^2 / n^2; one SGD step of lr is the OMD (INPO) logit
    # update with eta = 4 lr / (n beta), the conversion quoted in the module notes.
    game, beta, lr = PreferenceGame.random(5, seed=6), 0.1, 0.05
    n = game.n
    P = torch.tensor(game.P)
    log_ref = torch.tensor(game.reference).log()
    theta = log_ref.clone().requires_grad_()
    log_ratio = torch.log_softmax(theta, -1) - log_ref
    win_rate = P @ torch.softmax(theta, -1).detach()
    contrast = (log_ratio[:, None] - log_ratio[None, :]) - (win_rate[:, None] - win_rate[None, :]) / beta
    (contrast**2).sum().div(n**2).backward()
    sgd = torch.log_softmax(theta.detach() - lr * theta.grad, -1)
    inpo = solve_batched(P, log_ref.exp(), "inpo", beta, 1, lr=4 * lr / (n * beta), device="cpu")
    torch.testing.assert_close(sgd.exp(), inpo[1, 0], atol=1e-14, rtol=0)


def test_online_ipo_step_equals_an_sgd_step_on_the_online_ipo_loss() -> None:
    # Calandriello et al. (2024): E_{y, y' ~ pi} ((r(y) - r(y')) - (P(y > y') - 1/2) / beta)^2 with the
    # sampling distribution held fixed; one SGD step of lr is our update with eta = 4 lr / beta.
    game, beta, lr = PreferenceGame.random(5, seed=8), 0.1, 0.01
    P = torch.tensor(game.P)
    log_ref = torch.tensor(game.reference).log()
    theta = log_ref.clone().requires_grad_()
    log_ratio = torch.log_softmax(theta, -1) - log_ref
    pi = torch.softmax(theta, -1).detach()
    contrast = (log_ratio[:, None] - log_ratio[None, :]) - (P - 0.5) / beta
    (pi[:, None] * pi[None, :] * contrast**2).sum().backward()
    sgd = torch.softmax(theta.detach() - lr * theta.grad, -1)
    online_ipo = solve_batched(P, log_ref.exp(), "online_ipo", beta, 1, lr=4 * lr / beta, device="cpu")
    torch.testing.assert_close(sgd, online_ipo[1, 0], atol=1e-14, rtol=0)


def test_default_step_sizes() -> None:
    assert default_lr("nash_mp", 0.1, 10) == 2.0
    assert default_lr("egpo", 0.1, 10) == pytest.approx(1 / 0.6)
    assert default_lr("inpo", 0.1, 10) == pytest.approx(0.1 / 0.26)
    assert default_lr("online_ipo", 0.1, 10) == pytest.approx(10 * 0.1 / 0.26)
    assert default_lr("nash_md", 0.1, 10) == pytest.approx(10.0)
    assert default_lr("sppo", 0.0, 10) == 0.5
    with pytest.raises(ValueError, match="valid methods: nash_mp, egpo, nash_md, inpo, sppo, online_ipo"):
        default_lr("mwu", 0.1, 10)
    # One table: every method has its step and a step-size rule whose docstring says where it comes from.
    assert tuple(games_solvers.SOLVERS) == METHODS
    for solver in games_solvers.SOLVERS.values():
        assert solver.default_lr.__doc__ and "\n" not in solver.default_lr.__doc__.strip()


# --------------------------------------------------------------------------------------------
# Sampled preferences
# --------------------------------------------------------------------------------------------


def test_sampled_win_rates_are_unbiased() -> None:
    P, _ = random_games(3, 5, seed=0)
    opponent = torch.softmax(
        torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), -1
    )
    generator = torch.Generator().manual_seed(1)
    estimate = games_solvers._sampled_win_rate(P, 23, generator)  # uneven split: 5, 5, 5, 4, 4 queries
    mean = torch.stack([estimate(opponent) for _ in range(4000)]).mean(0)
    torch.testing.assert_close(mean, torch.einsum("gij,gj->gi", P, opponent), atol=0.01, rtol=0)


def test_sampled_runs_are_seeded_and_still_converge() -> None:
    game = PreferenceGame.random(5, seed=2)
    first = solve(game, "nash_mp", 0.1, 800, samples=50, seed=3)
    np.testing.assert_array_equal(first, solve(game, "nash_mp", 0.1, 800, samples=50, seed=3))
    assert not np.array_equal(first, solve(game, "nash_mp", 0.1, 800, samples=50, seed=4))
    gaps = duality_gap(game, first, 0.1)
    assert gaps[-100:].mean() < 0.05 * gaps[0]


# --------------------------------------------------------------------------------------------
# Batched computation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_batched_solve_matches_one_game_at_a_time(method: str) -> None:
    P, reference = random_games(4, 6, seed=9)
    batched = solve_batched(P, reference, method, 0.1, 40)
    assert batched.shape == (41, 4, 6)
    for g in range(4):
        single = solve(PreferenceGame(P[g].numpy(), reference[g].numpy()), method, 0.1, 40)
        np.testing.assert_allclose(batched[:, g].numpy(), single, atol=1e-13, rtol=0)


def test_batched_equilibrium_and_gap_match_the_single_game_api() -> None:
    P, reference = random_games(5, 6, seed=10)
    equilibria = regularized_nash_batched(P, reference, 0.2)
    policy = torch.full((5, 6), 1 / 6, dtype=torch.float64)
    gaps = duality_gap_batched(P, reference, policy, 0.2)
    for g in range(5):
        game = PreferenceGame(P[g].numpy(), reference[g].numpy())
        np.testing.assert_allclose(equilibria[g].numpy(), regularized_nash(game, 0.2), atol=1e-14)
        assert gaps[g].item() == pytest.approx(duality_gap(game, policy[g].numpy(), 0.2), abs=1e-15)


def test_gap_curves_shapes() -> None:
    curves = gap_curves(["nash_mp", "sppo"], n=5, beta=0.1, iterations=30, num_games=3)
    assert set(curves) == {"nash_mp", "sppo"}
    assert curves["nash_mp"].shape == (31, 3)
    assert curves["nash_mp"][-1].max() < curves["nash_mp"][0].min()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    P, reference = random_games(8, 10, seed=0)
    cpu = solve_batched(P, reference, "nash_mp", 0.1, 100)
    gpu = solve_batched(P, reference, "nash_mp", 0.1, 100, device="cuda")
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-12, rtol=0)
    sampled = solve_batched(P, reference, "egpo", 0.1, 50, samples=100, device="cuda")
    torch.testing.assert_close(
        sampled.sum(-1).cpu(), torch.ones(51, 8, dtype=torch.float64), atol=1e-12, rtol=0
    )
    equilibrium = regularized_nash_batched(P.cuda(), reference.cuda(), 0.1)
    torch.testing.assert_close(
        equilibrium.cpu(), regularized_nash_batched(P, reference, 0.1), atol=1e-13, rtol=0
    )


def test_cli_games_prints_final_gaps_and_rejects_unknown_methods(tmp_path):
    pytest.importorskip("matplotlib")
    from typer.testing import CliRunner

    from hybridrl.cli import app

    runner = CliRunner()
    out = tmp_path / "gap.png"
    result = runner.invoke(app, ["pref", "games", "--method", "nash_mp", "--method", "sppo", "--iterations", "100",
                                 "--games", "2", "--n", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and out.with_suffix(".json").exists()
    assert "nash_mp" in result.output and "sppo" in result.output
    result = runner.invoke(app, ["pref", "games", "--method", "egpo", "--iterations", "10", "--games", "2",
                                 "--n", "4", "--out", str(out), "--x-axis", "queries"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["egpo"]["queries"] == 10 * 2 * 4 * 4
    result = runner.invoke(app, ["pref", "games", "--method", "nope"])
    assert result.exit_code == 2 and "unknown method(s) ['nope']" in result.stderr
