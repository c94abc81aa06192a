"""The CLI: one-line errors with exit code 2, a tiny end-to-end run, the synthetic task."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hybridrl.cli.pref import app

runner = CliRunner()


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory, text_rows):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in text_rows))
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_unknown_divergence_is_one_line_and_exit_2(tiny_lm, pairs_file):
    result = invoke(
        "train", "fdpo", "--model", tiny_lm[0], "--dataset", pairs_file, "--divergence", "hellinger"
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown divergence 'hellinger'" in lines[0] and "js_divergence" in lines[0]


def test_unknown_method_and_loss_type(tiny_lm, pairs_file):
    result = invoke("train", "ppo", "--model", tiny_lm[0], "--dataset", pairs_file)
    assert result.exit_code == 2 and "unknown method 'ppo'" in result.stderr and "fdpo" in result.stderr
    result = invoke("train", "dpo", "--model", tiny_lm[0], "--dataset", pairs_file, "--loss-type", "kto")
    assert result.exit_code == 2 and "unknown loss_type 'kto'" in result.stderr


def test_missing_column_and_missing_dataset(tiny_lm, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "chosen": "a", "rejected": "b"}) + "\n")
    result = invoke(
        "train",
        "dpo",
        "--model",
        tiny_lm[0],
        "--dataset",
        bad,
        "--steps",
        1,
        "--out",
        tmp_path / "r",
        "--no-progress",
    )
    assert result.exit_code == 0, result.output  # no prompt column: the prompt is implicit (empty here)
    bad.write_text(json.dumps({"prompt": "q", "good": "a", "rejected": "b"}) + "\n")
    result = invoke("train", "dpo", "--model", tiny_lm[0], "--dataset", bad)
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "no 'chosen' column" in result.stderr
    result = invoke("train", "dpo", "--model", tiny_lm[0], "--dataset", tmp_path / "nowhere.jsonl")
    assert result.exit_code == 2 and result.stderr.startswith("error: cannot load dataset")


def test_all_rows_bad_is_a_clear_error(tiny_lm, tmp_path):
    bad = tmp_path / "empty.jsonl"
    bad.write_text(json.dumps({"prompt": "write :", "chosen": " ", "rejected": "b"}) + "\n")
    result = invoke("train", "dpo", "--model", tiny_lm[0], "--dataset", bad, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "dropped 1 empty completion" in result.stderr and "no preference pairs" in result.stderr


def test_train_end_to_end(tiny_lm, pairs_file, tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "train",
        "fdpo",
        "--model",
        tiny_lm[0],
        "--dataset",
        pairs_file,
        "--divergence",
        "js",
        "--out",
        out,
        "--steps",
        2,
        "--batch-size",
        4,
        "--lr",
        1e-3,
        "--log-every",
        1,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert "fdpo: 2 steps" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["loss"]["divergence"] == "js_divergence" and config["train"]["steps"] == 2
    assert (out / "model" / "model.safetensors").exists()


def train_args(tiny_lm, pairs_file, out, *extra):
    return ("train", "dpo", "--model", tiny_lm[0], "--dataset", pairs_file, "--out", out, "--steps", 6,
            "--batch-size", 4, "--lr", 1e-3, "--log-every", 1, "--save-every", 2, "--device", "cpu",
            "--no-progress", *extra)


def one_line(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("data: ")]
    assert len(lines) == 1, lines
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_nan_is_one_line_exit_1_and_the_checkpoint_is_kept(tiny_lm, pairs_file, tmp_path, monkeypatch):
    import dataclasses

    import torch

    from hybridrl.preference import trainer

    real_loss, calls = trainer.preference_loss, []

    def nan_from_the_fourth_step(pair, config):
        out = real_loss(pair, config)
        calls.append(1)
        return out if len(calls) < 4 else dataclasses.replace(out, loss=out.loss * float("nan"))

    monkeypatch.setattr(trainer, "preference_loss", nan_from_the_fourth_step)
    out = tmp_path / "run"
    one_line(invoke(*train_args(tiny_lm, pairs_file, out)), 1, "training diverged at step 4",
             "last good checkpoint (step 2) is kept")
    kept = torch.load(out / "checkpoint.pt", weights_only=False)
    assert kept["step"] == 2 and all(torch.isfinite(v).all() for v in kept["model"].values())
    assert not (out / "results.json").exists()


def test_rerun_with_another_learning_rate_is_refused(tiny_lm, pairs_file, tmp_path):
    out = tmp_path / "run"
    assert invoke(*train_args(tiny_lm, pairs_file, out)).exit_code == 0
    again = invoke(*train_args(tiny_lm, pairs_file, out))
    assert again.exit_code == 0 and "dpo: 6 steps, loss=" in again.stdout  # finished: its metrics come back
    args = list(train_args(tiny_lm, pairs_file, out))
    args[args.index("--lr") + 1] = 0.5
    one_line(invoke(*args), 2, "holds another run", "train.learning_rate")


def test_ctrl_c_is_one_line_exit_130_and_a_rerun_resumes(tiny_lm, pairs_file, tmp_path, monkeypatch):
    from hybridrl.preference.trainer import PairwiseTrainer

    real_step = PairwiseTrainer.train_step

    def step_then_ctrl_c(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(PairwiseTrainer, "train_step", step_then_ctrl_c)
    out = tmp_path / "run"
    try:
        result = invoke(*train_args(tiny_lm, pairs_file, out))
    except KeyboardInterrupt:  # a bare KeyboardInterrupt would end pytest
        pytest.fail("Ctrl-C escaped the command")
    one_line(result, 130, f"progress up to step 2 is saved in {out}", "rerun the same command to resume")
    monkeypatch.setattr(PairwiseTrainer, "train_step", real_step)
    result = invoke(*train_args(tiny_lm, pairs_file, out))
    assert result.exit_code == 0 and "dpo: 6 steps" in result.stdout


def test_importing_the_cli_does_not_import_transformers():
    code = (
        "import sys, hybridrl, hybridrl.cli.pref, hybridrl.preference.losses; "
        "print('transformers' in sys.modules or 'trl' in sys.modules)"
    )
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )


def test_make_task_small(tmp_path):
    from hybridrl.preference.task import TaskConfig, make_task, read_jsonl

    summary = make_task(
        tmp_path,
        TaskConfig(
            num_test_prompts=8, num_train_prompts=24, sft_steps=5, samples_per_prompt=2, hidden_size=16
        ),
    )
    rows = read_jsonl(tmp_path / "pairs.jsonl")
    assert summary["num_pairs"] == len(rows) and summary["num_pairs"] + summary["ties_dropped"] == 24
    train_prompts = {r["prompt"] for r in rows}
    test_prompts = {r["prompt"] for r in read_jsonl(tmp_path / "test_prompts.jsonl")}
    assert len(test_prompts) == 8 and not train_prompts & test_prompts
    assert (tmp_path / "sft_model" / "tokenizer.json").exists()
    assert not (tmp_path / "validation_prompts.jsonl").exists()


def test_make_task_validation_prompts_split_the_held_out_prompts(tmp_path):
    """Validation and test prompts are disjoint from each other and from training, and 4 + 4 of them hold
    out the same 8 prompts (and so train on the same pairs) as 8 test prompts alone."""
    from hybridrl.preference.task import TaskConfig, make_task, read_jsonl

    sizes = dict(num_train_prompts=24, sft_steps=5, samples_per_prompt=2, hidden_size=16)
    make_task(tmp_path / "test-only", TaskConfig(num_test_prompts=8, **sizes))
    summary = make_task(tmp_path / "split", TaskConfig(num_test_prompts=4, num_validation_prompts=4, **sizes))

    def prompts(task, name):
        return [r["prompt"] for r in read_jsonl(tmp_path / task / name)]

    validation, test = prompts("split", "validation_prompts.jsonl"), prompts("split", "test_prompts.jsonl")
    assert summary["num_validation_prompts"] == len(validation) == 4 and len(test) == 4
    assert validation + test == prompts("test-only", "test_prompts.jsonl")
    assert prompts("split", "pairs.jsonl") == prompts("test-only", "pairs.jsonl")


def test_sharded_accelerate_configs_are_refused_in_one_line():
    from accelerate.utils import DistributedType

    from hybridrl.preference.models import check_data_parallel

    for sharded in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(ValueError, match="data-parallel only"):
            check_data_parallel(sharded)
    for plain in (DistributedType.NO, DistributedType.MULTI_GPU):
        check_data_parallel(plain)


def test_train_with_held_out_eval_pairs_cosine_checkpointing_and_dtype(tiny_lm, pairs_file, tmp_path):
    out = tmp_path / "run"
    result = invoke(*train_args(tiny_lm, pairs_file, out, "--eval-fraction", 0.25, "--eval-every", 3,
                                "--lr-schedule", "cosine", "--gradient-checkpointing", "--dtype", "float32",
                                "--attn-implementation", "eager"))
    assert result.exit_code == 0, result.output
    assert "eval data: " in result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "eval/loss" in row] == [3, 6]
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["lr_schedule"] == "cosine" and config["train"]["gradient_checkpointing"]
    total = len(pairs_file.read_text().splitlines())
    assert config["num_pairs"] == total - round(0.25 * total)
    one_line(invoke(*train_args(tiny_lm, pairs_file, tmp_path / "bad", "--dtype", "float8")), 2, "unknown --dtype")
    one_line(invoke(*train_args(tiny_lm, pairs_file, tmp_path / "bad", "--eval-fraction", 1.5)), 2,
             "--eval-fraction must be in [0, 1)")


def test_make_task_and_eval_task_on_the_validation_split(tmp_path):
    task = tmp_path / "task"
    result = invoke("make-task", task, "--sft-steps", 5, "--test-prompts", 3, "--validation-prompts", 3)
    assert result.exit_code == 0, result.output
    assert "3 validation and 3 test prompts" in result.stdout
    result = invoke("eval-task", "--model", task / "sft_model", "--task", task, "--split", "validation",
                    "--samples-per-prompt", 2)
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert 0 <= scores["win_rate"] <= 1 and scores["kl"] == 0.0  # the SFT model against itself: no drift
    one_line(invoke("eval-task", "--model", task / "sft_model", "--task", task, "--split", "train"), 2,
             "unknown --split 'train'")
