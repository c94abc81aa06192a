"""Shared fixtures: a private Minari store per session with a tiny dataset of real Hopper rollouts."""

from __future__ import annotations

import numpy as np
import pytest

TINY_DATASET = "hybridrl/hopper/random-v0"


@pytest.fixture(scope="session")
def minari_store(tmp_path_factory):
    """A Minari store holding TINY_DATASET (about 1000 uniform-random Hopper-v5 transitions)."""
    root = tmp_path_factory.mktemp("minari")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(root))
    mp.setenv("HYBRIDRL_HOME", str(root / "home"))
    from hybridrl.factory import FactoryConfig, make_dataset

    make_dataset("hopper", "random", config=FactoryConfig(transitions=1000, preset="test"))
    yield root
    mp.undo()


@pytest.fixture
def store(minari_store, monkeypatch):
    """Point MINARI_DATASETS_PATH at the session store for one test."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_store))
    return minari_store


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
