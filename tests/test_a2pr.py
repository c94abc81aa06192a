"""A2PR: its losses on hand-computed values, the advantage-filtered VAE, the policy delay, state and presets."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _support import tiny_context

from hybridrl import registry
from hybridrl.core.buffers import TransitionBuffer
from hybridrl.core.config import with_overrides
from hybridrl.core.context import BuildContext, OfflineView
from hybridrl.offline.a2pr import (
    A2PR,
    A2PRConfig,
    a2pr_actor_loss,
    a2pr_regularization_target,
    a2pr_value_loss,
)

PRESETS = sorted((Path(__file__).parents[1] / "benchmarks" / "configs" / "a2pr").glob("*.yaml"))


def build(ctx=None, **overrides):
    ctx = ctx or tiny_context()
    torch.manual_seed(0)
    config = with_overrides(registry.get("a2pr").tiny_config(), overrides)
    return A2PR(config, ctx), TransitionBuffer(ctx.obs_dim, ctx.act_dim, offline=ctx.offline, seed=0), ctx


def test_regularization_target_takes_the_action_of_larger_advantage_and_weights_by_indicators():
    recon = torch.arange(1.0, 6.0).unsqueeze(-1).expand(5, 2)
    data = -recon
    v = torch.zeros(5)
    q_recon = torch.tensor([1.0, 0.0, -1.0, -2.0, 2.0])
    q_data = torch.tensor([0.0, 0.0, 1.0, -3.0, 1.0])
    target, weight = a2pr_regularization_target(recon, data, q_recon, q_data, v, mask=0.4)
    # Rows: VAE wins; a tie goes to the VAE; the data wins; VAE wins but both advantages < 0; both > 0.
    assert torch.equal(target, torch.stack([recon[0], recon[1], data[2], recon[3], recon[4]]))
    # m = mask (1[A_vae >= 0] + 1[A_data > 0]): a zero advantage counts for the VAE's action only.
    assert torch.allclose(weight, torch.tensor([0.4, 0.4, 0.4, 0.0, 0.8]))
    # Advantages are Q - V: shifting V by a constant moves both sides of the comparison.
    target_v, weight_v = a2pr_regularization_target(recon, data, q_recon + 3, q_data + 3, v + 3, mask=0.4)
    assert torch.equal(target_v, target) and torch.equal(weight_v, weight)


def test_actor_loss_normalizes_q_and_weights_the_regularization_per_row():
    q = torch.tensor([2.0, -4.0], requires_grad=True)
    pi = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    loss, metrics = a2pr_actor_loss(q, pi, target, torch.tensor([1.0, 0.5]), alpha=2.5)
    # lambda = 2.5 / mean(|2|, |-4|); -lambda mean Q = 2.5 / 3; reg = (0.25 * 1 + 1 * 0.5) / 4
    assert metrics["actor/lambda"].item() == pytest.approx(2.5 / 3)
    assert metrics["loss/reg"].item() == pytest.approx(0.1875)
    assert loss.item() == pytest.approx(2.5 / 3 + 0.1875)
    loss.backward()
    assert torch.allclose(q.grad, torch.full((2,), -2.5 / 3 / 2))  # lambda is a constant


def test_actor_loss_differentiates_through_a_generated_target():
    # As in the reference, a~ from the VAE is not detached: with a~ = 0.5 pi, d/dpi mean((pi - a~)^2)
    # = 2 (0.5 pi)(1 - 0.5) / n, half of what a detached target would give.
    pi = torch.tensor([[0.4, -0.2], [0.6, 0.8]], requires_grad=True)
    loss, _ = a2pr_actor_loss(torch.ones(2), pi, 0.5 * pi, torch.ones(2), alpha=0.0)
    loss.backward()
    assert torch.allclose(pi.grad, 0.5 * pi.detach() / 4)


def test_value_loss_regresses_on_the_smaller_bootstrap():
    v = torch.zeros(2, requires_grad=True)
    next_q = torch.tensor([[3.0, 5.0], [4.0, 6.0]])  # current critics at a': min = [3, 5]
    td_target = torch.tensor([2.0, 4.0])
    loss, target = a2pr_value_loss(v, torch.ones(2), torch.tensor([0.0, 1.0]), next_q, td_target, gamma=0.5)
    # current bootstrap = [1 + 0.5 * 3, 1 (terminal)] = [2.5, 1]; min with y = [2, 1]
    assert torch.equal(target, torch.tensor([2.0, 1.0]))
    assert loss.item() == pytest.approx((4.0 + 1.0) / 2)
    assert not target.requires_grad


def _rig_advantage(algo, scale=4.0, value=1.0):
    """Q_i(s, a) = scale * relu(a_0) for every member and V(s) = value, whatever the state."""
    with torch.no_grad():
        obs_dim = algo.normalizer.mean.shape[0]
        for i, layer in enumerate(algo.critic.layers):
            layer.weight.zero_()
            layer.bias.zero_()
            if i == 0:
                layer.weight[:, obs_dim, 0] = 1.0
            else:
                layer.weight[:, 0, 0] = scale if i == len(algo.critic.layers) - 1 else 1.0
        for p in algo.value.parameters():
            p.zero_()
        algo.value.net[-1].bias.fill_(value)


def _split_context(n=512, seed=0):
    """States carry no information; half the actions have a_0 = +0.5, half a_0 = -0.5."""
    rng = np.random.default_rng(seed)
    sign = np.where(rng.uniform(size=n) < 0.5, 1.0, -1.0)
    actions = np.stack([0.5 * sign, rng.uniform(-1, 1, n)], axis=1)
    data = {"observations": rng.normal(size=(n, 3)), "actions": actions, "rewards": rng.normal(size=n),
            "next_observations": rng.normal(size=(n, 3)), "terminals": np.zeros(n, dtype=np.float32)}
    view = OfflineView.from_arrays(data, np.zeros(4), "cpu")
    return BuildContext.of_sizes(3, 2, offline=view)


def _train_vae_only(algo, buffer, steps):
    for _ in range(steps):
        terms, metrics = algo.losses(buffer.sample(64))
        algo.optimizers["vae"].zero_grad(set_to_none=True)
        terms["vae"].backward()
        algo.optimizers["vae"].step()
    return metrics


def test_vae_reconstructs_only_advantage_positive_actions():
    ctx = _split_context()
    # A = 4 relu(a_0) - 1: +1 for a_0 = +0.5, -1 for a_0 = -0.5.
    algo, buffer, _ = build(ctx)
    _rig_advantage(algo, value=1.0)
    batch = buffer.sample(64)
    positive = (batch.action[:, 0] > 0).float().mean()
    assert algo.losses(batch)[1]["vae/positive_fraction"] == positive
    _train_vae_only(algo, buffer, 150)
    # Control: V far below every Q, so every row passes the filter.
    control, control_buffer, _ = build(ctx)
    _rig_advantage(control, value=-100.0)
    assert _train_vae_only(control, control_buffer, 150)["vae/positive_fraction"] == 1.0
    obs = torch.randn(256, 3)
    torch.manual_seed(1)
    filtered = algo.vae.decode(algo.normalizer(obs))[:, 0].mean().item()
    torch.manual_seed(1)
    everything = control.vae.decode(control.normalizer(obs))[:, 0].mean().item()
    # Trained on a_0 = +0.5 rows alone, the VAE generates a_0 near +0.5; trained on all rows it does not.
    assert filtered > 0.35
    assert everything < filtered - 0.2


def test_actor_and_targets_move_only_on_delayed_steps():
    algo, buffer, _ = build(policy_delay=2)
    actor = [p.detach().clone() for p in algo.actor.parameters()]
    target = [p.detach().clone() for p in algo.target_critic.parameters()]
    vae = [p.detach().clone() for p in algo.vae.parameters()]
    metrics = algo.update(buffer.sample(32))
    assert "loss/actor" not in metrics and "loss/vae" in metrics
    assert all(torch.equal(a, p) for a, p in zip(actor, algo.actor.parameters(), strict=True))
    assert all(torch.equal(a, p) for a, p in zip(target, algo.target_critic.parameters(), strict=True))
    assert any(not torch.equal(a, p) for a, p in zip(vae, algo.vae.parameters(), strict=True))
    metrics = algo.update(buffer.sample(32))
    assert "loss/actor" in metrics
    assert any(not torch.equal(a, p) for a, p in zip(actor, algo.actor.parameters(), strict=True))
    assert any(not torch.equal(a, p) for a, p in zip(target, algo.target_critic.parameters(), strict=True))
    assert set(algo.losses(buffer.sample(32))[0]) == {"actor", "critic", "value", "vae"}


def test_network_sizes_follow_the_config():
    algo, _, _ = build(latent_dim=None, vae_hidden=(12, 10))
    assert algo.vae.latent_dim == 4  # twice the action size
    assert [m.out_features for m in algo.vae.encoder if isinstance(m, torch.nn.Linear)] == [12, 10, 8]
    assert [m.out_features for m in algo.vae.decoder if isinstance(m, torch.nn.Linear)] == [12, 10, 2]
    defaults = A2PRConfig()
    assert defaults.actor_hidden == (256,) * 3 and defaults.critic_hidden == (256,) * 4
    assert defaults.value_hidden == (256,) * 4 and defaults.vae_hidden == (750, 750)


def test_act_and_q_values_read_raw_observations_and_the_state_carries_the_statistics():
    algo, _, ctx = build()
    obs, action = torch.randn(5, 3) * 10, torch.rand(5, 2) * 2 - 1
    normalized = (obs - ctx.offline.obs_mean) / ctx.offline.obs_std
    assert torch.allclose(algo.act(obs), algo.actor(normalized))
    assert torch.allclose(algo.q_values(obs, action), algo.critic(normalized, action).min(dim=0).values)
    clone = A2PR(algo.config, tiny_context(seed=3))
    clone.load_state_dict(algo.state_dict())
    assert torch.equal(clone.act(obs), algo.act(obs))
    assert torch.equal(clone.q_values(obs, action), algo.q_values(obs, action))


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError):
        A2PRConfig(mask=-1.0)
    with pytest.raises(ValueError):
        A2PRConfig(latent_dim=0)
    with pytest.raises(ValueError):
        A2PRConfig(policy_delay=0)


def test_presets_are_sorted_documented_configs():
    assert {p.stem for p in PRESETS} == {f"{env}-{ds}" for env in ("halfcheetah", "hopper", "walker2d")
                                         for ds in ("medium", "medium-expert", "medium-replay")}
    for path in PRESETS:
        text = path.read_text()
        assert text.startswith("# "), f"{path.name}: no comment saying where the numbers come from"
        values = yaml.safe_load(text)
        assert list(values) == sorted(values), f"{path.name}: keys not sorted"
        config = with_overrides(A2PRConfig(), values)
        # Only the per-task settings of the reference may differ from the code's defaults.
        differing = {k for k in values if getattr(config, k) != getattr(A2PRConfig(), k)}
        assert differing <= {"alpha", "mask", "vae_weight", "gamma"}, f"{path.name}: {differing}"
    hopper = with_overrides(A2PRConfig(), yaml.safe_load((PRESETS[0].parent / "hopper-medium.yaml").read_text()))
    assert (hopper.alpha, hopper.mask, hopper.vae_weight, hopper.gamma) == (2.5, 0.4, 1.0, 0.995)
