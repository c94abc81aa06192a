"""The training loop: exact resume after SIGKILL, finished runs not rerun, the NaN guard."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from _support import TINY_DATASET

from hybridrl.control.evaluate import EvalResult
from hybridrl.core.buffers import TransitionBuffer
from hybridrl.core.checkpoint import load_checkpoint
from hybridrl.core.config import RunConfig
from hybridrl.core.plan import DataPlan
from hybridrl.core.session import DivergenceError, RunDirectoryError, Session
from hybridrl.runners import train

TINY_CQL = ["--set", "hidden=16,16", "--set", "num_sampled_actions=2", "--set", "batch_size=32"]


def train_command(out, steps):
    return [sys.executable, "-m", "hybridrl.cli", "train", "cql", "--dataset", TINY_DATASET, "--steps", str(steps),
            "--checkpoint-every", "25", "--log-every", "25", "--eval-every", "0", "--eval-episodes", "2",
            "--device", "cpu", "--no-progress", "--out", str(out), *TINY_CQL]


def metrics_without_timing(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_to_identical_parameters(store, tmp_path):
    env = {**os.environ, "MINARI_DATASETS_PATH": str(store), "OMP_NUM_THREADS": "1"}
    steps = 600
    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_command(killed, steps), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    # no wall-clock deadline (a slow machine is not a failure): fail only when the process ends first
    while not (killed / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    killed_at = load_checkpoint(killed / "checkpoint.pt")["step"]
    assert 0 < killed_at < steps

    subprocess.run(train_command(killed, steps), env=env, check=True, capture_output=True)
    uninterrupted = tmp_path / "uninterrupted"
    subprocess.run(train_command(uninterrupted, steps), env=env, check=True, capture_output=True)

    a = load_checkpoint(killed / "checkpoint.pt")["algo"]
    b = load_checkpoint(uninterrupted / "checkpoint.pt")["algo"]
    for part in ("actor", "critic", "target_critic"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    assert metrics_without_timing(killed / "metrics.jsonl") == metrics_without_timing(uninterrupted / "metrics.jsonl")
    assert json.loads((killed / "results.json").read_text()) == json.loads((uninterrupted / "results.json").read_text())


class ExplodingAlgo:
    """Fits the Algorithm protocol; its loss turns NaN at a chosen step."""

    def __init__(self, nan_at: int):
        self.config = None
        self.weight = torch.zeros(2)
        self.steps = 0
        self.nan_at = nan_at

    def update(self, batch):
        self.steps += 1
        if self.steps >= self.nan_at:
            self.weight = self.weight + float("nan")
        return {"loss": self.weight.sum()}

    def act(self, obs, *, deterministic=True):
        return torch.zeros(obs.shape[0], 2)

    def state_dict(self):
        return {"weight": self.weight.clone(), "steps": self.steps}

    def load_state_dict(self, state):
        self.weight, self.steps = state["weight"].clone(), state["steps"]


def tiny_buffer():
    rng = np.random.default_rng(0)
    data = {"observations": rng.normal(size=(8, 3)), "actions": np.zeros((8, 2)), "rewards": np.zeros(8),
            "next_observations": rng.normal(size=(8, 3)), "terminals": np.zeros(8)}
    return TransitionBuffer(3, 2, offline=data)


def fake_evaluate(act):
    return EvalResult(returns=[1.0], lengths=[1], mean=1.0, std=0.0, normalized_mean=None, normalized_std=None)


def train_offline(algo, buffer, run, out_dir, *, batch_size, config):
    """The RL loop on an offline plan, with an evaluation that needs no env."""
    session = Session(out_dir, config, total=run.steps, progress=False)
    return train(algo, DataPlan("offline"), run, session, buffer=buffer, batch_size=batch_size,
                 evaluate_fn=fake_evaluate)


def test_nan_guard_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    run = RunConfig(steps=100, log_every=5, checkpoint_every=10, eval_every=0, progress=False)
    expected = r"diverged at step 25 \(loss is NaN/inf\).*last good checkpoint \(step 20\)"
    with pytest.raises(DivergenceError, match=expected):
        train_offline(ExplodingAlgo(nan_at=23), tiny_buffer(), run, tmp_path, batch_size=4, config={"a": 1})
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 20 and torch.isfinite(state["algo"]["weight"]).all()
    assert not (tmp_path / "results.json").exists()


def test_finished_run_is_not_rerun_and_other_runs_are_refused(tmp_path):
    run = RunConfig(steps=10, log_every=5, checkpoint_every=5, eval_every=0, progress=False)
    algo = ExplodingAlgo(nan_at=10**9)
    train_offline(algo, tiny_buffer(), run, tmp_path, batch_size=4, config={"a": 1})
    assert algo.steps == 10
    again = ExplodingAlgo(nan_at=10**9)
    train_offline(again, tiny_buffer(), run, tmp_path, batch_size=4, config={"a": 1})
    assert again.steps == 0
    with pytest.raises(RunDirectoryError, match="holds another run"):
        train_offline(again, tiny_buffer(), run, tmp_path, batch_size=4, config={"a": 2})


def test_metrics_logger_truncates_after_the_checkpoint_and_skips_a_torn_line(tmp_path):
    from hybridrl.core.logging import MetricsLogger, read_metrics

    path = tmp_path / "metrics.jsonl"
    with MetricsLogger(path, step_key="iteration") as logger:
        for i in range(3):
            logger.log(i, {"loss": float(i)})
    with path.open("a") as f:
        f.write('{"iteration": 3, "lo')  # killed mid-write
    with MetricsLogger(path, truncate_after=1, step_key="iteration") as logger:
        logger.log(2, {"loss": 20.0})
    assert read_metrics(path) == [{"iteration": 0, "loss": 0.0}, {"iteration": 1, "loss": 1.0},
                                  {"iteration": 2, "loss": 20.0}]
