"""CQL beyond the registry-wide contract: its proposals, its conservative gap, its Lagrange variant."""

import dataclasses

import numpy as np
import torch
from _support import assert_terms_isolated, tiny_context

from hybridrl import registry
from hybridrl.core.buffers import TransitionBuffer
from hybridrl.core.context import BuildContext

OBS_DIM, ACT_DIM = 3, 2


def build(**changes):
    spec = registry.get("cql")
    ctx = tiny_context(OBS_DIM, ACT_DIM)
    torch.manual_seed(0)
    algo = spec.build(dataclasses.replace(spec.tiny_config(), **changes), ctx)
    return algo, TransitionBuffer(OBS_DIM, ACT_DIM, offline=ctx.offline)


def test_proposals_carry_no_gradient_and_their_densities():
    algo, buffer = build()
    batch = buffer.sample(16)
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
    algo = spec.build(dataclasses.replace(spec.tiny_config(), hidden=(32, 32)),
                      BuildContext.of_sizes(OBS_DIM, ACT_DIM))
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


def test_lagrange_variant_learns_alpha_prime_and_keeps_its_terms_apart():
    algo, buffer = build(lagrange=True, lagrange_threshold=1.0)
    for _ in range(3):
        metrics = algo.update(buffer.sample(32))
    assert "alpha_prime" in metrics
    assert algo.log_alpha_prime.item() != 0.0
    assert "alpha_prime" in algo.losses(buffer.sample(32))[0]
    assert_terms_isolated(algo, buffer.sample(32))


def test_bc_warm_up_actor_term_reaches_only_the_actor():
    algo, buffer = build(bc_steps=10)
    assert_terms_isolated(algo, buffer.sample(32))
