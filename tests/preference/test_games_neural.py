"""Neural (MLP-policy) versions of the Nash-learning methods on tabular preference games."""

from __future__ import annotations

import pytest
import torch

from hybridrl.preference.games import duality_gap_batched, random_games, solve_batched
from hybridrl.preference.games_neural import (
    NEURAL_METHODS,
    BatchedMLPPolicy,
    gradient_steps_per_iteration,
    online_ipo1_loss,
    solve_neural,
)

# Tiny tensors (n <= 10): extra intra-op threads only add overhead, badly so on a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("method", NEURAL_METHODS)
def test_neural_methods_return_policies_on_the_simplex_starting_at_the_reference(method: str) -> None:
    P, reference = random_games(3, 5, seed=0)
    history = solve_neural(P, reference, method, 0.1, 5, lr=0.05, inner_steps=2)
    assert history.shape == (6, 3, 5)
    torch.testing.assert_close(history[0], reference, atol=1e-15, rtol=0)
    torch.testing.assert_close(history.sum(-1), torch.ones(6, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (history >= 0).all() and not torch.allclose(history[-1], history[0])


def test_the_network_starts_at_the_reference_for_every_game() -> None:
    _, reference = random_games(4, 7, seed=1)
    policy = BatchedMLPPolicy(reference.log(), width=6, depth=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(policy.log_probs().exp(), reference, atol=1e-14, rtol=0)
    assert sum(p.numel() for p in policy.parameters()) == 4 * (6 + 6 * 6 + 6 + 6 * 6 + 6 + 6 * 7 + 7)


@pytest.mark.parametrize("method", ["egpo", "inpo", "nash_mp"])
def test_neural_regularized_methods_converge(method: str) -> None:
    P, reference = random_games(3, 5, seed=2)
    iterations = 60 if method == "nash_mp" else 400
    history = solve_neural(P, reference, method, 0.1, iterations, lr=0.05, inner_steps=10)
    gaps = duality_gap_batched(P, reference, history, 0.1)
    assert (gaps[-1] < 1e-6 * gaps[0]).all()


def test_online_ipo1_gradient_on_free_logits_is_the_tabular_omd_step() -> None:
    # With the logits as free parameters, one SGD step of lr on online IPO 1 is INPO's update with
    # eta = 4 lr / (n beta): the neural losses are the tabular methods' losses.
    P, reference = random_games(2, 6, seed=3)
    beta, lr = 0.1, 0.02
    logits = reference.log().clone().requires_grad_()
    log_pi = torch.log_softmax(logits, -1)
    online_ipo1_loss(log_pi, reference.log(), torch.einsum("gij,gj->gi", P, reference), beta).backward()
    stepped = torch.softmax(logits.detach() - lr * logits.grad, -1)
    tabular = solve_batched(P, reference, "inpo", beta, 1, lr=4 * lr / (6 * beta))
    torch.testing.assert_close(stepped, tabular[1], atol=1e-14, rtol=0)


def test_neural_sampled_runs_are_seeded() -> None:
    P, reference = random_games(2, 5, seed=4)
    first = solve_neural(P, reference, "egpo", 0.1, 20, lr=0.05, samples=25, seed=1)
    torch.testing.assert_close(
        first, solve_neural(P, reference, "egpo", 0.1, 20, lr=0.05, samples=25, seed=1)
    )
    assert not torch.equal(first, solve_neural(P, reference, "egpo", 0.1, 20, lr=0.05, samples=25, seed=2))


def test_unknown_neural_method_lists_valid_ones() -> None:
    P, reference = random_games(1, 4, seed=0)
    with pytest.raises(ValueError, match="valid methods: nash_mp, egpo"):
        solve_neural(P, reference, "dpo", 0.1, 1)


@pytest.mark.parametrize("method", NEURAL_METHODS)
def test_gradient_steps_per_iteration_counts_the_sgd_steps_taken(method: str, monkeypatch) -> None:
    from hybridrl.preference import games_neural

    taken = []
    real = games_neural._sgd_step
    monkeypatch.setattr(games_neural, "_sgd_step", lambda *args: taken.append(1) or real(*args))
    P, reference = random_games(2, 4, seed=0)
    solve_neural(P, reference, method, 0.1, iterations=3, inner_steps=4)
    assert len(taken) == 3 * gradient_steps_per_iteration(method, inner_steps=4)
