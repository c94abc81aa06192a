"""Self-play's held-out evaluation: the policy against its reference on eval prompts, outside the training streams."""

from __future__ import annotations

import json

import pytest
import torch

from hybridrl.core.session import Interrupted
from hybridrl.preference.oracles import MajorityJudge, RandomFlip
from hybridrl.preference.selfplay import SelfPlayConfig, SelfPlayTrainer, resolve_selfplay_method
from hybridrl.preference.selfplay_eval import EvalShard, eval_due, summarize
from hybridrl.preference.selfplay_spec import method_config

EVAL_KEYS = {"eval/win_rate_vs_ref", "eval/kl_to_ref", "eval/judge_calls"}


class BiasedJudge:
    """The majority judge leaning towards the answer shown first, counting the pairs it is asked about: with a
    coin flipping the order (RandomFlip), what it answers depends on where the coin's stream stands."""

    def __init__(self):
        self.calls, self.inner = 0, MajorityJudge()

    def preference(self, prompt, first, second):
        self.calls += 1
        return 0.25 + 0.75 * self.inner.preference(prompt, first, second)


def make_trainer(tiny_lm, prompts, out_dir, *, eval_prompts=None, method="inpo", reference=0, judge=None, **overrides):
    from hybridrl.preference.models import load_causal_lm, load_tokenizer

    spec = resolve_selfplay_method(method)
    settings = dict(iterations=2, samples_per_prompt=3, prompts_per_iteration=6, steps_per_iteration=2, batch_size=6,
                    learning_rate=1e-3, max_new_tokens=5, progress=False, device="cpu")
    settings.update(overrides)
    lora = settings.get("lora_r", 0) > 0
    return SelfPlayTrainer(
        spec=spec,
        method_config=method_config(spec),
        config=SelfPlayConfig(**settings),
        model=load_causal_lm(tiny_lm[0]),
        ref_model=None if lora else load_causal_lm(tiny_lm[reference]),
        tokenizer=load_tokenizer(tiny_lm[0]),
        prompts=prompts,
        judge=judge if judge is not None else RandomFlip(BiasedJudge(), seed=5),
        out_dir=out_dir,
        eval_prompts=eval_prompts,
    )


