"""The CLI: one-line errors with exit code 2, a tiny end-to-end run, the synthetic task."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hybridrl.preference.cli import app

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


def test_importing_the_cli_does_not_import_transformers():
    code = (
        "import sys, hybridrl, hybridrl.preference.cli, hybridrl.preference.losses; "
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
