"""Mixed datasets: episodes kept whole and in order, sources recorded, mismatched sources refused."""

import dataclasses
import json

import gymnasium as gym
import minari
import numpy as np
import pytest
from _support import make_episode
from typer.testing import CliRunner

from hybridrl.cli import EXIT_BAD_INPUT, app
from hybridrl.control import datasets
from hybridrl.control.datasets import DatasetError
from hybridrl.control.envs import EnvSpec
from hybridrl.control.mixing import mix

FIELDS = ("observations", "actions", "rewards", "terminations", "truncations")


def hopper_episodes(lengths, *, seed, terminated=True):
    """Hopper-shaped episodes whose actions lie inside Hopper's [-1, 1] action space."""
    return [make_episode(n, obs_dim=11, act_dim=3, terminated=terminated, seed=seed + i) for i, n in enumerate(lengths)]


def put(dataset_id, episodes, env="Hopper-v5", refs=(-20.272305, 3234.3), **extra):
    datasets.write(dataset_id, episodes, env_id=env, ref_min_score=refs[0], ref_max_score=refs[1],
                   description="test data", algorithm_name="test", extra_metadata=extra or None)


@pytest.fixture
def two(tmp_path, monkeypatch):
    """An empty store with two Hopper datasets: terminated episodes, and time-limited ones."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    put("test/hopper/a-v0", hopper_episodes([4, 6], seed=0))
    put("test/hopper/b-v0", hopper_episodes([3, 5, 2], seed=10, terminated=False))
    return tmp_path


def recorded(dataset_id):
    return [{name: np.asarray(getattr(ep, name)) for name in FIELDS}
            for ep in minari.load_dataset(dataset_id).iterate_episodes()]


def test_mix_keeps_episodes_whole_in_order_and_records_its_sources(two):
    result = mix(["test/hopper/a-v0", "test/hopper/b-v0"], "test/hopper/ab-v0")
    assert (result["episodes"], result["transitions"]) == (5, 20)
    mixed, sources = recorded("test/hopper/ab-v0"), recorded("test/hopper/a-v0") + recorded("test/hopper/b-v0")
    assert len(mixed) == len(sources)
    for got, want in zip(mixed, sources, strict=True):
        for name in FIELDS:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    data = datasets.load("test/hopper/ab-v0")
    # Terminations stay terminals and time limits stay timeouts, episode by episode.
    assert data.terminals.sum() == 2 and data.timeouts.sum() == 3
    assert data.episode_lengths.tolist() == [4, 6, 3, 5, 2]
    assert data.env_spec == datasets.load("test/hopper/a-v0").env_spec
    assert data.ref_scores == pytest.approx((-20.272305, 3234.3))
    sources_meta = json.loads(data.metadata["hybridrl_mix_sources"])
    assert [(s["id"], s["episodes"], s["transitions"]) for s in sources_meta] == [
        ("test/hopper/a-v0", 2, 10), ("test/hopper/b-v0", 3, 10)]
    assert data.metadata["hybridrl_recipe"] == "mix"
    assert data.metadata["hybridrl_measured_return_mean"] == pytest.approx(data.episode_returns.mean())
    assert sources_meta == result["sources"]


def test_mix_keeps_the_sources_evaluation_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    # Minari reads a recorded env as Gymnasium's own JSON form of its spec.
    evaluation = dataclasses.replace(gym.spec("Hopper-v5"), max_episode_steps=300).to_json()
    put("test/hopper/c-v0", hopper_episodes([3], seed=0), eval_env_spec=evaluation)
    put("test/hopper/d-v0", hopper_episodes([3], seed=5), eval_env_spec=evaluation)
    mix(["test/hopper/c-v0", "test/hopper/d-v0"], "test/hopper/cd-v0")
    assert datasets.load("test/hopper/cd-v0").eval_env_spec == EnvSpec("Hopper-v5", {}, 300)


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (dict(env="Pendulum-v1", episodes=[make_episode(3, obs_dim=3, act_dim=1)]), "their envs differ"),
        (dict(env=EnvSpec("Hopper-v5", max_episode_steps=500)), "their envs differ"),
        (dict(refs=(0.0, 100.0)), "reference scores"),
    ],
)
def test_mismatched_sources_are_refused_in_one_line_before_writing(two, other, message):
    episodes = other.pop("episodes", hopper_episodes([3], seed=20))
    put("test/x/other-v0", episodes, **other)
    with pytest.raises(DatasetError, match=message) as info:
        mix(["test/hopper/a-v0", "test/x/other-v0"], "test/hopper/bad-v0")
    assert "\n" not in str(info.value) and "test/x/other-v0" in str(info.value)
    assert "test/hopper/bad-v0" not in datasets.local_dataset_ids()


def test_bad_requests_are_refused(two):
    with pytest.raises(ValueError, match="two datasets or more"):
        mix(["test/hopper/a-v0"], "test/hopper/m-v0")
    with pytest.raises(ValueError, match="named twice"):
        mix(["test/hopper/a-v0", "test/hopper/a-v0"], "test/hopper/m-v0")
    with pytest.raises(ValueError, match="invalid dataset id"):
        mix(["test/hopper/a-v0", "test/hopper/b-v0"], "no version")
    with pytest.raises(ValueError, match="one of the sources"):
        mix(["test/hopper/a-v0", "test/hopper/b-v0"], "test/hopper/b-v0")
    with pytest.raises(DatasetError, match="unknown dataset"):
        mix(["test/hopper/a-v0", "test/hopper/zzz-v0"], "test/hopper/m-v0")


def test_existing_output_needs_overwrite(two):
    mix(["test/hopper/a-v0", "test/hopper/b-v0"], "test/hopper/m-v0")
    with pytest.raises(ValueError, match=r"already exists.*--overwrite"):
        mix(["test/hopper/b-v0", "test/hopper/a-v0"], "test/hopper/m-v0")
    mix(["test/hopper/b-v0", "test/hopper/a-v0"], "test/hopper/m-v0", overwrite=True)
    assert datasets.load("test/hopper/m-v0").episode_lengths.tolist() == [3, 5, 2, 4, 6]


def test_cli_mix_then_info(two):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "mix", "test/hopper/a-v0", "test/hopper/b-v0", "--out", "test/hopper/ab-v0"])
    assert result.exit_code == 0, result.output
    assert "wrote test/hopper/ab-v0: 5 episodes, 20 transitions" in result.output
    info = runner.invoke(app, ["data", "info", "test/hopper/ab-v0"])
    assert info.exit_code == 0 and "mix_sources" in info.output and "test/hopper/b-v0" in info.output
    again = runner.invoke(app, ["data", "mix", "test/hopper/a-v0", "test/hopper/b-v0", "--out", "test/hopper/ab-v0"])
    assert again.exit_code == EXIT_BAD_INPUT
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "already exists" in lines[0]
