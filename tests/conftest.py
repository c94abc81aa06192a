"""Shared fixtures: a private Minari store per session with a tiny dataset of real Hopper rollouts."""

from __future__ import annotations

import pytest


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


@pytest.fixture(scope="session", autouse=True)
def private_caches(tmp_path_factory):
    """Hugging Face caches (hub, datasets) in a temporary directory: tests never write under the home
    directory, and never read a cache another run left there."""
    root = tmp_path_factory.mktemp("hf")
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HOME", str(root))
    mp.setenv("HF_DATASETS_CACHE", str(root / "datasets"))
    import sys

    if "datasets" in sys.modules:  # it reads the variable once, at import: imported while collecting
        from pathlib import Path

        mp.setattr(sys.modules["datasets"].config, "HF_DATASETS_CACHE", Path(root / "datasets"))
    yield root
    mp.undo()
