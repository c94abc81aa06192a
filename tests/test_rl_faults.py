"""The RL loop under faults: a second process, corrupt run files, a kill after the last checkpoint,
Ctrl-C, a kill during a checkpoint write, and a hybrid run killed and resumed to identical parameters."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from _support import TINY_DATASET
from typer.testing import CliRunner

from hybridrl.cli import app
from hybridrl.core.checkpoint import load_checkpoint
from hybridrl.core.config import RunConfig
from hybridrl.core.session import RunDirectoryError, Session
from hybridrl.runners import run

TINY_BC = {"hidden": "8,8", "batch_size": "16"}
TINY_SAC = {"hidden": "16,16", "batch_size": "32"}


class Crash(Exception):
    pass


def bc_config(steps=20):
    return RunConfig(steps=steps, eval_every=0, eval_episodes=2, log_every=5, checkpoint_every=5, progress=False,
                     device="cpu")


def one_line(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_run_killed_after_its_last_checkpoint_redoes_only_what_is_left(store, tmp_path):
    straight = run("bc", bc_config(), dataset=TINY_DATASET, out_dir=tmp_path / "straight", overrides=TINY_BC)

    def die_in_the_final_evaluation(step, algo, buffer):
        if step == 20:
            raise Crash

    with pytest.raises(Crash):
        run("bc", bc_config(), dataset=TINY_DATASET, out_dir=tmp_path / "killed", overrides=TINY_BC,
            on_eval=die_in_the_final_evaluation)
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["step"] == 20
    assert not (tmp_path / "killed" / "results.json").exists()
    resumed = run("bc", bc_config(), dataset=TINY_DATASET, out_dir=tmp_path / "killed", overrides=TINY_BC)
    assert resumed["eval"] is not None and resumed["eval"] == straight["eval"]
    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert sum("eval/return" in row for row in rows) == 1  # the final evaluation is logged once


def test_a_second_process_on_the_same_run_directory_is_refused_with_one_line(store, tmp_path):
    out = tmp_path / "busy"
    holder = Session(out, {"held": True}, total=1, progress=False)
    try:
        result = CliRunner().invoke(app, ["train", "bc", "--dataset", TINY_DATASET, "--out", str(out), "--steps", "5"])
        assert result.exit_code == 2
        assert "is in use by process" in one_line(result)
    finally:
        holder.release()


@pytest.mark.parametrize("name", ["config.json", "results.json"])
def test_a_corrupt_run_file_is_named_as_such_and_the_checkpoint_is_kept(store, tmp_path, name):
    out = tmp_path / "run"
    run("bc", bc_config(), dataset=TINY_DATASET, out_dir=out, overrides=TINY_BC)
    (out / name).write_text('{"algo": "bc", "trunc')
    args = ["train", "bc", "--dataset", TINY_DATASET, "--out", str(out), "--steps", "20", "--eval-every", "0",
            "--eval-episodes", "2", "--log-every", "5", "--checkpoint-every", "5", "--device", "cpu",
            "--hidden", "8,8", "--batch-size", "16", "--no-progress"]
    result = CliRunner().invoke(app, args)
    line = one_line(result)
    assert result.exit_code == 2 and f"{name} is corrupt" in line and "holds another run" not in line
    assert (out / "checkpoint.pt").exists()
    (out / name).unlink()  # what the message says to do
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())["eval"] is not None


def test_temporary_files_of_a_killed_checkpoint_write_are_removed_on_the_next_start(store, tmp_path):
    out = tmp_path / "run"
    run("bc", bc_config(10), dataset=TINY_DATASET, out_dir=out, overrides=TINY_BC)
    (out / "results.json").unlink()
    torn = out / ".checkpoint.pt.abc123.tmp"
    torn.write_bytes(b"half a checkpoint")
    run("bc", bc_config(10), dataset=TINY_DATASET, out_dir=out, overrides=TINY_BC)
    assert not torn.exists()


def cli(*args):
    return [sys.executable, "-m", "hybridrl.cli", *map(str, args)]


def wait_for(path, proc):
    # no wall-clock deadline (a slow machine is not a failure): fail only when the process ends first
    while not path.exists():
        assert proc.poll() is None, f"{path} never appeared: " + proc.stderr.read().decode()
        time.sleep(0.005)


@pytest.mark.slow
def test_ctrl_c_prints_one_line_saying_what_is_saved_and_how_to_resume(store, tmp_path):
    env = {**os.environ, "MINARI_DATASETS_PATH": str(store), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    # A shell that runs the tests in the background (`make test &`) starts them with SIGINT ignored, which
    # the child would inherit (and Python then installs no KeyboardInterrupt handler): give it Ctrl-C back.
    proc = subprocess.Popen(cli("train", "bc", "--dataset", TINY_DATASET, "--steps", 10_000_000, "--out", out,
                                "--checkpoint-every", 50, "--log-every", 50, "--device", "cpu", "--no-progress",
                                "--hidden", "8,8", "--batch-size", 16),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(out / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)  # a bound, not a speed goal: a loaded CI machine is slow
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1, stderr.decode()
    assert "interrupted" in lines[0] and "is saved" in lines[0] and "rerun the same command" in lines[0]


@pytest.mark.slow
def test_hybrid_sac_killed_then_resumed_ends_with_the_parameters_of_an_uninterrupted_run(store, tmp_path):
    """Symmetric sampling (half dataset rows, half online rows) through `hybridrl train`, SIGKILL, rerun."""
    env = {**os.environ, "MINARI_DATASETS_PATH": str(store), "OMP_NUM_THREADS": "1"}

    def command(out):
        return cli("train", "sac", "--dataset", TINY_DATASET, "--env", "hopper", "--steps", 400, "--out", out,
                   "--learning-starts", 50, "--checkpoint-every", 50, "--log-every", 50, "--eval-every", 0,
                   "--eval-episodes", 2, "--device", "cpu", "--no-progress", "--hidden", "16,16", "--batch-size", 32)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(killed / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    assert 0 < load_checkpoint(killed / "checkpoint.pt")["step"] < 400
    subprocess.run(command(killed), env=env, check=True, capture_output=True)
    straight = tmp_path / "straight"
    subprocess.run(command(straight), env=env, check=True, capture_output=True)

    record = json.loads((killed / "config.json").read_text())
    assert record["plan"] == {"source": "hybrid", "offline_fraction": 0.5, "updates_per_step": 1}
    a = load_checkpoint(killed / "checkpoint.pt")
    b = load_checkpoint(straight / "checkpoint.pt")
    for part in ("actor", "critic", "target_critic"):
        for key in a["algo"][part]:
            assert torch.equal(a["algo"][part][key], b["algo"][part][key]), f"{part}.{key}"
    assert torch.equal(a["buffer"]["online"]["obs"], b["buffer"]["online"]["obs"])

    def rows(path):
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
                for line in (path / "metrics.jsonl").read_text().splitlines()]

    assert rows(killed) == rows(straight)
    assert json.loads((killed / "results.json").read_text()) == json.loads((straight / "results.json").read_text())


def test_a_different_config_is_refused_with_the_keys_that_differ(store, tmp_path):
    out = tmp_path / "run"
    run("bc", bc_config(10), dataset=TINY_DATASET, out_dir=out, overrides=TINY_BC)
    with pytest.raises(RunDirectoryError, match=r"holds another run \(it differs in algo_config.lr\)"):
        run("bc", bc_config(10), dataset=TINY_DATASET, out_dir=out, overrides={**TINY_BC, "lr": "0.5"})
