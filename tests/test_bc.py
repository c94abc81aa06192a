"""BC's optional state normalization: off by default (raw observations), on it uses the dataset's statistics."""

import torch
from _support import tiny_context

from hybridrl.offline.bc import BC, BCConfig


def test_default_bc_reads_raw_observations():
    algo = BC(BCConfig(hidden=(8,)), tiny_context())
    obs = torch.randn(5, 3)
    assert torch.equal(algo.act(obs), algo.actor(obs))


def test_normalized_bc_uses_and_saves_the_datasets_statistics():
    ctx = tiny_context()
    algo = BC(BCConfig(hidden=(8,), normalize_states=True), ctx)
    obs = torch.randn(5, 3) * 10
    assert torch.allclose(algo.act(obs), algo.actor((obs - ctx.offline.obs_mean) / ctx.offline.obs_std))
    clone = BC(algo.config, tiny_context(seed=3))
    clone.load_state_dict(algo.state_dict())
    assert torch.equal(clone.act(obs), algo.act(obs))


def test_a_state_without_statistics_still_loads():
    algo = BC(BCConfig(hidden=(8,)), tiny_context())
    state = algo.state_dict()
    del state["obs_normalizer"]
    BC(algo.config, tiny_context()).load_state_dict(state)
