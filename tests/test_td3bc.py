"""TD3+BC: its actor loss on hand-computed values, the policy delay, state normalization and its presets."""

from pathlib import Path

import pytest
import torch
import yaml
from _support import tiny_context

from hybridrl import registry
from hybridrl.core.buffers import TransitionBuffer
from hybridrl.core.config import with_overrides
from hybridrl.offline.td3bc import TD3BC, TD3BCConfig, td3bc_actor_loss

PRESETS = sorted((Path(__file__).parents[1] / "benchmarks" / "configs" / "td3bc").glob("*.yaml"))


def build(**overrides):
    ctx = tiny_context()
    torch.manual_seed(0)
    config = with_overrides(registry.get("td3bc").tiny_config(), overrides)
    return TD3BC(config, ctx), TransitionBuffer(3, 2, offline=ctx.offline, seed=0), ctx


def test_actor_loss_normalizes_q_by_its_mean_magnitude():
    q = torch.tensor([2.0, -4.0], requires_grad=True)
    pi = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    data = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    loss, metrics = td3bc_actor_loss(q, pi, data, alpha=2.5)
    # lambda = 2.5 / mean(|2|, |-4|) = 2.5 / 3; mean Q = -1; BC = (0.25 + 1) / 4
    assert metrics["actor/lambda"].item() == pytest.approx(2.5 / 3)
    assert metrics["loss/bc"].item() == pytest.approx(0.3125)
    assert loss.item() == pytest.approx(2.5 / 3 + 0.3125)
    loss.backward()
    # lambda is a constant: dL/dq = -lambda / B for every row
    assert torch.allclose(q.grad, torch.full((2,), -2.5 / 3 / 2))


def test_actor_and_targets_move_only_on_delayed_steps():
    algo, buffer, _ = build(policy_delay=2)
    actor = [p.detach().clone() for p in algo.actor.parameters()]
    target = [p.detach().clone() for p in algo.target_critic.parameters()]
    metrics = algo.update(buffer.sample(32))
    assert "loss/actor" not in metrics  # the skipped step computes no actor loss
    assert all(torch.equal(a, p) for a, p in zip(actor, algo.actor.parameters(), strict=True))
    assert all(torch.equal(a, p) for a, p in zip(target, algo.target_critic.parameters(), strict=True))
    metrics = algo.update(buffer.sample(32))
    assert "loss/actor" in metrics
    assert any(not torch.equal(a, p) for a, p in zip(actor, algo.actor.parameters(), strict=True))
    assert any(not torch.equal(a, p) for a, p in zip(target, algo.target_critic.parameters(), strict=True))
    # losses() names every term on any step
    assert set(algo.losses(buffer.sample(32))[0]) == {"actor", "critic"}


def test_act_normalizes_with_the_datasets_statistics_and_the_state_carries_them():
    algo, _, ctx = build()
    obs = torch.randn(5, 3) * 10
    expected = algo.actor((obs - ctx.offline.obs_mean) / ctx.offline.obs_std)
    assert torch.allclose(algo.act(obs), expected)
    # Built on other data (other statistics), the loaded state acts like the original.
    other_ctx = tiny_context(seed=3)
    assert not torch.equal(other_ctx.offline.obs_mean, ctx.offline.obs_mean)
    clone = TD3BC(algo.config, other_ctx)
    clone.load_state_dict(algo.state_dict())
    assert torch.equal(clone.act(obs), algo.act(obs))


def test_without_normalization_act_reads_raw_observations():
    algo, _, _ = build(normalize_states=False)
    obs = torch.randn(5, 3)
    assert torch.equal(algo.act(obs), algo.actor(obs))


def test_presets_are_sorted_documented_configs():
    assert len(PRESETS) == 9
    for path in PRESETS:
        text = path.read_text()
        assert text.startswith("# "), f"{path.name}: no comment saying where the numbers come from"
        values = yaml.safe_load(text)
        assert list(values) == sorted(values), f"{path.name}: keys not sorted"
        config = with_overrides(TD3BCConfig(), values)
        assert config == TD3BCConfig(), f"{path.name}: differs from the paper defaults"
