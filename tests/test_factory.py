"""The dataset factory: metadata, D4RL semantics of what it writes, resume of an interrupted make."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import minari
import numpy as np
import pytest
import torch
from _support import TINY_DATASET

from hybridrl.control import datasets
from hybridrl.factory import FactoryConfig, make_dataset, policy_dir, transitions_to_episodes
from hybridrl.online.sac import SACConfig

# A SAC run too short to learn (updates start after 5000 steps) but long enough to checkpoint;
# a negative medium fraction makes the first threshold check pass.
TINY = dict(transitions=300, sac_steps=1200, medium_fraction=-1.0, eval_every=400, threshold_episodes=1,
            checkpoint_every=300, sac=SACConfig(hidden=(32, 32)), preset="test")


def test_random_dataset_metadata(store):
    meta = minari.load_dataset(TINY_DATASET).storage.metadata
    assert meta["hybridrl_recipe"] == "random" and meta["hybridrl_seed"] == 0
    assert meta["ref_min_score"] == pytest.approx(-20.272305) and meta["ref_max_score"] == pytest.approx(3234.3)
    data = datasets.load(TINY_DATASET)
    assert meta["hybridrl_measured_return_mean"] == pytest.approx(data.episode_returns.mean())
    assert meta["hybridrl_factory"]["transitions"] == 1000 and len(data) >= 1000


def test_transitions_to_episodes_cuts_at_terminals_and_resets():
    obs = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [20.0]])
    next_obs = np.array([[1.0], [2.0], [3.0], [11.0], [12.0], [21.0]])
    terminated = np.array([0, 0, 1, 0, 0, 0], dtype=np.float32)  # reset after row 4, cut after row 5
    episodes = transitions_to_episodes(obs, np.zeros((6, 1)), np.arange(6.0), next_obs, terminated)
    assert [len(e["rewards"]) for e in episodes] == [3, 2, 1]
    assert episodes[0]["terminations"].tolist() == [False, False, True]
    assert episodes[1]["truncations"].tolist() == [False, True]
    np.testing.assert_array_equal(episodes[1]["observations"].ravel(), [10.0, 11.0, 12.0])
    data = datasets.episodes_to_transitions(episodes)
    np.testing.assert_array_equal(data.next_observations, next_obs.astype(np.float32))
    assert data.terminals.tolist() == [0, 0, 1, 0, 0, 0] and data.timeouts.tolist() == [0, 0, 0, 0, 1, 1]


@pytest.mark.slow
def test_sac_qualities_share_one_behaviour_run(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    monkeypatch.setenv("HYBRIDRL_HOME", str(tmp_path / "home"))
    config = FactoryConfig(**TINY)
    make_dataset("hopper", "medium-replay", config=config, device="cpu", progress=False)
    replay = datasets.load("hybridrl/hopper/medium-replay-v0")
    # The replay buffer up to the first threshold check (step 400), cut into episodes.
    assert len(replay) == 400
    assert replay.metadata["hybridrl_medium_policy_steps"] == 400
    # The behaviour SAC has the preset's widths, and the metadata says so.
    assert list(replay.metadata["hybridrl_factory"]["sac"]["hidden"]) == [32, 32]
    policy = torch.load(policy_dir("hopper", 0, config) / "medium.pt", weights_only=False)
    assert policy["actor"]["net.0.weight"].shape[0] == 32
    assert (replay.terminals + replay.timeouts).sum() == len(replay.episode_returns)
    make_dataset("hopper", "medium-expert", config=config, device="cpu", progress=False)
    mixed = datasets.load("hybridrl/hopper/medium-expert-v0")
    assert mixed.metadata["hybridrl_expert_policy_steps"] == 1200
    assert len(mixed) >= 600 and mixed.ref_scores == pytest.approx((-20.272305, 3234.3))
    assert minari.load_dataset("hybridrl/hopper/medium-expert-v0").total_steps == len(mixed)
    with pytest.raises(ValueError, match="already exists"):
        make_dataset("hopper", "medium-expert", config=config, device="cpu", progress=False)


MAKE = textwrap.dedent("""
    from hybridrl.factory import FactoryConfig, make_dataset
    from hybridrl.online.sac import SACConfig
    make_dataset("hopper", "expert", config=FactoryConfig(**{tiny!r}), device="cpu", progress=False)
