"""Minari data layer: D4RL semantics, validation errors, round trips."""

import minari
import numpy as np
import pytest
from _support import TINY_DATASET, make_episode

from hybridrl.control import datasets
from hybridrl.control.datasets import DatasetError, episodes_to_transitions


def test_transitions_align_observations_across_episode_ends():
    first, second = make_episode(4, seed=1), make_episode(3, terminated=False, seed=2)
    data = episodes_to_transitions([first, second])
    assert len(data) == 7
    # Episode 1's last transition ends on its own final observation, not episode 2's first.
    np.testing.assert_allclose(data.next_observations[3], first["observations"][4], rtol=1e-6)
    np.testing.assert_allclose(data.observations[4], second["observations"][0], rtol=1e-6)
    np.testing.assert_allclose(data.actions[4], second["actions"][0], rtol=1e-6)
    # Terminations are terminals; truncations are timeouts and not terminals.
    assert data.terminals.tolist() == [0, 0, 0, 1, 0, 0, 0]
    assert data.timeouts.tolist() == [0, 0, 0, 0, 0, 0, 1]


def test_step_both_terminated_and_truncated_is_a_terminal():
    episode = make_episode(2)
    episode["truncations"][-1] = True
    data = episodes_to_transitions([episode])
    assert data.terminals[-1] == 1 and data.timeouts[-1] == 0


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda e: e.pop("rewards"), "has no rewards"),
        (lambda e: e.update(observations=e["observations"][:-1]), "T\\+1 observations"),
        (lambda e: e.update(actions=e["actions"][:-1]), "3 actions for 4 rewards"),
        (lambda e: e["observations"].__setitem__((2, 1), np.nan), "observations hold NaN or inf \\(first at step 2\\)"),
        (lambda e: e["rewards"].__setitem__(0, np.inf), "rewards hold NaN or inf"),
        (lambda e: e.update(actions=e["actions"] * 3), "outside \\[-1, 1\\]"),
        (lambda e: e.update(actions=e["actions"][:, 0]), "must be 2-D"),
    ],
)
def test_malformed_episodes_get_one_line_errors(corrupt, message):
    episode = make_episode(4)
    corrupt(episode)
    with pytest.raises(DatasetError, match=message) as info:
        episodes_to_transitions([episode])
    assert "\n" not in str(info.value)


def test_empty_dataset_and_inconsistent_sizes():
    with pytest.raises(DatasetError, match="holds no episodes"):
        episodes_to_transitions([])
    with pytest.raises(DatasetError, match="differ from the first episode"):
        episodes_to_transitions([make_episode(3), make_episode(3, obs_dim=4)])


def test_unknown_and_malformed_ids(store):
    with pytest.raises(DatasetError, match=r"unknown dataset 'hybridrl/hopper/nothing-v0'.*hybridrl data make"):
        datasets.load("hybridrl/hopper/nothing-v0")
    with pytest.raises(DatasetError, match="malformed dataset id"):
        datasets.load(" bad id")


def test_minari_reads_what_we_write_and_loader_is_identical(store):
    ds = minari.load_dataset(TINY_DATASET)
    data = datasets.load(TINY_DATASET)
    assert ds.total_steps == len(data)
    assert ds.storage.metadata["ref_min_score"] == pytest.approx(-20.272305)
    assert ds.storage.metadata["ref_max_score"] == pytest.approx(3234.3)
    obs, act, rew, term = [], [], [], []
    for episode in ds.iterate_episodes():
        obs.append(episode.observations[:-1])
        act.append(episode.actions)
        rew.append(episode.rewards)
        term.append(episode.terminations)
    np.testing.assert_array_equal(data.observations, np.concatenate(obs).astype(np.float32))
    np.testing.assert_array_equal(data.actions, np.concatenate(act).astype(np.float32))
    np.testing.assert_array_equal(data.rewards, np.concatenate(rew).astype(np.float32))
    np.testing.assert_array_equal(data.terminals, np.concatenate(term).astype(np.float32))
    assert data.env_id == "Hopper-v5" and data.ref_scores == pytest.approx((-20.272305, 3234.3))


