"""Self-play on "real" models: a Hugging Face reward model as the judge (``rm:``), its training
(``train-judge rm``), conversational prompts, LoRA, and the acceptance run: ``pref selfplay egpo`` with
``--judge rm:DIR --lora-r 4`` on messages prompts, SIGKILLed after its first judged samples are saved,
then rerun to the end without asking the judge again about them. Every model is tiny and built here.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from hybridrl.preference.oracles import WeightedJudge, relabel_pairs, resolve_judge
from hybridrl.preference.reward_models import RewardModelJudge, bradley_terry_loss

TASK_PROMPTS = (
    "write two words about animals and tools using saw :",
    "write three words about colors and foods using red :",
)
CHATS = [[{"role": "user", "content": text}] for text in TASK_PROMPTS]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    """A tiny Llama reward model (one output) with the task's word tokenizer and its chat template."""
    from hybridrl.preference.models import (
        TinyLMConfig,
        build_tiny_reward_model,
        save_model_dir,
        train_word_tokenizer,
    )
    from hybridrl.preference.task import task_vocabulary_text

    tokenizer = train_word_tokenizer(task_vocabulary_text())
    config = TinyLMConfig(hidden_size=16, intermediate_size=32, num_heads=2, initializer_range=0.2)
    root = tmp_path_factory.mktemp("rm")
    return save_model_dir(build_tiny_reward_model(tokenizer, config, seed=3), tokenizer, root / "rm")


def direct_reward(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, 0].item()


# ---------------------------------------------------------------------------------------------------
# The reward-model judge


def test_rm_judge_is_the_sigmoid_of_reward_differences_of_the_model_called_directly(rm_dir):
    from transformers import AutoModelForSequenceClassification

    judge = resolve_judge(f"rm:{rm_dir}", device="cpu")
    assert isinstance(judge, RewardModelJudge)
    tokenizer = judge.tokenizer
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()  # a copy of its own

    def ids(prompt, answer):
        if isinstance(prompt, list):  # the chat template over the prompt and an assistant turn
            messages = [*prompt, {"role": "assistant", "content": answer.strip()}]
            return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        return tokenizer(prompt + answer + tokenizer.eos_token)["input_ids"]

    prompts = [CHATS[0], CHATS[0], CHATS[1], TASK_PROMPTS[0], TASK_PROMPTS[1]]
    firsts = [" cat dog", " red", " bread apple honey", " cat dog saw", " saw"]
    seconds = [" fox fox fox", " cat", " red", " red", " cat cat dog rope"]
    got = judge.preference_batch(prompts, firsts, seconds)
    want = [
        1 / (1 + math.exp(-(direct_reward(model, ids(x, a)) - direct_reward(model, ids(x, b)))))
        for x, a, b in zip(prompts, firsts, seconds, strict=True)
    ]
    assert np.allclose(got, want, rtol=0, atol=1e-6)
    assert np.abs(got - 0.5).max() > 1e-3  # the rewards differ: the comparison has teeth
    assert np.allclose(got + judge.preference_batch(prompts, seconds, firsts), 1.0)
    assert judge.preference(CHATS[0], " cat", " cat") == 0.5
    assert judge.preference(prompts[2], firsts[2], seconds[2]) == pytest.approx(want[2], abs=1e-6)
    rows = [{"prompt": x, "chosen": a, "rejected": b} for x, a, b in zip(prompts, firsts, seconds, strict=True)]
    for row in relabel_pairs(judge, rows):
        assert judge.preference(row["prompt"], row["chosen"], row["rejected"]) > 0.5


def test_rm_judge_scores_each_distinct_answer_once_per_call_and_caches_nothing(rm_dir):
    judge = resolve_judge(f"rm:{rm_dir}", device="cpu")
    rows = []
    judge.model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].size(0)), with_kwargs=True)
    answers = [" cat", " dog", " fox", " owl"]
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]  # K(K-1)/2 = 6 pairs of K = 4 answers
    args = ([CHATS[0]] * 6, [answers[i] for i, _ in pairs], [answers[j] for _, j in pairs])
    first = judge.preference_batch(*args)
    assert sum(rows) == 4
    assert np.array_equal(judge.preference_batch(*args), first) and sum(rows) == 8  # scored again