def lines(out_dir):
    """The metric lines of a run without their wall-clock columns (those differ between any two runs)."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.fixture(scope="module")
def split(text_rows):
    """(training prompts, eval prompts), disjoint."""
    prompts = [r["prompt"] for r in text_rows]
    return prompts[:16], prompts[16:]


def test_evaluation_changes_no_training_stream_and_runs_when_due(tiny_lm, split, tmp_path, one_torch_thread):
    """EGPO (every stream: samples, half-step opponents, the judge's coin) with and without evaluation: the same
    training lines, judge calls and weights; evaluations after iterations 1 and 2 (every 2nd and the last)."""
    train, held_out = split
    plain = make_trainer(tiny_lm, train, tmp_path / "plain", method="egpo", iterations=3)
    plain.run()
    evaluated = make_trainer(tiny_lm, train, tmp_path / "eval", method="egpo", iterations=3, eval_prompts=held_out,
                             eval_every=2, eval_samples_per_prompt=2)
    last = evaluated.run()
    assert torch.equal(params(plain.model), params(evaluated.model))
    assert evaluated.judge_calls == plain.judge_calls
    assert evaluated.judge.inner.calls == plain.judge.inner.calls + 2 * len(held_out) * 2  # two evaluations

    ours, theirs = lines(tmp_path / "eval"), lines(tmp_path / "plain")
    assert [sorted(EVAL_KEYS & set(row)) for row in ours] == [[], sorted(EVAL_KEYS), sorted(EVAL_KEYS)]
    assert [{k: v for k, v in row.items() if k not in EVAL_KEYS} for row in ours] == theirs
    for row in ours[1:]:
        assert 0.0 <= row["eval/win_rate_vs_ref"] <= 1.0 and row["eval/judge_calls"] == len(held_out) * 2
        assert abs(row["eval/kl_to_ref"]) < 50.0
    assert {k: last[k] for k in EVAL_KEYS} == {k: ours[-1][k] for k in EVAL_KEYS}  # results.json has them too
    # the evaluation settings are not part of the record: the plain run's directory resumes with them
    assert evaluated.run_record() == plain.run_record()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_a_policy_equal_to_its_reference_ties_and_has_no_kl(tiny_lm, split, tmp_path, temperature):
    train, held_out = split
    same = make_trainer(tiny_lm, train, tmp_path / "same", eval_prompts=held_out, temperature=temperature,
                        judge=MajorityJudge())
    result = same.evaluate(0)  # before any update: the policy is the reference, drawing the same answers
    assert result == {"eval/win_rate_vs_ref": 0.5, "eval/kl_to_ref": pytest.approx(0.0, abs=1e-5),
                      "eval/judge_calls": 2.0 * len(held_out)}
    other = make_trainer(tiny_lm, train, tmp_path / "other", eval_prompts=held_out, temperature=temperature,
                         reference=1, eval_samples_per_prompt=4, judge=MajorityJudge())
    result = other.evaluate(0)
    assert result["eval/kl_to_ref"] > 0.05 and result["eval/judge_calls"] == 4.0 * len(held_out)
    assert result["eval/win_rate_vs_ref"] != 0.5
    assert other.evaluate(1) != result and other.evaluate(1) == other.evaluate(1)  # seeded per iteration


def test_with_lora_the_reference_is_the_base_without_the_adapter(tiny_lm, split, tmp_path, one_torch_thread):
    """The adapter starts at zero (the policy is its base: a tie, no KL) and moves the policy away from it;
    were the reference the policy itself, the KL would stay exactly zero."""
    train, held_out = split
    trainer = make_trainer(tiny_lm, train, tmp_path, eval_prompts=held_out, lora_r=4, learning_rate=3e-2,
                           iterations=1, steps_per_iteration=4, judge=MajorityJudge())
    before = trainer.evaluate(0)
    assert before["eval/win_rate_vs_ref"] == 0.5 and before["eval/kl_to_ref"] == pytest.approx(0.0, abs=1e-5)
    after = trainer.run()
    assert after["eval/kl_to_ref"] > 1e-3


@pytest.mark.parametrize("where", ["during the evaluation", "after the line, before the checkpoint"])
def test_a_killed_run_resumes_to_the_same_lines_without_double_logging(where, tiny_lm, split, tmp_path,
                                                                       one_torch_thread):
    train, held_out = split
    make_trainer(tiny_lm, train, tmp_path / "straight", eval_prompts=held_out).run()
    killed = make_trainer(tiny_lm, train, tmp_path / "killed", eval_prompts=held_out)
    if where == "during the evaluation":
        real = killed.evaluate

        def evaluate(iteration):
            if iteration == 1:
                raise KeyboardInterrupt
            return real(iteration)

        killed.evaluate = evaluate
    else:
        real_state, calls = killed._model_state, []

        def model_state():  # the checkpoint's weights, taken after the iteration's line is written
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real_state()

        killed._model_state = model_state
    with pytest.raises((KeyboardInterrupt, Interrupted)) as caught:
        killed.run()
    assert caught.type is Interrupted
    if where != "during the evaluation":
        assert [row["iteration"] for row in lines(tmp_path / "killed")] == [0, 1]  # the line was written
    resumed = make_trainer(tiny_lm, train, tmp_path / "killed", eval_prompts=held_out)
    resumed.run()
    # iteration 1's samples were judged and saved before the kill: only its evaluation asks the judge again
    assert resumed.judge.inner.calls == 2 * len(held_out) and resumed.judge_calls == 0
    straight, again = lines(tmp_path / "straight"), lines(tmp_path / "killed")
    assert [row["iteration"] for row in again] == [0, 1] and again == straight


def test_the_shards_reduce_to_the_means_over_every_answer():
    a = EvalShard(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), torch.tensor([0.5, 0.5, 0.5]))
    b = EvalShard(torch.tensor([0.0], dtype=torch.float64), torch.tensor([2.5]))
    empty = EvalShard(torch.zeros(0, dtype=torch.float64), torch.zeros(0))
    result = summarize([a, empty, b])
    assert result == {"eval/win_rate_vs_ref": 0.75, "eval/kl_to_ref": 1.0, "eval/judge_calls": 4.0}
    with pytest.raises(ValueError, match="no eval prompts"):
        summarize([empty])


def test_evaluations_come_every_few_iterations_and_after_the_last():
    assert [t for t in range(5) if eval_due(t, 2, 5)] == [1, 3, 4]
    assert [t for t in range(5) if eval_due(t, 0, 5)] == [4]
    assert [t for t in range(3) if eval_due(t, 1, 3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="eval_every >= 0"):
        SelfPlayConfig(eval_every=-1)


# ---------------------------------------------------------------------------------------------------
# `hybridrl pref selfplay --eval-prompts / --eval-fraction`

CLI_TINY = ("--iterations", 1, "--samples-per-prompt", 2, "--steps-per-iteration", 2, "--batch-size", 4,
            "--max-new-tokens", 4, "--lr", 1e-3, "--device", "cpu", "--no-progress")


def invoke(*args):
    from typer.testing import CliRunner

    from hybridrl.cli.pref import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def prompt_file(tmp_path, split):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in split[0][:6]))
    return path


@pytest.fixture
def seen(monkeypatch):
    """The prompts and eval prompts each SelfPlayTrainer the command builds is given."""
    real, calls = SelfPlayTrainer.__init__, []

    def init(self, **kwargs):
        calls.append((kwargs["prompts"], kwargs["eval_prompts"]))
        real(self, **kwargs)

    monkeypatch.setattr(SelfPlayTrainer, "__init__", init)
    return calls


def test_cli_eval_fraction_holds_out_prompts_it_never_trains_on(tiny_lm, prompt_file, seen, tmp_path,
                                                                one_torch_thread):
    args = ("selfplay", "inpo", "--model", tiny_lm[0], "--prompts", prompt_file, "--out", tmp_path / "run",
            *CLI_TINY, "--eval-fraction", 0.5, "--eval-samples-per-prompt", 3)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    train, held = seen[0]
    everything = [json.loads(line)["prompt"] for line in prompt_file.read_text().splitlines()]
    assert len(train) == len(held) == 3 and sorted(train + held) == sorted(everything)
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert line["eval/judge_calls"] == 3 * 3 and 0.0 <= line["eval/win_rate_vs_ref"] <= 1.0
    assert "eval/win_rate_vs_ref=" in result.stdout
    assert len(torch.load(tmp_path / "run" / "iterations" / "iter-0000-samples.pt")["prompt_indices"]) == 3
    again = invoke(*args)  # the same seeded split: the run resumes (finished, nothing asked again)
    assert again.exit_code == 0 and "0 new judge calls" in again.stdout and seen[1] == seen[0]


def test_cli_eval_prompts_from_a_file_and_a_warning_when_they_are_trained_on(tiny_lm, prompt_file, tmp_path, split,
                                                                             seen, one_torch_thread):
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in split[1][:2]))
    base = ("selfplay", "inpo", "--model", tiny_lm[0], "--prompts", prompt_file, *CLI_TINY)
    result = invoke(*base, "--out", tmp_path / "a", "--eval-prompts", held_out)
    assert result.exit_code == 0, result.output
    assert seen[0][1] == split[1][:2] and "warning" not in result.stderr
    assert json.loads((tmp_path / "a" / "metrics.jsonl").read_text())["eval/judge_calls"] == 2 * 2
    result = invoke(*base, "--out", tmp_path / "b", "--eval-prompts", prompt_file, "--eval-every", 0)
    assert result.exit_code == 0, result.output
    assert "warning: 6 of the 6 eval prompts are training prompts too" in result.stderr


def test_cli_eval_options_fail_in_one_line(tiny_lm, prompt_file, tmp_path, seen):
    base = ("selfplay", "inpo", "--model", tiny_lm[0], "--prompts", prompt_file, "--out", tmp_path / "r", *CLI_TINY)
    for extra, message in (
        (("--eval-prompts", prompt_file, "--eval-fraction", 0.2), "give --eval-prompts or --eval-fraction, not both"),
        (("--eval-fraction", 0.95), "--eval-fraction 0.95 leaves no training prompts out of 6"),
        (("--eval-fraction", 1.0), "--eval-fraction must be in [0, 1)"),
        (("--eval-every", -1), "eval_every >= 0"),
        (("--eval-prompts", tmp_path / "nope.jsonl"), "does not exist"),
    ):
        result = invoke(*base, *extra)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert seen == []  # refused before any model was loaded