def test_qlearning_dataset_is_d4rl_shaped(store):
    d4rl = datasets.qlearning_dataset(TINY_DATASET)
    assert set(d4rl) == {"observations", "actions", "rewards", "next_observations", "terminals", "timeouts"}
    n = len(d4rl["rewards"])
    assert d4rl["observations"].shape == (n, 11) and d4rl["actions"].shape == (n, 3)
    assert all(isinstance(v, np.ndarray) for v in d4rl.values())
    # Consecutive rows inside an episode chain: s'_t == s_{t+1} unless t ended its episode.
    ends = (d4rl["terminals"] + d4rl["timeouts"]) > 0
    chained = np.all(np.isclose(d4rl["next_observations"][:-1], d4rl["observations"][1:]), axis=1)
    assert np.all(chained[~ends[:-1]])


def test_write_is_atomic_and_refuses_to_overwrite(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    episodes = [make_episode(5, obs_dim=11, act_dim=3, seed=s) for s in range(2)]
    bad = [*episodes, make_episode(5, obs_dim=11, act_dim=3, seed=3)]
    bad[-1]["observations"][0, 0] = np.nan
    with pytest.raises(DatasetError, match="NaN"):
        datasets.write("test/hopper/x-v0", bad, env_id="Hopper-v5", ref_min_score=0.0, ref_max_score=1.0,
                       description="d", algorithm_name="a")
    assert datasets.local_dataset_ids() == []
    datasets.write("test/hopper/x-v0", episodes, env_id="Hopper-v5", ref_min_score=0.0, ref_max_score=1.0,
                   description="d", algorithm_name="a", extra_metadata={"hybridrl_seed": 7})
    assert datasets.local_dataset_ids() == ["test/hopper/x-v0"]
    assert not any(p.name.startswith(".staging") for p in tmp_path.iterdir())
    assert datasets.load("test/hopper/x-v0").metadata["hybridrl_seed"] == 7
    with pytest.raises(DatasetError, match="already exists"):
        datasets.write("test/hopper/x-v0", episodes, env_id="Hopper-v5", ref_min_score=0.0, ref_max_score=1.0,
                       description="d", algorithm_name="a")


def test_corrupted_dataset_file_is_reported(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    episodes = [make_episode(5, obs_dim=11, act_dim=3)]
    path = datasets.write("test/hopper/y-v0", episodes, env_id="Hopper-v5", ref_min_score=0.0, ref_max_score=1.0,
                          description="d", algorithm_name="a")
    (path / "data" / "main_data.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match="test/hopper/y-v0") as info:
        datasets.load("test/hopper/y-v0")
    assert "\n" not in str(info.value)


def test_unknown_id_names_a_few_close_matches_not_the_whole_store(store, monkeypatch):
    local = [f"hybridrl/{task}/{quality}-v{v}" for task in ("hopper", "walker2d", "halfcheetah", "ant")
             for quality in ("random", "medium", "expert", "medium-replay", "medium-expert") for v in (0, 1)]
    monkeypatch.setattr(datasets, "local_dataset_ids", lambda: local)
    with pytest.raises(DatasetError, match="unknown dataset 'hybridrl/hopper/medum-v0'") as info:
        datasets.load("hybridrl/hopper/medum-v0")
    message = str(info.value)
    assert "\n" not in message and "see `hybridrl data list`" in message and "hybridrl data make" in message
    named = [name for name in local if name in message]
    assert "hybridrl/hopper/medium-v0" in named and 1 <= len(named) <= 5
    assert len(message) < 400


def test_write_refuses_data_that_does_not_fit_its_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(DatasetError, match="observations have 3 values but Hopper-v5's observation space has 11"):
        datasets.write("test/hopper/small-v0", [make_episode(5, obs_dim=3, act_dim=3)], env_id="Hopper-v5",
                       ref_min_score=0.0, ref_max_score=1.0, description="d", algorithm_name="a")
    wide = make_episode(5, obs_dim=3, act_dim=1)
    wide["actions"] = wide["actions"] * 3.0
    with pytest.raises(DatasetError, match=r"outside the recorded action space \[-2, 2\]"):
        datasets.write("test/pendulum/wide-v0", [wide], env_id="Pendulum-v1", ref_min_score=0.0, ref_max_score=1.0,
                       description="d", algorithm_name="a")
    assert datasets.local_dataset_ids() == []
