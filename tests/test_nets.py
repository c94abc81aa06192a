import math

import pytest
import torch

from hybridrl.core.nets import EnsembleCritic, TanhGaussianActor, soft_update_


def test_ensemble_critic_matches_member_by_member_mlp():
    torch.manual_seed(0)
    critic = EnsembleCritic(3, 2, hidden=(8, 8), ensemble_size=4)
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    out = critic(obs, act)
    assert out.shape == (4, 5)
    x = torch.cat([obs, act], -1)
    for i in range(4):
        h = x
        for j, layer in enumerate(critic.layers):
            h = h @ layer.weight[i] + layer.bias[i]
            if j < len(critic.layers) - 1:
                h = torch.relu(h)
        assert torch.allclose(out[i], h.squeeze(-1), atol=1e-6)
    # Per-member inputs (N, B, ·) give the same values when every member sees the same rows.
    per_member = critic(obs.expand(4, -1, -1), act.expand(4, -1, -1))
    assert torch.allclose(per_member, out, atol=1e-6)


def test_detached_params_give_no_critic_gradient():
    critic = EnsembleCritic(3, 2, hidden=(8,))
    act = torch.randn(4, 2, requires_grad=True)
    critic(torch.randn(4, 3), act, detach_params=True).sum().backward()
    assert all(p.grad is None for p in critic.parameters())
    assert act.grad is not None and act.grad.abs().sum() > 0


def test_tanh_gaussian_log_prob_matches_sample():
    torch.manual_seed(0)
    actor = TanhGaussianActor(3, 2, hidden=(16,))
    obs = torch.randn(64, 3)
    action, logp = actor(obs)
    assert action.abs().max() < 1.0
    assert torch.allclose(actor.log_prob(obs, action), logp, atol=1e-3)
    many, many_logp = actor(obs, num_samples=5)
    assert many.shape == (5, 64, 2) and many_logp.shape == (5, 64)


def test_tanh_gaussian_density_integrates_to_one_in_1d():
    torch.manual_seed(0)
    actor = TanhGaussianActor(1, 1, hidden=(4,))
    obs = torch.zeros(1, 1)
    grid = torch.linspace(-0.9999, 0.9999, 20001).unsqueeze(-1)
    density = actor.log_prob(obs.expand(len(grid), -1), grid).exp()
    mass = torch.trapezoid(density, grid.squeeze(-1)).item()
    assert math.isclose(mass, 1.0, abs_tol=2e-2)


def test_soft_update():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    soft_update_(a, b, 0.0)
    assert torch.equal(a.weight, before)
    soft_update_(a, b, 0.25)
    assert torch.allclose(a.weight, 0.75 * before + 0.25 * b.weight)
    soft_update_(a, b, 1.0)
    assert torch.allclose(a.weight, b.weight)


def test_shared_adam_is_fused_and_steps_like_plain_adam():
    from hybridrl.core.optim import adam

    torch.manual_seed(0)
    fused_net = torch.nn.Linear(8, 4)
    plain_net = torch.nn.Linear(8, 4)
    plain_net.load_state_dict(fused_net.state_dict())
    initial = fused_net.weight.detach().clone()
    fused, plain = adam(fused_net.parameters(), lr=1e-2), torch.optim.Adam(plain_net.parameters(), lr=1e-2)
    assert fused.param_groups[0]["fused"]
    x = torch.randn(32, 8)
    for _ in range(5):
        for net, optim in ((fused_net, fused), (plain_net, plain)):
            optim.zero_grad()
            net(x).pow(2).mean().backward()
            optim.step()
    for a, b in zip(fused_net.parameters(), plain_net.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert (fused_net.weight - initial).abs().max() > 1e-3  # the steps did move the weights


def test_value_net_shape():
    from hybridrl.core.nets import ValueNet

    assert ValueNet(3, hidden=(8,))(torch.randn(5, 3)).shape == (5,)


def test_gaussian_actor_log_prob_matches_torch_normal_and_acts_in_bounds():
    from hybridrl.core.nets import GaussianActor

    torch.manual_seed(0)
    actor = GaussianActor(3, 2, hidden=(16,))
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([-0.5, 0.3]))
    obs, action = torch.randn(6, 3), torch.rand(6, 2) * 2 - 1
    mean = torch.tanh(actor.net(obs))
    expected = torch.distributions.Normal(mean, actor.log_std.exp()).log_prob(action).sum(-1)
    assert torch.allclose(actor.log_prob(obs, action), expected, atol=1e-6)
    assert torch.allclose(actor.act(obs), mean)
    noisy = actor.act(torch.randn(500, 3) * 100, deterministic=False)
    assert noisy.abs().max() <= 1.0
    # The log std is clipped to the official [-5, 2].
    with torch.no_grad():
        actor.log_std.fill_(-30.0)
    assert torch.allclose(actor.distribution_params(obs)[1], torch.full((2,), -5.0))


def test_obs_normalizer():
    from hybridrl.core.nets import ObsNormalizer

    norm = ObsNormalizer(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 0.5]))
    assert torch.allclose(norm(torch.tensor([[3.0, -1.0]])), torch.tensor([[1.0, 2.0]]))
    assert list(norm.parameters()) == []  # no optimizer can move the statistics
    assert set(norm.state_dict()) == {"mean", "std"}
    x = torch.randn(4, 2)
    assert torch.equal(ObsNormalizer.identity(2)(x), x)  # bit for bit
    assert torch.equal(ObsNormalizer.of(norm.mean, norm.std, enabled=False)(x), x)
    other = ObsNormalizer.identity(2)
    other.load_state_dict(norm.state_dict())
    assert torch.equal(other(x), norm(x))
    with pytest.raises(ValueError, match="positive"):
        ObsNormalizer(torch.zeros(2), torch.tensor([1.0, 0.0]))


def test_conditional_vae_shapes_clamps_clips_and_detaches():
    from hybridrl.core.nets import ConditionalVAE

    torch.manual_seed(0)
    vae = ConditionalVAE(3, 2, latent_dim=4, hidden=(8, 8), latent_clip=0.5)
    obs = torch.randn(5, 3)
    action = (torch.rand(5, 2) * 2 - 1).requires_grad_(True)
    recon, mean, log_std = vae(obs, action)
    assert recon.shape == (5, 2) and mean.shape == log_std.shape == (5, 4)
    assert recon.abs().max() <= 1.0
    # Sampling draws z ~ N(0, 1) clipped to [-0.5, 0.5].
    torch.manual_seed(1)
    sampled = vae.decode(obs)
    torch.manual_seed(1)
    assert torch.equal(sampled, vae.decode(obs, torch.randn(5, 4).clamp(-0.5, 0.5)))
    # The log std is clamped to [-4, 15].
    with torch.no_grad():
        vae.encoder[-1].bias[4:] = 100.0
    assert vae.encode(obs, action)[1].max().item() == 15.0
    with torch.no_grad():
        vae.encoder[-1].bias[4:] = -100.0
    assert vae.encode(obs, action)[1].min().item() == -4.0
    # Detached weights: the same values, gradient to the inputs only.
    torch.manual_seed(2)
    expected = vae(obs, action)[0]
    torch.manual_seed(2)
    got = vae(obs, action, detach_params=True)[0]
    assert torch.allclose(got, expected)
    got.sum().backward()
    assert all(p.grad is None for p in vae.parameters())
    assert action.grad is not None and action.grad.abs().sum() > 0