def test_rm_judge_pads_a_batch_like_single_rows_without_a_pad_token(rm_dir):
    """A checkpoint and tokenizer with no pad token (GPT-2's case): the judge pads with EOS and says so in
    the model's config, and a padded batch scores like the rows one by one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    model.config.pad_token_id = None
    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    tokenizer.pad_token = None
    answers = [" cat", " dog dog fox owl bread", " red blue", " saw"]
    prompts = [CHATS[1], CHATS[1], TASK_PROMPTS[0], TASK_PROMPTS[0]]
    batched = RewardModelJudge(model, tokenizer, batch_size=8)
    assert model.config.pad_token_id == tokenizer.eos_token_id
    one_by_one = RewardModelJudge(model, tokenizer, batch_size=1)
    assert np.allclose(batched.rewards(prompts, answers), one_by_one.rewards(prompts, answers), rtol=0, atol=1e-5)


def test_rm_judge_refuses_a_causal_lm_and_a_model_of_two_outputs(rm_dir, tiny_lm, tmp_path):
    from transformers import AutoModelForSequenceClassification

    with pytest.raises(ValueError, match=r"holds no trained reward head \(missing score.weight\): train one with"):
        resolve_judge(f"rm:{tiny_lm[0]}")
    two = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=2, ignore_mismatched_sizes=True)
    two.save_pretrained(tmp_path / "two")
    with pytest.raises(ValueError, match=r"has 2 outputs, but a reward model judge needs one \(num_labels=1\)"):
        resolve_judge(f"rm:{tmp_path / 'two'}")
    with pytest.raises(ValueError, match="nowhere does not exist: pass a local model directory or a Hugging Face"):
        resolve_judge(f"rm:{tmp_path / 'nowhere'}")


# ---------------------------------------------------------------------------------------------------
# Training a reward model


def test_bradley_terry_loss_on_hand_computed_values():
    loss, metrics = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
    # margins 1 and -2: (log(1 + e^-1) + log(1 + e^2)) / 2 = (0.3132617 + 2.1269280) / 2
    assert loss.item() == pytest.approx(1.2200948, abs=1e-6)
    assert metrics["accuracy"].item() == 0.5 and metrics["margin"].item() == -0.5
    assert bradley_terry_loss(torch.zeros(3), torch.zeros(3))[0].item() == pytest.approx(math.log(2))


def test_training_a_reward_model_lowers_its_loss(tiny_lm, text_rows, one_torch_thread):
    from hybridrl.preference.reward_models import (
        RewardTrainConfig,
        load_reward_model_for_training,
        train_reward_model,
    )

    rows = relabel_pairs(WeightedJudge(), text_rows)  # a learnable signal: the task judge's labels
    model, tokenizer = load_reward_model_for_training(tiny_lm[0], seed=0)
    losses = train_reward_model(model, tokenizer, rows, RewardTrainConfig(steps=40, learning_rate=3e-3, device="cpu"))
    assert len(losses) == 40 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1


def test_train_judge_rm_saves_a_judge_and_names_it(tiny_lm, text_rows, tmp_path, one_torch_thread):
    from typer.testing import CliRunner

    from hybridrl.cli.pref import app

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in text_rows))
    out = tmp_path / "rm"
    args = ["train-judge", "rm", "--pairs", str(pairs), "--out", str(out), "--steps", "2", "--lr", "1e-3",
            "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--model", str(tiny_lm[0])])
    assert result.exit_code == 0, result.output
    assert f"use --judge rm:{out}" in result.stdout and not list(tmp_path.glob(".rm.*"))
    judge = resolve_judge(f"rm:{out}")
    assert judge.model.config.num_labels == 1 and 0 < judge.preference(TASK_PROMPTS[0], " cat", " red") < 1
    missing = CliRunner().invoke(app, args)
    assert missing.exit_code == 2 and "train-judge rm needs --model" in missing.stderr


# ---------------------------------------------------------------------------------------------------
# LoRA self-play and conversational prompts


class Counting:
    """A judge that counts the pairs it is asked about and the prompts it was given."""

    def __init__(self, inner):
        self.inner, self.calls, self.prompts = inner, 0, []

    def preference_batch(self, prompts, firsts, seconds):
        self.calls += len(prompts)
        self.prompts.extend(prompts)
        return self.inner.preference_batch(prompts, firsts, seconds)

    def preference(self, prompt, first, second):
        return float(self.preference_batch([prompt], [first], [second])[0])


def lora_trainer(tiny_lm, out_dir, judge, **overrides):
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.selfplay import SelfPlayConfig, SelfPlayTrainer, resolve_selfplay_method
    from hybridrl.preference.selfplay_spec import method_config

    spec = resolve_selfplay_method("egpo")
    settings = dict(iterations=2, samples_per_prompt=3, steps_per_iteration=2, batch_size=4, learning_rate=1e-2,
                    max_new_tokens=6, lora_r=4, progress=False, device="cpu")
    return SelfPlayTrainer(spec=spec, method_config=method_config(spec), config=SelfPlayConfig(**{**settings,
                           **overrides}), model=load_causal_lm(tiny_lm[0]), tokenizer=load_tokenizer(tiny_lm[0]),
                           prompts=CHATS, judge=judge, out_dir=out_dir)


def test_lora_selfplay_resumes_exactly_and_saves_a_merged_model(tiny_lm, rm_dir, tmp_path, one_torch_thread):
    from peft import set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from hybridrl.preference.logprobs import completion_logps
    from hybridrl.preference.models import apply_lora, load_causal_lm
    from hybridrl.preference.prompts import encode_prompts

    rm = resolve_judge(f"rm:{rm_dir}", device="cpu")
    straight = lora_trainer(tiny_lm, tmp_path / "straight", Counting(rm))
    straight.run()

    killed = lora_trainer(tiny_lm, tmp_path / "killed", Counting(rm))
    # the reference is the policy's own base weights, the adapter off: no copy of them
    assert {id(p) for p in killed.ref_model.parameters()} <= {id(p) for p in killed.model.parameters()}
    assert killed.prompt_ids == encode_prompts(killed.tokenizer, CHATS)
    assert killed.tokenizer.decode(killed.prompt_ids[0]).endswith("saw : <assistant>")
    real_update = killed.update

    def update_then_die(*args, iteration, phase):
        if iteration == 1 and phase == 1:  # after iteration 1's samples and half step were persisted
            raise KeyboardInterrupt
        return real_update(*args, iteration=iteration, phase=phase)

    killed.update = update_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    # the extragradient backup and the checkpoint hold the adapter alone, with its AdamW state
    assert killed._trainable_copy() and all("lora_" in name for name in killed._trainable_copy())
    checkpoint = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)
    assert checkpoint["model"] and all("lora_" in name for name in checkpoint["model"])
    assert len(checkpoint["optimizer"]["state"]) == len(checkpoint["model"])
    # after an iteration of training, the reference still scores like the untouched base model
    sequences = [[*ids, 5, 6, 7] for ids in killed.prompt_ids]
    lengths = [len(ids) for ids in killed.prompt_ids]
    kwargs = {"pad_token_id": killed.pad_token_id}
    base = completion_logps(load_causal_lm(tiny_lm[0]), sequences, lengths, **kwargs)
    assert torch.allclose(completion_logps(killed.ref_model, sequences, lengths, **kwargs), base, atol=1e-5)
    assert not torch.allclose(completion_logps(killed.model, sequences, lengths, **kwargs), base, atol=1e-4)

    judge = Counting(rm)
    resumed = lora_trainer(tiny_lm, tmp_path / "killed", judge)
    resumed.run()
    assert judge.calls == 0  # every judgment of iteration 1 was on disk
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the saved model is plain (merged) and computes what base + adapter of the last checkpoint compute
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "killed" / "model")
    assert not any("lora" in key for key in saved.state_dict())
    adapted = apply_lora(load_causal_lm(tiny_lm[0]), r=4, alpha=16, dropout=0.0)
    set_peft_model_state_dict(adapted, torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)["model"])
    ids = torch.tensor([sequences[0]])
    with torch.no_grad():
        assert torch.allclose(saved(input_ids=ids).logits, adapted.eval()(input_ids=ids).logits, atol=1e-5)


def test_winrate_on_conversational_prompts_with_a_reward_model(tiny_lm, rm_dir, one_torch_thread):
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.winrate import winrate_matrix

    judge = Counting(resolve_judge(f"rm:{rm_dir}", device="cpu"))
    players = {"a": load_causal_lm(tiny_lm[0]), "b": load_causal_lm(tiny_lm[1]), "a2": load_causal_lm(tiny_lm[0])}
    matrix = winrate_matrix(players, load_tokenizer(tiny_lm[0]), CHATS, judge, judge_name="rm", samples_per_prompt=2,
                            max_new_tokens=4)
    assert matrix["num_comparisons"][0][1] == 4 and judge.prompts[0] == CHATS[0]  # the judge reads messages
    assert matrix["win_rate"][0][2] == 0.5  # one model twice: the same answers (common random numbers)


# ---------------------------------------------------------------------------------------------------
# The acceptance run, through the command line


def test_cli_egpo_with_an_rm_judge_and_lora_resumes_after_sigkill_without_rejudging(tiny_lm, rm_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in CHATS))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "hybridrl.cli.pref", "selfplay", "egpo", "--model", str(tiny_lm[0]),
               "--prompts", str(prompts), "--out", str(out), "--judge", f"rm:{rm_dir}", "--lora-r", "4",
               "--iterations", "2", "--samples-per-prompt", "3", "--steps-per-iteration", "2", "--batch-size", "4",
               "--max-new-tokens", "8", "--lr", "1e-2", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYBRIDRL_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples = out / "iterations" / "iter-0000-samples.pt"
    try:
        while not samples.exists():  # polled, not timed: the kill comes once the first judgments are saved
            if first.poll() is not None:
                pytest.fail(f"the run ended before saving its first samples: {first.stderr.read().decode()[-2000:]}")
            time.sleep(0.005)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(timeout=120)
        first.stderr.close()
    assert first.returncode == -signal.SIGKILL
    persisted = {path.name: path.stat().st_mtime_ns for path in (out / "iterations").glob("iter-*.pt")}

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)  # a bound, not a goal
    assert second.returncode == 0, second.stderr[-3000:]
    # per iteration: 3 pairs of 3 answers for each of the 2 prompts, and 9 per prompt against the half step's
    unasked = {"samples": 2 * 3, "opponents": 2 * 9}
    expected = sum(n for i in range(2) for kind, n in unasked.items() if f"iter-{i:04d}-{kind}.pt" not in persisted)
    new_calls = int(re.search(r"(\d+) new judge calls", second.stdout).group(1))
    assert new_calls == expected < 2 * sum(unasked.values())
    for name, mtime in persisted.items():  # read back, never written again
        assert (out / "iterations" / name).stat().st_mtime_ns == mtime
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [0, 1]
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert type(model).__name__ == "LlamaForCausalLM" and not any("lora" in k for k in model.state_dict())
