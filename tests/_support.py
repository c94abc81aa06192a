"""Helpers shared by the test modules (a plain module: two conftest.py files cannot both be imported by name)."""

from __future__ import annotations

from typing import Any

import numpy as np

TINY_DATASET = "hybridrl/hopper/random-v0"


def make_episode(steps: int, obs_dim: int = 3, act_dim: int = 2, *, terminated: bool = True,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """A Minari-style episode: T+1 observations for T steps; the last step terminates or truncates."""
    rng = np.random.default_rng(seed)
    terminations = np.zeros(steps, dtype=bool)
    truncations = np.zeros(steps, dtype=bool)
    (terminations if terminated else truncations)[-1] = True
    return {
        "observations": rng.normal(size=(steps + 1, obs_dim)),
        "actions": rng.uniform(-1, 1, size=(steps, act_dim)),
        "rewards": rng.normal(size=steps),
        "terminations": terminations,
        "truncations": truncations,
    }


def tiny_d4rl(n: int = 64, obs_dim: int = 3, act_dim: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """D4RL-style arrays of random transitions (actions in [-1, 1], some terminals)."""
    rng = np.random.default_rng(seed)
    return {"observations": rng.normal(size=(n, obs_dim)), "actions": rng.uniform(-1, 1, (n, act_dim)),
            "rewards": rng.normal(size=n), "next_observations": rng.normal(size=(n, obs_dim)),
            "terminals": (rng.uniform(size=n) < 0.1).astype(np.float32)}


def tiny_context(obs_dim: int = 3, act_dim: int = 2, seed: int = 0, total_steps: int = 100):
    """A build context with a tiny random dataset on the CPU, as the runner would make it."""
    from hybridrl.core.context import BuildContext, OfflineView

    data = tiny_d4rl(obs_dim=obs_dim, act_dim=act_dim, seed=seed)
    returns = np.random.default_rng(seed).normal(size=8) * 10
    view = OfflineView.from_arrays(data, returns, "cpu")
    return BuildContext.of_sizes(obs_dim, act_dim, seed=seed, total_steps=total_steps, offline=view)


def all_parameters(algo) -> dict[int, Any]:
    """Every parameter tensor the method holds (networks, targets, scalars), by identity."""
    import torch

    found = {}
    for value in vars(algo).values():
        if isinstance(value, torch.nn.Module):
            found.update({id(p): p for p in value.parameters()})
        elif isinstance(value, torch.Tensor) and value.is_leaf and value.is_floating_point():
            found[id(value)] = value
    return found


def assert_terms_isolated(algo, batch) -> None:
    """Each named loss term, back-propagated through the method's own ``losses``, reaches its group only.

    Its own group must receive some gradient; every other group, and every parameter outside the
    groups (target networks), none.
    """
    groups = algo.param_groups()
    everything = all_parameters(algo)
    names = list(algo.losses(batch)[0])
    assert names, "the method names no loss term"
    for name in names:
        assert name in groups, f"loss term {name!r} has no parameter group (groups: {sorted(groups)})"
        for p in everything.values():
            p.grad = None
        terms, _ = algo.losses(batch)
        terms[name].backward()
        own = {id(p) for p in groups[name]}
        assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in groups[name]), \
            f"loss term {name!r} gives its own group no gradient"
        leaked = [pid for pid, p in everything.items()
                  if pid not in own and p.grad is not None and bool(p.grad.abs().sum() > 0)]
        owners = sorted(g for g, ps in groups.items() if any(id(p) in leaked for p in ps))
        assert not leaked, f"loss term {name!r} reaches {owners or 'a parameter outside the groups'}"
        for p in everything.values():
            p.grad = None