""")


@pytest.mark.slow
def test_interrupted_make_resumes_to_the_same_dataset(tmp_path):
    code = MAKE.format(tiny=TINY)

    def env(name):
        return {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / name / "store"),
                "HYBRIDRL_HOME": str(tmp_path / name / "home"), "OMP_NUM_THREADS": "1"}

    killed = env("killed")
    proc = subprocess.Popen([sys.executable, "-c", code], env=killed, stderr=subprocess.PIPE)
    policies = policy_dir("hopper", 0, FactoryConfig(**TINY)).name
    checkpoint = tmp_path / "killed" / "home" / "policies" / policies / "sac" / "checkpoint.pt"
    # no wall-clock deadline (a slow machine is not a failure): fail only when the process ends first
    while not checkpoint.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "store" / "hybridrl").exists()
    subprocess.run([sys.executable, "-c", code], env=killed, check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", code], env=env("straight"), check=True, capture_output=True)

    loaded = []
    for name in ("killed", "straight"):
        os.environ["MINARI_DATASETS_PATH"] = str(tmp_path / name / "store")
        loaded.append(datasets.load("hybridrl/hopper/expert-v0"))
    del os.environ["MINARI_DATASETS_PATH"]
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(loaded[0], key), getattr(loaded[1], key))


def test_each_behaviour_recipe_has_its_own_policies(monkeypatch, tmp_path):
    monkeypatch.setenv("HYBRIDRL_HOME", str(tmp_path))
    config = FactoryConfig(**TINY)
    assert policy_dir("hopper", 0, config) == policy_dir("hopper", 0, replace(config, transitions=5))
    others = [replace(config, sac=SACConfig(hidden=(16, 16))), replace(config, sac_steps=2400),
              replace(config, medium_fraction=0.5), replace(config, preset="small")]
    dirs = {policy_dir("hopper", 0, c) for c in [config, *others]} | {policy_dir("hopper", 1, config)}
    assert len(dirs) == 6 and all(d.parent == tmp_path / "policies" for d in dirs)


def test_unknown_task_and_quality_in_the_library():
    with pytest.raises(ValueError, match="unknown task 'ant'"):
        make_dataset("ant", "medium")
    with pytest.raises(ValueError, match=r"unknown quality 'mediocre'.*medium-replay"):
        make_dataset("hopper", "mediocre")


def test_a_run_that_never_reaches_medium_says_so(tmp_path, monkeypatch):
    from hybridrl.factory import BehaviourPolicyError

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    monkeypatch.setenv("HYBRIDRL_HOME", str(tmp_path / "home"))
    config = FactoryConfig(**{**TINY, "medium_fraction": 10.0, "sac_steps": 400, "eval_every": 200})
    with pytest.raises(BehaviourPolicyError, match="never reached the medium threshold"):
        make_dataset("hopper", "medium", config=config, device="cpu", progress=False)


def test_a_dataset_can_be_written_under_another_id(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    with pytest.raises(ValueError, match="invalid dataset id 'hopper medium'"):
        make_dataset("hopper", "random", config=FactoryConfig(transitions=50, preset="test"), out_id="hopper medium")
    written = make_dataset("hopper", "random", config=FactoryConfig(transitions=50, preset="test"),
                           out_id="hybridrl/hopper/random-tiny-v0")
    assert written == "hybridrl/hopper/random-tiny-v0"
    assert datasets.load(written).metadata["hybridrl_recipe"] == "random"
