"""Evaluation in the env a dataset records: its time limit, its kwargs, its action bounds."""

import json

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

from hybridrl.control import datasets
from hybridrl.control.envs import EnvSpec, from_env_action, make_env, to_env_action
from hybridrl.control.evaluate import evaluate

PENDULUM = "test/pendulum/short-v0"


def pendulum_episodes(limit: int, episodes: int, *, seed: int = 0, scale: float = 1.0) -> list[dict]:
    """Uniform-random Pendulum-v1 rollouts (raw actions in [-2, 2] times ``scale``); episode i reset with seed + i."""
    env = gym.make("Pendulum-v1", max_episode_steps=limit)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        done = False
        while not done:
            action = rng.uniform(-2.0, 2.0, size=1).astype(np.float32) * scale
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terms.append(terminated)
            truncs.append(truncated)
            done = terminated or truncated
        out.append({"observations": np.asarray(observations), "actions": np.asarray(actions),
                    "rewards": np.asarray(rewards), "terminations": np.asarray(terms),
                    "truncations": np.asarray(truncs)})
    env.close()
    return out


def write_with_minari(dataset_id: str, episodes: list[dict], env, **spaces) -> None:
    """Write through Minari itself (no hybridrl validation), recording ``env``'s spec."""
    buffers = [EpisodeBuffer(id=i, observations=ep["observations"], actions=ep["actions"],
                             rewards=list(ep["rewards"]), terminations=list(ep["terminations"]),
                             truncations=list(ep["truncations"]), infos={}) for i, ep in enumerate(episodes)]
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env, eval_env=env, algorithm_name="random",
                                       ref_min_score=-1500.0, ref_max_score=0.0, description="test data",
                                       author="t", author_email="t@t", code_permalink="t", **spaces)


