"""The method contract, held by every registered RL method with no per-method code.

A new method registered with a tiny preset is picked up by each test here: it must build from a
context, train (every group moves, metrics stay finite), route each named loss term to its own
parameter group only, round-trip its state exactly (the next update after loading equals the
original's), and act within [-1, 1].
"""

import pytest
import torch
from _support import assert_terms_isolated, tiny_context

from hybridrl import registry
from hybridrl.core.buffers import TransitionBuffer

OBS_DIM, ACT_DIM = 3, 2
RL_METHODS = sorted(registry.of_family(*registry.RL_FAMILIES))


def build(name, seed=0):
    spec = registry.get(name)
    ctx = tiny_context(OBS_DIM, ACT_DIM, seed=0)
    torch.manual_seed(seed)
    return spec.build(spec.tiny_config(), ctx), TransitionBuffer(OBS_DIM, ACT_DIM, offline=ctx.offline, seed=seed)


def batch_size(algo):
    return algo.config.batch_size


def _flat(algo):
    return torch.cat([p.detach().reshape(-1) for ps in algo.param_groups().values() for p in ps])


def test_every_rl_method_has_a_tiny_preset_and_a_summary():
    assert {"bc", "cql", "sac"} <= set(RL_METHODS)
    for name in RL_METHODS:
        spec = registry.get(name)
        assert spec.tiny, f"{name} has no tiny preset"
        assert spec.summary and "\n" not in spec.summary
        spec.tiny_config()  # the preset's keys are fields of the config


@pytest.mark.parametrize("name", RL_METHODS)
def test_updates_move_every_group_and_metrics_are_finite(name):
    algo, buffer = build(name)
    before = {group: [p.detach().clone() for p in params] for group, params in algo.param_groups().items()}
    trained = set()
    for _ in range(3):
        metrics = algo.update(buffer.sample(batch_size(algo)))
        trained |= set(algo.losses(buffer.sample(batch_size(algo)))[0])
    assert metrics and all(torch.isfinite(v).all() for v in metrics.values())
    for group, params in algo.param_groups().items():
        if group in trained:
            assert any(not torch.equal(a, b) for a, b in zip(before[group], params, strict=True)), \
                f"{name}: group {group!r} did not change"


@pytest.mark.parametrize("name", RL_METHODS)
def test_each_loss_term_reaches_only_its_own_parameter_group(name):
    algo, buffer = build(name)
    algo.update(buffer.sample(batch_size(algo)))  # past any initial special case
    before = _flat(algo).clone()
    assert_terms_isolated(algo, buffer.sample(batch_size(algo)))
    assert torch.equal(before, _flat(algo)), f"{name}: losses() changed a parameter"


@pytest.mark.parametrize("name", RL_METHODS)
def test_same_seed_same_metrics(name):
    runs = []
    for _ in range(2):
        algo, buffer = build(name, seed=1)
        runs.append([algo.update(buffer.sample(batch_size(algo))) for _ in range(3)])
    for a, b in zip(*runs, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", RL_METHODS)
def test_state_round_trip_gives_the_same_next_update(name):
    original, buffer = build(name, seed=1)
    for _ in range(2):
        original.update(buffer.sample(batch_size(original)))
    clone, _ = build(name, seed=7)  # other initial weights: everything must come from the state
    clone.load_state_dict(original.state_dict())
    batch = buffer.sample(batch_size(original))
    rng = torch.get_rng_state()
    expected = original.update(batch)
    torch.set_rng_state(rng)
    got = clone.update(batch)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{name}: {key} differs after the round trip"
    a, b = original.state_dict(), clone.state_dict()
    for group, params in original.param_groups().items():
        for p, q in zip(params, clone.param_groups()[group], strict=True):
            assert torch.equal(p, q), f"{name}: group {group!r} differs after the next update"
    assert a.keys() == b.keys()


@pytest.mark.parametrize("name", RL_METHODS)
def test_act_shape_and_bounds(name):
    algo, buffer = build(name)
    algo.update(buffer.sample(batch_size(algo)))
    for deterministic in (True, False):
        action = algo.act(torch.randn(7, OBS_DIM) * 100, deterministic=deterministic)
        assert action.shape == (7, ACT_DIM)
        assert action.abs().max() <= 1.0
