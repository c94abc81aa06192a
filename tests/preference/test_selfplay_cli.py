"""`hybridrl pref selfplay / winrate / train-judge`: a tiny end-to-end run that resumes, one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hybridrl.cli.pref import app

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
    one_line_error(changed, "holds another run (it differs in method_config.beta)")

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


def selfplay_args(tiny_lm, prompt_file, out):
    args = ["selfplay", "inpo", "--model", tiny_lm[0], "--prompts", prompt_file, "--out", out, *TINY]
    args[args.index("--iterations") + 1] = 2
    return args


def one_line(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_selfplay_nan_is_one_line_exit_1_and_the_checkpoint_is_kept(tiny_lm, prompt_file, tmp_path, monkeypatch):
    import torch

    from hybridrl.preference import selfplay

    real_resolve = selfplay.resolve_loss

    def nan_in_the_second_iteration(name):
        loss, calls = real_resolve(name), []

        def poisoned(pair, config):
            calls.append(1)
            value = loss(pair, config)
            return value if len(calls) <= 2 else value * float("nan")  # 2 steps per iteration

        return poisoned

    monkeypatch.setattr(selfplay, "resolve_loss", nan_in_the_second_iteration)
    out = tmp_path / "run"
    one_line(invoke(*selfplay_args(tiny_lm, prompt_file, out)), 1, "training diverged at iteration 1",
             "last good checkpoint (iteration 1) is kept")
    kept = torch.load(out / "checkpoint.pt", weights_only=False)
    assert kept["step"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values())


def test_selfplay_ctrl_c_is_one_line_exit_130(tiny_lm, prompt_file, tmp_path, monkeypatch):
    from hybridrl.preference.selfplay import SelfPlayTrainer

    real_update = SelfPlayTrainer.update

    def update_then_ctrl_c(self, *args, iteration, phase):
        if iteration == 1:
            raise KeyboardInterrupt
        return real_update(self, *args, iteration=iteration, phase=phase)

    monkeypatch.setattr(SelfPlayTrainer, "update", update_then_ctrl_c)
    out = tmp_path / "run"
    try:
        result = invoke(*selfplay_args(tiny_lm, prompt_file, out))
    except KeyboardInterrupt:  # a bare KeyboardInterrupt would end pytest
        pytest.fail("Ctrl-C escaped the command")
    one_line(result, 130, f"progress up to iteration 1 is saved in {out}", "rerun the same command to resume")


def test_selfplay_lr_schedule_flags_reach_the_run(tiny_lm, prompt_file, tmp_path, one_torch_thread):
    out = tmp_path / "run"
    result = invoke("selfplay", "inpo", "--model", tiny_lm[0], "--prompts", prompt_file, "--out", out, *TINY,
                    "--lr-schedule", "linear", "--warmup-ratio", 0.5, "--lr-schedule-span", "iteration")
    assert result.exit_code == 0, result.output
    run = json.loads((out / "config.json").read_text())["run"]
    assert (run["lr_schedule"], run["warmup_ratio"], run["lr_schedule_span"]) == ("linear", 0.5, "iteration")
    # 2 steps, 1 of warm-up: rates 0 then the full 1e-3, the last one logged
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["lr"] == pytest.approx(1e-3)


def test_selfplay_bad_input_is_one_line_exit_2(tiny_lm, prompt_file, tmp_path):
    base = ("--model", tiny_lm[0], "--prompts", prompt_file, "--out", tmp_path / "r")
    one_line_error(invoke("selfplay", "ppo", *base), "unknown self-play method 'ppo'", "nash_mp")
    one_line_error(invoke("selfplay", "inpo", *base, "--judge", "gpt"), "unknown judge 'gpt'", "bt:PATH")
    one_line_error(invoke("selfplay", "inpo", *base, "--param", "beta=1"), "inpo has no parameter 'beta'")
    one_line_error(invoke("selfplay", "inpo", *base, "--param", "eta"), "--param takes KEY=VALUE")
    one_line_error(invoke("selfplay", "inpo", *base, "--samples-per-prompt", 1), "samples_per_prompt")
    one_line_error(invoke("selfplay", "inpo", *base, "--position-bias", "left"), "position bias")
    one_line_error(invoke("selfplay", "inpo", *base, "--dtype", "int8"), "unknown --dtype 'int8'")
    one_line_error(invoke("selfplay", "inpo", *base, "--mixed-precision", "fp8"), "unknown mixed_precision")
    one_line_error(invoke("selfplay", "inpo", *base, "--mixed-precision", "fp16", "--device", "cpu"),
                   "mixed_precision 'fp16' needs a CUDA device, not cpu")
    one_line_error(invoke("selfplay", "inpo", *base, "--report-to", "mlflow"), "unknown report_to")
    one_line_error(invoke("selfplay", "inpo", *base, "--lr-schedule", "step"), "unknown lr_schedule 'step'")
    one_line_error(invoke("selfplay", "inpo", *base, "--warmup-ratio", 1), "warmup_ratio must be in [0, 1)")
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
