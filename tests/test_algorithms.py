"""Every registered method, smoke-tested on tiny spaces; CQL's gradient routing checked."""

import dataclasses

import numpy as np
import pytest
import torch

from hybridrl import registry
from hybridrl.core.buffers import TransitionBuffer

OBS_DIM, ACT_DIM = 3, 2
SPECS = sorted(registry.load_all())


def tiny_config(spec):
    """The method's defaults with tiny networks."""
    fields = {f.name for f in dataclasses.fields(spec.config)}
    small = {"hidden": (16, 16), "batch_size": 32, "num_sampled_actions": 3}
    return spec.config(**{k: v for k, v in small.items() if k in fields})


def tiny_buffer(seed=0):
    rng = np.random.default_rng(seed)
    n = 64
    data = {"observations": rng.normal(size=(n, OBS_DIM)), "actions": rng.uniform(-1, 1, (n, ACT_DIM)),
            "rewards": rng.normal(size=n), "next_observations": rng.normal(size=(n, OBS_DIM)),
            "terminals": (rng.uniform(size=n) < 0.1).astype(np.float32)}
    return TransitionBuffer(OBS_DIM, ACT_DIM, offline=data, seed=seed)


def run_updates(name, steps=3, seed=0):
    spec = registry.get(name)
    torch.manual_seed(seed)
    algo = spec.build(OBS_DIM, ACT_DIM, tiny_config(spec), "cpu")
    buffer = tiny_buffer(seed)
    metrics = [algo.update(buffer.sample(32)) for _ in range(steps)]
    return algo, metrics


@pytest.mark.parametrize("name", SPECS)
def test_updates_change_parameters_and_metrics_are_finite(name):
    spec = registry.get(name)
    torch.manual_seed(0)
    algo = spec.build(OBS_DIM, ACT_DIM, tiny_config(spec), "cpu")
    before = {k: v.clone() for k, v in algo.state_dict()["actor"].items()}
    buffer = tiny_buffer()
    for _ in range(3):
        metrics = algo.update(buffer.sample(32))
    assert metrics and all(torch.isfinite(v).all() for v in metrics.values())
    after = algo.state_dict()["actor"]
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", SPECS)
def test_same_seed_same_metrics_and_state_round_trip(name):
    algo_a, metrics_a = run_updates(name, seed=1)
    _, metrics_b = run_updates(name, seed=1)
    for a, b in zip(metrics_a, metrics_b, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    spec = registry.get(name)
    clone = spec.build(OBS_DIM, ACT_DIM, tiny_config(spec), "cpu")
    clone.load_state_dict(algo_a.state_dict())
    obs = torch.randn(5, OBS_DIM)
    assert torch.equal(clone.act(obs), algo_a.act(obs))


@pytest.mark.parametrize("name", SPECS)
def test_act_shape_and_bounds(name):
    algo, _ = run_updates(name, steps=1)
    action = algo.act(torch.randn(7, OBS_DIM) * 100)
    assert action.shape == (7, ACT_DIM)
    assert action.abs().max() <= 1.0


def test_cql_each_loss_reaches_only_its_parameters():
    from hybridrl.core.losses import sac_actor_loss, sac_temperature_loss

    algo, _ = run_updates("cql", steps=1)
    for module in (algo.actor, algo.critic):
        module.zero_grad(set_to_none=True)
    algo.log_alpha.grad = None
    batch = tiny_buffer().sample(16)
    new_action, logp = algo.actor(batch.obs)
    # Actor loss: gradient to the actor only.
    q_new = algo.critic(batch.obs, new_action, detach_params=True)
    sac_actor_loss(logp, q_new, algo.log_alpha.exp().detach()).backward()
    assert all(p.grad is None for p in algo.critic.parameters())
    assert algo.log_alpha.grad is None
    assert any(p.grad is not None for p in algo.actor.parameters())
    algo.actor.zero_grad(set_to_none=True)
    # Temperature loss: gradient to log alpha only.
    _, logp = algo.actor(batch.obs)
    sac_temperature_loss(algo.log_alpha, logp, algo.target_entropy).backward()
    assert all(p.grad is None for p in algo.actor.parameters())
    assert algo.log_alpha.grad is not None


def test_cql_critic_loss_reaches_only_the_critic():
    algo, _ = run_updates("cql", steps=1)
    batch = tiny_buffer().sample(16)
    proposals, log_densities, target = algo._proposals(batch)
    assert not proposals.requires_grad and not log_densities.requires_grad and not target.requires_grad
    k, b = proposals.shape[0], len(batch)
    # Random proposals lie in [-1, 1]; the first N are uniform with density 0.5^|A|.
    assert proposals.abs().max() <= 1.0
    assert torch.allclose(log_densities[:, 0], torch.full((b,), ACT_DIM * np.log(0.5), dtype=torch.float32))
    assert k == 3 * algo.config.num_sampled_actions


def test_cql_pushes_down_out_of_distribution_values():
    """After training, Q at dataset actions exceeds Q at uniform random actions (the conservative gap)."""
    spec = registry.get("cql")
    torch.manual_seed(0)
    config = dataclasses.replace(tiny_config(spec), hidden=(32, 32))
    algo = spec.build(OBS_DIM, ACT_DIM, config, "cpu")
    rng = np.random.default_rng(0)
    n = 256
    obs = rng.normal(size=(n, OBS_DIM))
    actions = np.clip(0.1 * rng.normal(size=(n, ACT_DIM)) + 0.5, -1, 1)  # a narrow behaviour policy
    data = {"observations": obs, "actions": actions, "rewards": np.zeros(n),
            "next_observations": rng.normal(size=(n, OBS_DIM)), "terminals": np.ones(n)}
    buffer = TransitionBuffer(OBS_DIM, ACT_DIM, offline=data)
    for _ in range(200):
        algo.update(buffer.sample(64))
    obs_t = torch.as_tensor(obs, dtype=torch.float32)
    q_data = algo.q_values(obs_t, torch.as_tensor(actions, dtype=torch.float32)).mean()
    q_random = algo.q_values(obs_t, torch.rand(n, ACT_DIM) * 2 - 1).mean()
    assert q_data > q_random + 1.0


def test_cql_lagrange_variant_updates_alpha_prime():
    spec = registry.get("cql")
    config = dataclasses.replace(tiny_config(spec), lagrange=True, lagrange_threshold=1.0)
    algo = spec.build(OBS_DIM, ACT_DIM, config, "cpu")
    buffer = tiny_buffer()
    for _ in range(3):
        metrics = algo.update(buffer.sample(32))
    assert "alpha_prime" in metrics
    assert algo.log_alpha_prime.item() != 0.0
