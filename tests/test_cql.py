"""CQL beyond the registry-wide contract: its proposals, its conservative gap, its Lagrange variant."""

import dataclasses

import numpy as np
import pytest
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


def test_dual_losses_of_both_lagrange_forms_on_hand_computed_values():
    from hybridrl.offline.cql import lagrange_loss

    # alpha' = 2, gaps (3, 5), alpha_cql = 5, tau = 10.
    gap = torch.tensor([3.0, 5.0])
    for form, expected in (("corl", -(2 * 5 * (3 - 10) + 2 * 5 * (5 - 10)) / 2),  # = 60
                           ("official", -(2 * (5 * 3 - 10) + 2 * (5 * 5 - 10)) / 2)):  # = -20
        log_alpha_prime = torch.tensor(np.log(2.0), dtype=torch.float32, requires_grad=True)
        loss = lagrange_loss(log_alpha_prime, gap, 5.0, 10.0, form)
        loss.backward()
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        # d/d log alpha' of alpha' * c is alpha' * c: the gradient equals the loss while unclamped.
        assert log_alpha_prime.grad.item() == pytest.approx(expected, rel=1e-6)
    # The forms coincide at alpha_cql = 1.
    log_alpha_prime = torch.tensor(0.3)
    assert torch.equal(lagrange_loss(log_alpha_prime, gap, 1.0, 4.0, "corl"),
                       lagrange_loss(log_alpha_prime, gap, 1.0, 4.0, "official"))


def test_lagrange_weight_is_clamped_at_1e6_and_stops_there():
    from hybridrl.offline.cql import lagrange_loss

    log_alpha_prime = torch.tensor(np.log(2e6), dtype=torch.float32, requires_grad=True)
    loss = lagrange_loss(log_alpha_prime, torch.tensor([3.0]), 1.0, 1.0, "official")
    loss.backward()
    assert loss.item() == pytest.approx(-1e6 * 2.0)
    assert log_alpha_prime.grad.item() == 0.0


def test_the_configured_lagrange_form_reaches_the_dual_term():
    """Same parameters and batch: the forms' dual terms differ by alpha' * tau * (alpha_cql - 1), nothing else."""
    cql_alpha, tau = 5.0, 2.0
    terms = {}
    for form in ("corl", "official"):
        algo, buffer = build(lagrange=True, lagrange_form=form, cql_alpha=cql_alpha, lagrange_threshold=tau)
        torch.manual_seed(1)
        terms[form] = algo.losses(buffer.sample(32))[0]
    alpha_prime = 1.0  # log alpha' starts at 0
    assert terms["corl"]["alpha_prime"].item() - terms["official"]["alpha_prime"].item() == pytest.approx(
        alpha_prime * tau * (cql_alpha - 1), rel=1e-5)
    assert torch.equal(terms["corl"]["critic"], terms["official"]["critic"])


def test_lagrange_form_is_checked_and_defaults_to_corl():
    from hybridrl.offline.cql import CQLConfig

    assert CQLConfig().lagrange_form == "corl"
    with pytest.raises(ValueError, match="lagrange_form"):
        CQLConfig(lagrange_form="paper")


def test_cql_takes_part_in_the_conservatism_measurement():
    from hybridrl.control.conservatism import QValueMethod

    algo, buffer = build()
    assert isinstance(algo, QValueMethod)
    batch = buffer.sample(8)
    q = algo.q_values(batch.obs, batch.action)
    assert q.shape == (8,) and torch.equal(q, algo.critic(batch.obs, batch.action).min(dim=0).values)
