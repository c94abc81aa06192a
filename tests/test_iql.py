"""IQL: its actor loss on hand-computed values, the reward scale, the cosine schedule, both actors, presets."""

import math
from pathlib import Path

import pytest
import torch
import yaml
from _support import assert_terms_isolated, tiny_context

from hybridrl import registry
from hybridrl.core.buffers import TransitionBuffer
from hybridrl.core.config import with_overrides
from hybridrl.offline.iql import IQL, IQLConfig, cosine_lr, iql_actor_loss, reward_scale

PRESETS = sorted((Path(__file__).parents[1] / "benchmarks" / "configs" / "iql").glob("*.yaml"))


def build(total_steps=100, **overrides):
    ctx = tiny_context(total_steps=total_steps)
    torch.manual_seed(0)
    config = with_overrides(registry.get("iql").tiny_config(), overrides)
    return IQL(config, ctx), TransitionBuffer(3, 2, offline=ctx.offline, seed=0), ctx


def test_actor_loss_weights_clip_and_detach():
    log_lik = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    advantage = torch.tensor([0.0, math.log(2.0), 10.0], requires_grad=True)
    loss, metrics = iql_actor_loss(log_lik, advantage, temperature=1.0, max_weight=100.0)
    # weights: exp(0) = 1, exp(log 2) = 2, exp(10) clipped to 100
    assert loss.item() == pytest.approx(-(1 * -1.0 + 2 * -2.0 + 100 * -0.5) / 3)
    assert metrics["actor/weight"].item() == pytest.approx(103 / 3)
    loss.backward()
    assert advantage.grad is None  # the advantages are weights, not a training signal
    assert torch.allclose(log_lik.grad, -torch.tensor([1.0, 2.0, 100.0]) / 3)


def test_reward_scale_and_cosine_lr():
    assert reward_scale(-100.0, 400.0) == pytest.approx(2.0)
    assert reward_scale(5.0, 5.0) == 1.0
    assert cosine_lr(3e-4, 0, 100) == pytest.approx(3e-4)
    assert cosine_lr(3e-4, 50, 100) == pytest.approx(1.5e-4)
    assert cosine_lr(3e-4, 100, 100) == pytest.approx(0.0)
    assert cosine_lr(3e-4, 150, 100) == pytest.approx(0.0)


def test_reward_scale_comes_from_the_datasets_returns_and_can_be_off():
    algo, _, ctx = build()
    view = ctx.offline
    assert algo.reward_scale == pytest.approx(1000.0 / (view.return_max - view.return_min))
    assert build(normalize_reward=False)[0].reward_scale == 1.0


def test_critic_target_uses_scaled_reward_and_value_of_next_state():
    algo, buffer, _ = build()
    batch = buffer.sample(32)
    with torch.no_grad():
        algo.critic.layers[-1].weight.zero_()
        algo.critic.layers[-1].bias.zero_()  # Q = 0: the critic loss is the mean squared target
        next_v = algo.value(algo.normalizer(batch.next_obs))
    target = batch.reward * algo.reward_scale + algo.config.gamma * (1 - batch.terminated) * next_v
    terms, _ = algo.losses(batch)
    assert terms["critic"].item() == pytest.approx(2 * target.pow(2).mean().item(), rel=1e-5)


def test_actor_lr_follows_the_cosine_over_the_runs_steps():
    algo, buffer, _ = build(total_steps=4)
    rates = []
    for _ in range(5):
        algo.update(buffer.sample(32))
        rates.append(algo.optimizers["actor"].param_groups[0]["lr"])
    base = algo.config.actor_lr
    assert rates == pytest.approx([cosine_lr(base, t, 4) for t in range(5)])
    # critics and value keep their rate
    assert algo.optimizers["critic"].param_groups[0]["lr"] == algo.config.critic_lr
    fixed, buffer, _ = build(total_steps=4, cosine_schedule=False)
    for _ in range(3):
        fixed.update(buffer.sample(32))
    assert fixed.optimizers["actor"].param_groups[0]["lr"] == fixed.config.actor_lr


def test_deterministic_actor_variant_trains_and_isolates_its_terms():
    algo, buffer, _ = build(deterministic_actor=True)
    before = [p.detach().clone() for p in algo.actor.parameters()]
    algo.update(buffer.sample(32))
    assert any(not torch.equal(a, p) for a, p in zip(before, algo.actor.parameters(), strict=True))
    assert_terms_isolated(algo, buffer.sample(32))
    obs = torch.randn(4, 3) * 100
    assert algo.act(obs).abs().max() <= 1.0


def test_state_carries_normalizer_and_reward_scale():
    algo, _, _ = build()
    clone = IQL(algo.config, tiny_context(seed=3))
    clone.load_state_dict(algo.state_dict())
    obs = torch.randn(5, 3)
    assert torch.equal(clone.act(obs), algo.act(obs))
    assert clone.reward_scale == algo.reward_scale


def test_presets_are_sorted_documented_configs():
    assert len(PRESETS) == 9
    for path in PRESETS:
        text = path.read_text()
        assert text.startswith("# "), f"{path.name}: no comment saying where the numbers come from"
        values = yaml.safe_load(text)
        assert list(values) == sorted(values), f"{path.name}: keys not sorted"
        assert with_overrides(IQLConfig(), values) == IQLConfig(), f"{path.name}: differs from the paper defaults"


def test_q_values_are_in_the_datasets_reward_units():
    algo, _, _ = build()
    obs, action = torch.randn(4, 3), torch.rand(4, 2) * 2 - 1
    scaled = algo.critic(algo.normalizer(obs), action).min(dim=0).values
    assert algo.reward_scale != 1.0
    assert torch.allclose(algo.q_values(obs, action) * algo.reward_scale, scaled)
