"""Pure losses against hand-computed values."""

import math

import pytest
import torch

from hybridrl.core.losses import (
    bc_mse_loss,
    clipped_double_q_target,
    cql_penalty,
    critic_mse_loss,
    sac_actor_loss,
    sac_temperature_loss,
)
from hybridrl.offline.cql import cql_critic_loss, lagrange_loss


def test_clipped_double_q_target_takes_min_and_masks_terminals():
    reward = torch.tensor([1.0, 2.0])
    terminated = torch.tensor([0.0, 1.0])
    next_q = torch.tensor([[10.0, 5.0], [8.0, 7.0]])  # (N=2, B=2)
    y = clipped_double_q_target(reward, terminated, next_q, gamma=0.5)
    assert torch.allclose(y, torch.tensor([1.0 + 0.5 * 8.0, 2.0]))
    assert not y.requires_grad


def test_critic_mse_sums_members_and_means_batch():
    q = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    target = torch.tensor([2.0, 2.0])
    assert critic_mse_loss(q, target).item() == pytest.approx(1.0 + 4.0)


def test_sac_actor_loss():
    log_prob = torch.tensor([-1.0, -3.0])
    q = torch.tensor([[2.0, 4.0], [1.0, 6.0]])
    # alpha log pi - min Q: (0.5*-1 - 1, 0.5*-3 - 4) -> mean (-1.5 - 5.5)/2
    assert sac_actor_loss(log_prob, q, 0.5).item() == pytest.approx(-3.5)


def test_sac_temperature_loss_gradient_sign():
    log_alpha = torch.tensor(0.0, requires_grad=True)
    # Entropy 5 above its target -3: alpha should fall, i.e. d loss / d log alpha = -(-5 - 3) > 0.
    loss = sac_temperature_loss(log_alpha, torch.tensor([-5.0, -5.0]), target_entropy=-3.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0)
    assert log_alpha.grad.item() == pytest.approx(8.0)


def test_cql_penalty_constant_q_closed_form():
    # Constant Q = c at K proposals: T log(K exp(c/T)) = c + T log K; minus data Q d.
    c, d, k, t = 1.5, 0.25, 6, 2.0
    q_sampled = torch.full((2, 4, k), c)
    q_data = torch.full((2, 4), d)
    gap = cql_penalty(q_sampled, q_data, temperature=t)
    assert torch.allclose(gap, torch.full((2,), c + t * math.log(k) - d))


def test_cql_critic_loss_combines_td_and_gap():
    q_data = torch.tensor([[1.0, 1.0]])
    q_prop = torch.zeros((1, 2, 3))
    log_dens = torch.full((2, 3), math.log(0.5))
    target = torch.tensor([0.0, 2.0])
    loss, gap, metrics = cql_critic_loss(q_data, q_prop, log_dens, target, cql_weight=2.0, temperature=1.0)
    # proposals corrected: 0 - log 0.5 = log 2 each; LSE of 3 equal values: log 2 + log 3
    expected_gap = math.log(2) + math.log(3) - 1.0
    assert gap.item() == pytest.approx(expected_gap)
    assert loss.item() == pytest.approx(1.0 + 2.0 * expected_gap)
    assert metrics["loss/td"].item() == pytest.approx(1.0)


def test_lagrange_loss_raises_alpha_prime_when_gap_exceeds_threshold():
    log_alpha_prime = torch.tensor(0.0, requires_grad=True)
    lagrange_loss(log_alpha_prime, torch.tensor([12.0, 14.0]), cql_alpha=1.0, threshold=10.0).backward()
    assert log_alpha_prime.grad.item() < 0  # gradient descent increases log alpha'
    log_alpha_prime.grad = None
    lagrange_loss(log_alpha_prime, torch.tensor([1.0, 2.0]), cql_alpha=1.0, threshold=10.0).backward()
    assert log_alpha_prime.grad.item() > 0


def test_bc_mse():
    assert bc_mse_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])).item() == pytest.approx(0.5)


