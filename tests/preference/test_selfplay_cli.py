"""`hybridrl pref selfplay / winrate / train-judge`: a tiny end-to-end run that resumes, one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hybridrl.preference.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory, text_rows):
    path = tmp_path_factory.mktemp("prompts") / "test_prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in text_rows[:6]))
    return path


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0]


TINY = (
    "--iterations",
    1,
    "--samples-per-prompt",
    2,
    "--steps-per-iteration",
    2,
    "--batch-size",
    4,
    "--max-new-tokens",
    4,
    "--lr",
    1e-3,
    "--device",
    "cpu",
    "--no-progress",
)


def test_selfplay_then_rerun_resumes_then_winrate(tiny_lm, prompt_file, tmp_path, one_torch_thread):
    out = tmp_path / "run"
    result = invoke(
        "selfplay",
        "egpo",
        "--model",
        tiny_lm[0],
        "--prompts",
        prompt_file,
        "--out",
        out,
        "--judge",
        "majority",
        "--param",
        "beta=0.5",
        *TINY,
    )
    assert result.exit_code == 0, result.output
    assert "1 iterations" in result.stdout and (out / "model" / "config.json").exists()
    again = invoke(
        "selfplay", "egpo", "--model", tiny_lm[0], "--prompts", prompt_file, "--out", out, *TINY, "--param", "beta=0.5"
    )
    assert again.exit_code == 0 and "0 new judge calls" in again.stdout
    changed = invoke("selfplay", "egpo", "--model", tiny_lm[0], "--prompts", prompt_file, "--out", out, *TINY)
    one_line_error(changed, "was started with other settings (beta differ)")

    matrix_path = tmp_path / "m.json"
    result = invoke(
        "winrate",
        "--model",
        tiny_lm[0],
        "--model",
        out / "model",
        "--name",
        "init",
        "--name",
        "egpo",
        "--prompts",
        prompt_file,
        "--out",
        matrix_path,
        "--samples-per-prompt",
        2,
        "--max-new-tokens",
        4,
    )
    assert result.exit_code == 0, result.output
    matrix = json.loads(matrix_path.read_text())
    assert list(matrix) == ["players", "win_rate", "ci_low", "ci_high", "judge", "num_comparisons", "seed"]
    assert matrix["players"] == ["init", "egpo"] and matrix["judge"] == "majority"
    assert matrix["num_comparisons"][0][1] == 12


def test_selfplay_bad_input_is_one_line_exit_2(tiny_lm, prompt_file, tmp_path):
    base = ("--model", tiny_lm[0], "--prompts", prompt_file, "--out", tmp_path / "r")
    one_line_error(invoke("selfplay", "ppo", *base), "unknown self-play method 'ppo'", "nash_mp")
    one_line_error(invoke("selfplay", "inpo", *base, "--judge", "gpt"), "unknown judge 'gpt'", "bt:PATH")
    one_line_error(invoke("selfplay", "inpo", *base, "--param", "beta=1"), "inpo has no parameter 'beta'")
    one_line_error(invoke("selfplay", "inpo", *base, "--param", "eta"), "--param takes KEY=VALUE")
    one_line_error(invoke("selfplay", "inpo", *base, "--samples-per-prompt", 1), "samples_per_prompt")
    one_line_error(invoke("selfplay", "inpo", *base, "--position-bias", "left"), "position bias")
    missing = ("--model", tiny_lm[0], "--prompts", tmp_path / "nope.jsonl", "--out", tmp_path / "r")
    one_line_error(invoke("selfplay", "inpo", *missing), "does not exist")


def test_winrate_and_train_judge_errors(tiny_lm, prompt_file, tmp_path, text_rows):
    one_line_error(
        invoke("winrate", "--model", tiny_lm[0], "--prompts", prompt_file, "--out", tmp_path / "m.json"),
        "at least two --model",
    )
    one_line_error(
        invoke("winrate", "--model", tiny_lm[0], "--model", tiny_lm[1], "--out", tmp_path / "m.json"),
        "exactly one of --task DIR or --prompts FILE",
    )
    one_line_error(
        invoke(
            "winrate",
            "--model",
            tiny_lm[0],
            "--model",
            tiny_lm[0],
            "--prompts",
            prompt_file,
            "--out",
            tmp_path / "m.json",
        ),
        "player names must differ",
    )
    one_line_error(
        invoke("train-judge", "gpt", "--pairs", prompt_file, "--out", tmp_path / "j.pt"), "unknown judge kind"
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in text_rows))
    result = invoke("train-judge", "pairwise", "--pairs", pairs, "--out", tmp_path / "j.pt", "--epochs", 2)
    assert result.exit_code == 0, result.output and f"pairwise:{tmp_path / 'j.pt'}" in result.stdout
    one_line_error(
        invoke(
            "selfplay",
            "inpo",
            "--model",
            tiny_lm[0],
            "--prompts",
            prompt_file,
            "--out",
            tmp_path / "r",
            "--judge",
            f"bt:{tmp_path / 'j.pt'}",
        ),
        "holds a 'pairwise' judge",
    )