@pytest.fixture
def pendulum(tmp_path, monkeypatch):
    """A store holding PENDULUM: 3 episodes of Pendulum-v1 collected under a 30-step time limit."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    episodes = pendulum_episodes(30, 3)
    write_with_minari(PENDULUM, episodes, gym.make("Pendulum-v1", max_episode_steps=30))
    return episodes


def test_env_spec_round_trips_through_json():
    spec = EnvSpec("Pendulum-v1", {"g": 9.0}, 30)
    assert EnvSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert hash(spec) == hash(EnvSpec("Pendulum-v1", {"g": 9.0}, 30))


def test_make_env_builds_the_spec_and_still_takes_ids():
    env = make_env(EnvSpec("Pendulum-v1", {"g": 5.0}, 7))
    assert env.spec.max_episode_steps == 7 and env.unwrapped.g == 5.0
    env.close()
    env = make_env("Pendulum-v1")
    assert env.spec.max_episode_steps == 200
    env.close()


@pytest.mark.filterwarnings("ignore")
def test_recorded_time_limit_sets_the_evaluation_episode_length(pendulum):
    data = datasets.load(PENDULUM)
    assert data.env_spec == EnvSpec("Pendulum-v1", {}, 30)
    assert data.eval_env_spec == data.env_spec
    result = evaluate(lambda obs: np.zeros((len(obs), 1)), data.eval_env_spec, episodes=2)
    assert result.lengths == [30, 30]
    # An id alone still means the registered default limit.
    assert evaluate(lambda obs: np.zeros((len(obs), 1)), "Pendulum-v1", episodes=1).lengths == [200]


@pytest.mark.filterwarnings("ignore")
def test_write_records_the_spec_it_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    spec = EnvSpec("Pendulum-v1", {"g": 9.0}, 30)
    datasets.write("test/pendulum/spec-v0", pendulum_episodes(30, 2), env_id=spec, ref_min_score=-1.0,
                   ref_max_score=0.0, description="d", algorithm_name="a")
    data = datasets.load("test/pendulum/spec-v0")
    assert data.env_spec == spec and data.eval_env_spec == spec and data.env_id == "Pendulum-v1"


@pytest.mark.filterwarnings("ignore")
def test_pendulum_actions_load_scaled_and_d4rl_view_keeps_them_raw(pendulum):
    data = datasets.load(PENDULUM)
    raw = np.concatenate([ep["actions"] for ep in pendulum]).astype(np.float32)
    assert data.action_low.dtype == np.float32 and data.action_high.dtype == np.float32
    np.testing.assert_array_equal(data.action_low, [-2.0])
    np.testing.assert_array_equal(data.action_high, [2.0])
    assert np.abs(data.actions).max() <= 1.0 and np.abs(data.actions).max() > 0.9
    np.testing.assert_allclose(data.actions, raw / 2.0, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(data.as_d4rl()["actions"], data.actions)
    # D4RL's dictionary view holds the env's own actions, exactly as stored.
    np.testing.assert_array_equal(datasets.qlearning_dataset(PENDULUM)["actions"], raw)


@pytest.mark.filterwarnings("ignore")
def test_a_policy_replaying_scaled_dataset_actions_executes_the_raw_ones(pendulum):
    data = datasets.load(PENDULUM)
    first = pendulum[0]
    steps = len(first["rewards"])
    scaled = data.actions[:steps]
    t = [0]

    def replay(obs):
        action = scaled[min(t[0], steps - 1)][None]
        t[0] += 1
        return action

    # Episode 0 of the data was reset with seed 0, as evaluation resets its episode 0.
    result = evaluate(replay, data.eval_env_spec, episodes=1, seed=0)
    assert result.lengths == [steps]
    assert result.returns[0] == pytest.approx(float(np.sum(first["rewards"])), rel=1e-4)


def test_action_maps_are_inverse_and_exact_on_unit_bounds():
    low, high = np.array([-2.0, -1.0, 0.0], np.float32), np.array([2.0, 1.0, 0.5], np.float32)
    raw = np.array([[1.5, -0.3, 0.1], [-2.0, 1.0, 0.5]], np.float32)
    scaled = from_env_action(raw, low, high)
    np.testing.assert_allclose(scaled, [[0.75, -0.3, -0.6], [-1.0, 1.0, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(to_env_action(scaled, low, high), raw, rtol=1e-6)
    # Dimensions already in [-1, 1] pass through bit for bit.
    assert scaled[0, 1] == raw[0, 1] and to_env_action(scaled, low, high)[0, 1] == raw[0, 1]


@pytest.mark.filterwarnings("ignore")
def test_actions_outside_the_recorded_space_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    write_with_minari("test/pendulum/wide-v0", pendulum_episodes(10, 2, scale=1.5),
                      gym.make("Pendulum-v1", max_episode_steps=10))
    with pytest.raises(datasets.DatasetError, match=r"test/pendulum/wide-v0.*recorded action space") as info:
        datasets.load("test/pendulum/wide-v0")
    assert "\n" not in str(info.value)


@pytest.mark.filterwarnings("ignore")
def test_observation_size_must_match_the_recorded_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    episodes = pendulum_episodes(10, 1)
    episodes[0]["observations"] = np.concatenate([episodes[0]["observations"]] * 2, axis=1)
    wide = gym.spaces.Box(-np.inf, np.inf, (6,), np.float32)
    write_with_minari("test/pendulum/obs-v0", episodes, gym.make("Pendulum-v1"), observation_space=wide)
    with pytest.raises(datasets.DatasetError, match=r"test/pendulum/obs-v0.*6 values.*Pendulum-v1.*3") as info:
        datasets.load("test/pendulum/obs-v0")
    assert "\n" not in str(info.value)


@pytest.mark.filterwarnings("ignore")
def test_observation_check_is_skipped_for_an_env_gymnasium_does_not_know(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    # Pendulum's class under an id Gymnasium has not registered: nothing cheap to build and compare.
    spec = gym.envs.registration.EnvSpec(
        "Elsewhere-v0", entry_point="gymnasium.envs.classic_control.pendulum:PendulumEnv", max_episode_steps=10)
    episodes = pendulum_episodes(10, 1)
    episodes[0]["observations"] = np.concatenate([episodes[0]["observations"]] * 2, axis=1)
    wide = gym.spaces.Box(-np.inf, np.inf, (6,), np.float32)
    write_with_minari("test/elsewhere/x-v0", episodes, spec, observation_space=wide)
    data = datasets.load("test/elsewhere/x-v0")
    assert data.env_spec == EnvSpec("Elsewhere-v0", {}, 10) and data.obs_dim == 6
    assert np.abs(data.actions).max() <= 1.0


def test_a_training_run_evaluates_in_the_recorded_env_with_its_time_limit(pendulum, tmp_path):
    from hybridrl.core.config import RunConfig
    from hybridrl.runners import load_trained, run

    config = RunConfig(steps=4, eval_every=0, eval_episodes=2, log_every=2, checkpoint_every=2, progress=False,
                       device="cpu")
    result = run("bc", config, dataset=PENDULUM, out_dir=tmp_path / "bc", overrides={"hidden": "8", "batch_size": "8"})
    assert result["eval"]["lengths"] == [30, 30]  # Pendulum-v1's own limit is 200
    _, record = load_trained(tmp_path / "bc")
    assert record["eval_env"] == EnvSpec("Pendulum-v1", {}, 30)
    assert record["action_low"] == [-2.0] and record["action_high"] == [2.0]


def test_a_hybrid_run_trains_in_the_recorded_env_by_default(pendulum, tmp_path):
    from hybridrl.core.config import RunConfig
    from hybridrl.runners import run

    config = RunConfig(steps=70, eval_every=0, eval_episodes=1, log_every=10, checkpoint_every=50, progress=False,
                       device="cpu", learning_starts=10)
    result = run("sac", config, dataset=PENDULUM, out_dir=tmp_path / "sac",
                 overrides={"hidden": "8", "batch_size": "8"})
    assert result["env"] == "Pendulum-v1" and len(result["train_episode_returns"]) == 2  # 70 steps: 2 episodes of 30
    record = json.loads((tmp_path / "sac" / "config.json").read_text())
    assert record["plan"] == {"source": "hybrid", "offline_fraction": 0.5, "updates_per_step": 1}
    assert record["env"]["max_episode_steps"] == 30