def test_target_policy_smoothing_clips_noise_then_action():
    from hybridrl.core.losses import target_policy_smoothing

    action = torch.tensor([[0.0, 0.9, -0.95, 0.5]])
    noise = torch.tensor([[1.0, 1.0, -10.0, -1.0]])  # sigma 0.2: 0.2, 0.2, -2 (clipped to -0.5), -0.2
    smoothed = target_policy_smoothing(action, noise, noise_std=0.2, noise_clip=0.5)
    assert torch.allclose(smoothed, torch.tensor([[0.2, 1.0, -1.0, 0.3]]))
    # No noise, no change.
    assert torch.equal(target_policy_smoothing(action, torch.zeros_like(action), 0.2, 0.5), action)


def test_td3_critic_loss_regresses_every_member_on_the_clipped_double_q_target():
    from hybridrl.core.losses import td3_critic_loss

    q = torch.tensor([[1.0, 0.0], [2.0, 4.0]])
    reward, terminated = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    next_q = torch.tensor([[4.0, 9.0], [2.0, 3.0]])
    loss, target = td3_critic_loss(q, reward, terminated, next_q, gamma=0.5)
    # y = (1 + 0.5 * min(4, 2), 0.5 (terminal)) = (2, 0.5)
    assert torch.allclose(target, torch.tensor([2.0, 0.5]))
    # member 1: ((1-2)^2 + (0-0.5)^2)/2 = 0.625; member 2: ((2-2)^2 + (4-0.5)^2)/2 = 6.125
    assert loss.item() == pytest.approx(0.625 + 6.125)
    assert not target.requires_grad


def test_expectile_loss_weights_each_sign():
    from hybridrl.core.losses import expectile_loss

    diff = torch.tensor([2.0, -1.0])
    # 0.7 * 4 and 0.3 * 1, averaged
    assert expectile_loss(diff, 0.7).item() == pytest.approx((2.8 + 0.3) / 2)
    # tau = 0.5: half the mean squared error, symmetric in the sign
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (4 + 1) / 2)
    assert expectile_loss(-diff, 0.5).item() == pytest.approx(expectile_loss(diff, 0.5).item())


def test_expectile_loss_minimiser_is_the_expectile():
    from hybridrl.core.losses import expectile_loss

    # Targets {0, 1} with equal weight: the tau-expectile m solves tau (1 - m) = (1 - tau) m, so m = tau.
    targets = torch.tensor([0.0, 1.0])
    grid = torch.linspace(0, 1, 1001)
    losses = torch.stack([expectile_loss(targets - m, 0.7) for m in grid])
    assert grid[losses.argmin()].item() == pytest.approx(0.7, abs=1e-3)


def test_cvae_loss_weights_rows_of_the_reconstruction_and_averages_the_kl():
    from hybridrl.core.losses import cvae_loss

    recon = torch.tensor([[1.0, 0.0], [2.0, 2.0]], requires_grad=True)
    action = torch.zeros(2, 2)
    mean = torch.tensor([[1.0], [0.0]])
    log_std = torch.tensor([[0.0], [math.log(2.0)]])
    loss, metrics = cvae_loss(recon, action, mean, log_std, row_weight=torch.tensor([1.0, 0.0]), kl_weight=0.5)
    # Reconstruction: (1 + 0 + 0 + 0) / 4, the zero-weight row still counted in the mean.
    assert metrics["loss/vae_recon"].item() == pytest.approx(0.25)
    # KL per element -0.5 (1 + log s^2 - m^2 - s^2): 0.5 and -0.5 (1 + 2 log 2 - 4); averaged.
    kl = (0.5 + -0.5 * (1 + 2 * math.log(2.0) - 4)) / 2
    assert metrics["loss/vae_kl"].item() == pytest.approx(kl)
    assert loss.item() == pytest.approx(0.25 + 0.5 * kl)
    loss.backward()
    assert torch.equal(recon.grad[1], torch.zeros(2))  # a filtered row's reconstruction teaches nothing
    # Without weights every row counts; the KL vanishes at the prior.
    plain, _ = cvae_loss(recon.detach(), action, torch.zeros(2, 1), torch.zeros(2, 1))
    assert plain.item() == pytest.approx((1 + 4 + 4) / 4)
