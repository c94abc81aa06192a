"""The conservatism measurement: returns-to-go and truncation on hand-made data, the evaluation's start
states and discounted returns, what the RL loop logs and writes, and the report's table and figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _support import TINY_DATASET, make_episode

from hybridrl.control.conservatism import (
    Conservatism,
    dataset_sample,
    eligible_states,
    has_q_values,
    returns_to_go,
)
from hybridrl.control.datasets import episodes_to_transitions
from hybridrl.control.evaluate import EvalResult, evaluate
from hybridrl.core.buffers import TransitionBuffer
from hybridrl.core.config import RunConfig
from hybridrl.core.plan import DataPlan
from hybridrl.core.session import Session
from hybridrl.runners import train

MEASURED = ("eval/q_start", "eval/discounted_return", "eval/q_start_gap", "eval/q_data", "eval/rtg_data",
            "eval/q_data_gap")


def naive_returns_to_go(rewards, lengths, gamma):
    out, start = [], 0
    for length in lengths:
        for t in range(start, start + length):
            out.append(sum(gamma ** (k - t) * rewards[k] for k in range(t, start + length)))
        start += length
    return np.array(out)


def test_returns_to_go_stop_at_each_episode_end():
    rng = np.random.default_rng(0)
    lengths = [1, 5, 37, 2, 16]
    rewards = rng.normal(size=sum(lengths))
    got = returns_to_go(rewards, np.array(lengths), 0.9)
    np.testing.assert_allclose(got, naive_returns_to_go(rewards, lengths, 0.9), rtol=1e-12, atol=1e-12)
    # By hand on the 2-step episode (rewards r, r'): r + 0.9 r' and r'.
    r = rewards[43:45]
    np.testing.assert_allclose(got[43:45], [r[0] + 0.9 * r[1], r[1]])
    with pytest.raises(ValueError, match="episode lengths"):
        returns_to_go(rewards, np.array([3, 3]), 0.9)


def test_eligible_states_keep_terminated_episodes_and_the_far_part_of_truncated_ones():
    # A terminated (3 steps), B truncated by a time limit (5), C ending with neither flag (4).
    terminals = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=np.float32)
    lengths = np.array([3, 5, 4])
    # gamma 0.5, bound 0.2: the tail k steps past a row weighs 0.5^k <= 0.2 from k = 3 on, the last
    # recorded row being k = 1 from the cut.
    mask = eligible_states(terminals, lengths, gamma=0.5, tail_bound=0.2)
    expected = [1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0]  # A | B | C
    np.testing.assert_array_equal(mask, np.array(expected, dtype=bool))
    assert not eligible_states(terminals, lengths, gamma=1.0)[3:].any()  # an undiscounted tail never fades


def test_eligible_truncated_states_miss_at_most_the_bound_of_the_tail():
    """Constant reward 1, cut at 200 steps: an eligible row's return-to-go is within tail_bound / (1 - gamma)
    of the uncut value 1 / (1 - gamma); the rows left out are not."""
    gamma, bound, length = 0.9, 0.01, 200
    mask = eligible_states(np.zeros(length), np.array([length]), gamma, bound)
    rtg = returns_to_go(np.ones(length), np.array([length]), gamma)
    error = 1 / (1 - gamma) - rtg
    assert mask.sum() == length - 43  # 0.9^44 <= 0.01 < 0.9^43
    assert (error[mask] <= bound / (1 - gamma) + 1e-12).all()
    assert (error[~mask] > bound / (1 - gamma)).all()


def hand_made_data():
    """Three Minari-style episodes: terminated (4 steps), truncated (6), terminated (3)."""
    return episodes_to_transitions([make_episode(4, seed=1), make_episode(6, terminated=False, seed=2),
                                    make_episode(3, seed=3)])


def test_dataset_sample_draws_eligible_rows_with_their_returns_to_go():
    data = hand_made_data()
    gamma = 0.5
    rtg = naive_returns_to_go(data.rewards.astype(np.float64), [4, 6, 3], gamma)
    every = dataset_sample(data, gamma, samples=100, tail_bound=0.2)
    # 0.5^k <= 0.2 from k = 3: rows 0..3 of the truncated episode qualify, its last two do not.
    assert every.eligible == 4 + 4 + 3 and len(every.rtg) == 11
    np.testing.assert_allclose(every.rtg, np.delete(rtg, [8, 9]), rtol=1e-6)
    np.testing.assert_array_equal(every.obs, np.delete(data.observations, [8, 9], axis=0))
    np.testing.assert_array_equal(every.action, np.delete(data.actions, [8, 9], axis=0))
    some = dataset_sample(data, gamma, samples=5, seed=3, tail_bound=0.2)
    again = dataset_sample(data, gamma, samples=5, seed=3, tail_bound=0.2)
    assert len(some.rtg) == 5 and np.array_equal(some.obs, again.obs) and np.array_equal(some.rtg, again.rtg)
    # Only truncated episodes, all too short for the bound: nothing to compare with.
    short = episodes_to_transitions([make_episode(5, terminated=False, seed=s) for s in range(3)])
    assert dataset_sample(short, 0.99) is None


class LinearQ:
    """A method whose critic is known: Q(s, a) = sum(s) + 2 sum(a), acting a = 0.5."""

    def __init__(self, act_dim: int = 2) -> None:
        self.act_dim = act_dim
        self.weight = torch.zeros(1)
        self.updates = 0

    def act(self, obs, *, deterministic=True):
        return torch.full((obs.shape[0], self.act_dim), 0.5)

    def q_values(self, obs, action):
        return obs.sum(-1) + 2 * action.sum(-1)

    def update(self, batch):
        self.updates += 1
        return {"loss": torch.tensor(0.0)}

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, state):
        self.updates = state["updates"]


class NoQ(LinearQ):
    q_values = None


def eval_result(start_obs, discounted, gamma):
    return EvalResult(returns=[1.0] * len(start_obs), lengths=[1] * len(start_obs), mean=1.0, std=0.0,
                      normalized_mean=None, normalized_std=None, discounted_returns=discounted, gamma=gamma,
                      start_obs=np.asarray(start_obs, dtype=np.float32))


def test_measure_compares_estimates_with_what_was_obtained():
    data = hand_made_data()
    sample = dataset_sample(data, 0.5, samples=100, tail_bound=0.2)
    measure = Conservatism(0.5, sample)
    start = [[1.0, 2.0, 3.0], [0.0, 0.0, -1.0]]  # Q = 6 + 2 and -1 + 2: mean 4.5
    row = measure.measure(LinearQ(), eval_result(start, [3.0, 4.0], 0.5))
    assert row["eval/q_start"] == pytest.approx(4.5) and row["eval/discounted_return"] == pytest.approx(3.5)
    assert row["eval/q_start_gap"] == pytest.approx(1.0)
    q_data = (sample.obs.sum(-1) + 2 * sample.action.sum(-1)).mean()
    assert row["eval/q_data"] == pytest.approx(q_data, rel=1e-5)
    assert row["eval/rtg_data"] == pytest.approx(sample.rtg.mean())
    assert row["eval/q_data_gap"] == pytest.approx(q_data - sample.rtg.mean(), rel=1e-5, abs=1e-5)
    # No discounted returns, or another discount: the start states are left out; no sample: the data.
    assert set(measure.measure(LinearQ(), eval_result(start, None, None))) == set(MEASURED[3:])
    assert set(measure.measure(LinearQ(), eval_result(start, [3.0, 4.0], 0.99))) == set(MEASURED[3:])
    assert set(Conservatism(0.5, None).measure(LinearQ(), eval_result(start, [3.0, 4.0], 0.5))) == set(MEASURED[:3])


def test_only_methods_with_q_values_and_a_discount_are_measured():
    class Config:
        gamma = 0.5

    data = hand_made_data()
    assert has_q_values(LinearQ()) and not has_q_values(NoQ())
    assert Conservatism.for_run(NoQ(), Config(), data, "cpu") is None
    assert Conservatism.for_run(LinearQ(), object(), data, "cpu") is None
    measure = Conservatism.for_run(LinearQ(), Config(), data, "cpu")
    assert measure.gamma == 0.5 and measure.sample is not None
    assert Conservatism.for_run(LinearQ(), Config(), None, "cpu").sample is None


def test_evaluate_returns_start_observations_and_discounted_returns():
    import gymnasium as gym

    def act(obs):
        return np.full((len(obs), 1), 0.25)

    plain = evaluate(act, "Pendulum-v1", episodes=2, seed=5, max_episode_steps=20)
    assert plain.discounted_returns is None and plain.gamma is None
    assert list(plain.to_dict()) == ["returns", "lengths", "mean", "std", "normalized_mean", "normalized_std"]
    result = evaluate(act, "Pendulum-v1", episodes=2, seed=5, max_episode_steps=20, gamma=0.9)
    assert result.returns == plain.returns and result.gamma == 0.9
    for i in range(2):
        env = gym.make("Pendulum-v1", max_episode_steps=20)
        obs, _ = env.reset(seed=5 + i)
        np.testing.assert_array_equal(result.start_obs[i], obs.astype(np.float32))
        rewards = [env.step(np.array([0.5]))[1] for _ in range(20)]  # 0.25 of Pendulum's +-2 bounds
        assert result.discounted_returns[i] == pytest.approx(sum(0.9 ** t * r for t, r in enumerate(rewards)))
    assert json.loads(json.dumps(result.to_dict()))["discounted_returns"] == result.discounted_returns
    assert evaluate(act, "Pendulum-v1", episodes=1, seed=5, max_episode_steps=20,
                    gamma=1.0).discounted_returns == pytest.approx(plain.returns[:1])


def run_loop(algo, out_dir, conservatism):
    rng = np.random.default_rng(0)
    data = {"observations": rng.normal(size=(8, 3)), "actions": np.zeros((8, 2)), "rewards": np.zeros(8),
            "next_observations": rng.normal(size=(8, 3)), "terminals": np.zeros(8)}
    run = RunConfig(steps=10, log_every=5, checkpoint_every=5, eval_every=5, progress=False)
    session = Session(out_dir, {"a": 1}, total=run.steps, progress=False)
    return train(algo, DataPlan("offline"), run, session, buffer=TransitionBuffer(3, 2, offline=data), batch_size=4,
                 evaluate_fn=lambda act: eval_result([[1.0, 1.0, 1.0]], [2.0], 0.5), conservatism=conservatism)


def test_the_loop_logs_the_measurement_beside_the_return_and_writes_the_final_one(tmp_path):
    data = hand_made_data()
    run_loop(LinearQ(), tmp_path / "q", Conservatism(0.5, dataset_sample(data, 0.5, tail_bound=0.2)))
    rows = [json.loads(line) for line in (tmp_path / "q" / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if "eval/return" in row]
    assert [row["step"] for row in evals] == [5, 10]
    assert all(set(MEASURED) <= set(row) for row in evals)
    assert evals[-1]["eval/q_start"] == pytest.approx(3 + 2)
    written = json.loads((tmp_path / "q" / "results.json").read_text())
    assert written["conservatism"] == pytest.approx({key.removeprefix("eval/"): evals[-1][key] for key in MEASURED})
    assert written["eval"]["discounted_returns"] == [2.0]

    run_loop(NoQ(), tmp_path / "plain", None)
    rows = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert not any(key in row for row in rows for key in MEASURED)
    assert "conservatism" not in json.loads((tmp_path / "plain" / "results.json").read_text())


def test_a_cql_run_measures_its_critic_and_a_bc_run_does_not(store, tmp_path, monkeypatch):
    from hybridrl.core.checkpoint import load_checkpoint
    from hybridrl.runners import run

    config = RunConfig(steps=4, eval_every=2, eval_episodes=2, log_every=2, checkpoint_every=2, progress=False,
                       device="cpu")
    tiny = {"hidden": "16,16", "batch_size": "16", "num_sampled_actions": "2"}
    result = run("cql", config, dataset=TINY_DATASET, out_dir=tmp_path / "cql", overrides=tiny)
    assert set(result["conservatism"]) == {key.removeprefix("eval/") for key in MEASURED}
    assert all(np.isfinite(v) for v in result["conservatism"].values())
    assert result["eval"]["gamma"] == 0.99 and len(result["eval"]["discounted_returns"]) == 2
    rows = [json.loads(line) for line in (tmp_path / "cql" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "eval/q_start" in row] == [2, 4]
    # Measuring changes nothing in training: the same run unmeasured ends with the same parameters.
    with monkeypatch.context() as m:
        m.setattr(Conservatism, "for_run", classmethod(lambda cls, *args, **kwargs: None))
        unmeasured = run("cql", config, dataset=TINY_DATASET, out_dir=tmp_path / "cql-plain", overrides=tiny)
    assert unmeasured["eval"]["returns"] == result["eval"]["returns"] and "conservatism" not in unmeasured
    measured_state = load_checkpoint(tmp_path / "cql" / "checkpoint.pt")["algo"]
    plain_state = load_checkpoint(tmp_path / "cql-plain" / "checkpoint.pt")["algo"]
    for name in ("actor", "critic"):
        for key, value in measured_state[name].items():
            assert torch.equal(value, plain_state[name][key]), (name, key)

    plain = run("bc", config, dataset=TINY_DATASET, out_dir=tmp_path / "bc", overrides={"hidden": "8"})
    assert "conservatism" not in plain and "discounted_returns" not in plain["eval"]


def test_report_shows_the_table_and_the_figure_for_q_methods_only(tmp_path):
    pytest.importorskip("matplotlib")
    from hybridrl.bench.report import build_report

    dataset = "hybridrl/hopper/medium-quick-v0"
    for method, seed, final in (("cql", 0, 10.0), ("cql", 1, 20.0), ("bc", 0, None)):
        path = tmp_path / f"{method}-s{seed}"
        path.mkdir()
        spec = {"run_id": path.name, "suite": "t", "kind": "offline", "method": method, "dataset": dataset,
                "seed": seed, "steps": 100, "overrides": {}}
        scores = {"kind": "offline", "method": method, "dataset": dataset, "seed": seed, "metric": "normalized_score",
                  "score": 50.0, "wall_s": 1.0, "return_mean": 500.0, "return_std": 1.0, "normalized_score": 50.0,
                  "normalized_std": 1.0}
        metrics = [{"step": step, "eval/normalized_score": 50.0, "eval/return": 500.0} for step in (50, 100)]
        if final is not None:
            for row in metrics:
                q = final * row["step"] / 100
                row.update({"eval/q_start": q, "eval/discounted_return": 8.0, "eval/q_start_gap": q - 8.0,
                            "eval/q_data": q / 2, "eval/rtg_data": 4.0, "eval/q_data_gap": q / 2 - 4.0})
        (path / "spec.json").write_text(json.dumps(spec))
        (path / "scores.json").write_text(json.dumps(scores))
        (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    report = build_report(tmp_path)
    text = report.report_md.read_text()
    # Final evaluation, mean ± std over the two seeds: Q(s0) 15 ± 5, gap 7 ± 5; Q on data 7.5 ± 2.5.
    assert f"| cql | {dataset} | 15 ± 5 | 8 ± 0 | 7 ± 5 | 7.5 ± 2.5 | 4 ± 0 | 3.5 ± 2.5 | 2 |" in text
    assert "| bc |" not in text.split("### Conservatism")[1].split("\n\n")[2]
    rows = (tmp_path / "report" / "conservatism.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"cql,{dataset},15,5,8,0,7,5,7.5,2.5,4,0,3.5,2.5,2")
    assert (tmp_path / "report" / "plots" / "conservatism_hybridrl_hopper_medium-quick-v0.png").is_file()
    assert "conservatism_hybridrl_hopper_medium-quick-v0.png" in text
