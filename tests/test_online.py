"""The online loop (SAC): exact resume after a crash, episode seeding, CLI wiring."""

import json

import pytest
import torch

from hybridrl.core.checkpoint import load_checkpoint
from hybridrl.core.config import RunConfig
from hybridrl.runners import run

TINY_SAC = {"hidden": "16,16", "batch_size": "32"}


def run_online(method, env, run_config, **kwargs):
    return run(method, run_config, env=env, **kwargs)


class Crash(Exception):
    pass


def test_online_run_resumes_after_a_crash_to_identical_parameters(tmp_path):
    run = RunConfig(steps=300, seed=3, device="cpu", eval_every=60, eval_episodes=2, log_every=50,
                    checkpoint_every=100, progress=False, learning_starts=50)
    run_online("sac", "hopper", run, out_dir=tmp_path / "straight", overrides=TINY_SAC)

    def crash_after_first_checkpoint(step, algo, buffer):
        if (tmp_path / "crashed" / "checkpoint.pt").exists():
            raise Crash

    with pytest.raises(Crash):
        run_online("sac", "hopper", run, out_dir=tmp_path / "crashed", overrides=TINY_SAC,
                   on_eval=crash_after_first_checkpoint)
    assert 100 <= load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["step"] < 300
    run_online("sac", "hopper", run, out_dir=tmp_path / "crashed", overrides=TINY_SAC)

    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")
    for part in ("actor", "critic", "target_critic"):
        for key in a["algo"][part]:
            assert torch.equal(a["algo"][part][key], b["algo"][part][key]), f"{part}.{key}"
    ra = json.loads((tmp_path / "straight" / "results.json").read_text())
    rb = json.loads((tmp_path / "crashed" / "results.json").read_text())
    assert ra == rb


def test_online_method_refuses_a_dataset_and_offline_refuses_an_env(tmp_path):
    from typer.testing import CliRunner

    from hybridrl.cli import app

    result = CliRunner().invoke(app, ["train", "sac"])
    assert result.exit_code == 2 and "online method" in result.stderr
    result = CliRunner().invoke(app, ["train", "cql", "--env", "hopper"])
    assert result.exit_code == 2 and "offline method" in result.stderr
    result = CliRunner().invoke(app, ["train", "sac", "--env", "pong"])
    assert result.exit_code == 2 and "unknown task 'pong'" in result.stderr


def test_eval_of_an_online_run_uses_the_env_it_trained_in(tmp_path):
    from typer.testing import CliRunner

    from hybridrl.cli import app

    config = RunConfig(steps=60, seed=0, device="cpu", eval_every=0, eval_episodes=1, log_every=20,
                       checkpoint_every=50, progress=False, learning_starts=20)
    run_online("sac", "hopper", config, out_dir=tmp_path / "sac", overrides=TINY_SAC)
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "sac"), "--episodes", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("sac (") and "normalized" in result.stdout
