"""PRDC: its actor loss on hand-computed values, its neighbours against scipy's KD-tree, its index and presets."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _support import tiny_context
from scipy.spatial import cKDTree

from hybridrl import registry
from hybridrl.core.buffers import TransitionBuffer
from hybridrl.core.config import with_overrides
from hybridrl.core.context import BuildContext
from hybridrl.core.neighbours import NearestNeighbours
from hybridrl.offline.prdc import PRDC, PRDCConfig, prdc_actor_loss

PRESETS = sorted((Path(__file__).parents[1] / "benchmarks" / "configs" / "prdc").glob("*.yaml"))


def build(obs_dim=3, act_dim=2, seed=0, **overrides):
    ctx = tiny_context(obs_dim, act_dim, seed=seed)
    torch.manual_seed(0)
    config = with_overrides(registry.get("prdc").tiny_config(), overrides)
    return PRDC(config, ctx), TransitionBuffer(obs_dim, act_dim, offline=ctx.offline, seed=0), ctx


def reference_neighbours(ctx, beta, obs, pi_action):
    """The reference code's construction: a KD-tree on [beta * normalized states, actions], queried with k=1."""
    view = ctx.offline
    mean, std = view.obs_mean.double().numpy(), view.obs_std.double().numpy()
    data = np.hstack([beta * (view.obs.double().numpy() - mean) / std, view.action.double().numpy()])
    key = np.hstack([beta * (obs.double().numpy() - mean) / std, pi_action.double().numpy()])
    dist, rows = cKDTree(data).query(key, k=1)
    return torch.from_numpy(dist), torch.from_numpy(rows)


def test_actor_loss_is_the_q_term_plus_the_distance_to_the_neighbours_action():
    q = torch.tensor([2.0, -4.0], requires_grad=True)
    pi = torch.tensor([[0.5, 0.0], [0.0, 0.0]], requires_grad=True)
    neighbour = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    loss, metrics = prdc_actor_loss(q, pi, neighbour, alpha=40.0)
    # lambda = 40 / mean(|2|, |-4|) = 40 / 3; mean Q = -1; DC = (0.25 + 1) / 4
    assert metrics["actor/lambda"].item() == pytest.approx(40 / 3)
    assert metrics["loss/dc"].item() == pytest.approx(0.3125)
    assert loss.item() == pytest.approx(40 / 3 + 0.3125)
    loss.backward()
    assert torch.allclose(q.grad, torch.full((2,), -40 / 3 / 2))  # lambda is a constant
    assert torch.allclose(pi.grad, 2 * (pi - neighbour).detach() / 4)  # d mean((pi - a^)^2) / d pi


@pytest.mark.parametrize(("obs_dim", "act_dim"), [(3, 2), (17, 6), (1, 1)])
@pytest.mark.parametrize("beta", [0.1, 1.0, 2.0, 7.5])
def test_neighbours_are_the_kd_tree_neighbours_of_the_reference_construction(obs_dim, act_dim, beta):
    algo, buffer, ctx = build(obs_dim, act_dim, beta=beta)
    batch = buffer.sample(32)
    pi_action = torch.rand(32, act_dim) * 2 - 1
    ref_dist, ref_rows = reference_neighbours(ctx, beta, batch.obs, pi_action)
    obs = algo.normalizer(batch.obs)
    for index in (algo.index, NearestNeighbours(algo.index.points, backend="scan", chunk_size=10)):
        algo.index = index
        action, dist = algo.neighbour_actions(obs, pi_action)
        # Random data has no ties: the same rows, hence the same actions.
        assert torch.allclose(dist, ref_dist, rtol=1e-5, atol=1e-6)
        assert torch.equal(action, ctx.offline.action[ref_rows])


def test_a_large_beta_anchors_to_the_dataset_action_as_td3bc_does():
    algo, _, ctx = build(beta=1e3)
    obs = algo.normalizer(ctx.offline.obs[:20])
    action, _ = algo.neighbour_actions(obs, torch.zeros(20, 2))
    assert torch.equal(action, ctx.offline.action[:20])


def test_the_actor_term_uses_the_neighbours_action():
    algo, buffer, _ = build()
    batch = buffer.sample(32)
    terms, metrics = algo.losses(batch)
    obs = algo.normalizer(batch.obs)
    pi_action = algo.actor(obs)
    neighbour, dist = algo.neighbour_actions(obs, pi_action)
    expected, _ = prdc_actor_loss(algo.critic(obs, pi_action)[0], pi_action, neighbour, algo.config.alpha)
    assert torch.allclose(terms["actor"], expected)
    assert metrics["loss/dc"].item() == pytest.approx(((pi_action - neighbour) ** 2).mean().item())
    assert metrics["dc/distance"].item() == pytest.approx(dist.mean().item())


def test_actor_and_targets_move_only_on_delayed_steps():
    algo, buffer, _ = build(policy_delay=2)
    actor = [p.detach().clone() for p in algo.actor.parameters()]
    metrics = algo.update(buffer.sample(32))
    assert "loss/dc" not in metrics
    assert all(torch.equal(a, p) for a, p in zip(actor, algo.actor.parameters(), strict=True))
    metrics = algo.update(buffer.sample(32))
    assert "loss/dc" in metrics
    assert any(not torch.equal(a, p) for a, p in zip(actor, algo.actor.parameters(), strict=True))


def test_state_holds_no_index_and_loading_other_statistics_rebuilds_it():
    algo, _, ctx = build()
    state = algo.state_dict()
    sizes = [t.shape[0] for v in state.values() if isinstance(v, dict) for t in v.values()
             if isinstance(t, torch.Tensor) and t.dim()]
    assert len(ctx.offline) not in sizes  # nothing with one row per transition
    # Same data, other statistics (normalization off): the loaded statistics rebuild the index.
    other = PRDC(with_overrides(algo.config, {"normalize_states": False}), ctx)
    before = other.index
    other.load_state_dict(state)
    assert other.index is not before
    assert torch.equal(other.index.points, algo.index.points)
    same = PRDC(algo.config, ctx)
    before = same.index
    same.load_state_dict(state)
    assert same.index is before  # nothing to rebuild


def test_needs_a_dataset():
    with pytest.raises(ValueError, match="prdc is built from a dataset"):
        PRDC(PRDCConfig(), BuildContext.of_sizes(3, 2))


def test_rejects_a_non_positive_beta():
    with pytest.raises(ValueError, match="beta"):
        PRDCConfig(beta=0.0)


def test_presets_are_sorted_documented_configs_with_the_reference_alpha_and_beta():
    assert len(PRESETS) == 9
    for path in PRESETS:
        text = path.read_text()
        assert text.startswith("# "), f"{path.name}: no comment saying where the numbers come from"
        values = yaml.safe_load(text)
        assert list(values) == sorted(values), f"{path.name}: keys not sorted"
        config = with_overrides(PRDCConfig(), values)
        assert config.alpha == (40.0 if path.name.startswith("halfcheetah") else 2.5), path.name
        assert config.beta == 2.0, path.name
        # Everything but alpha is the default (TD3+BC's backbone settings).
        assert with_overrides(config, {"alpha": 2.5}) == PRDCConfig(), path.name
