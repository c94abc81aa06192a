"""Preference oracles: the intransitive majority judge, learned BT / pairwise judges, position bias."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hybridrl.preference.oracles import (
    BothOrders,
    MajorityJudge,
    RandomFlip,
    WeightedJudge,
    judge_batch,
    load_learned_judge,
    resolve_judge,
    train_learned_judge,
)
from hybridrl.preference.task import TaskPrompt, all_prompts, teacher_response

PROMPT = "write four words about animals and tools using rope :"


def test_majority_judge_has_a_cycle_weighted_judge_does_not():
    # asked for 4 words on animals/tools; criteria (on topic, length, no repeats) rank
    # a: 1st, 2nd, 3rd; b: 3rd, 1st, 2nd; c: 2nd, 3rd, 1st -- a Condorcet cycle b > a, c > b, a > c
    a = " cat cat dog dog saw"
    b = " red cat cat blue"
    c = " cat blue dog saw horse fox"
    majority = MajorityJudge()
    assert majority.preference(PROMPT, b, a) == 1.0
    assert majority.preference(PROMPT, c, b) == 1.0
    assert majority.preference(PROMPT, a, c) == 1.0
    weighted = WeightedJudge()
    wins = [weighted.preference(PROMPT, x, y) for x, y in ((b, a), (c, b), (a, c))]
    assert sorted(wins) != [1.0, 1.0, 1.0]


class FirstBiased:
    """A judge that leans toward whichever answer is shown first (a tie reads 0.7)."""

    def preference(self, prompt, first, second):
        return min(1.0, WeightedJudge().preference(prompt, first, second) * 0.6 + 0.2 + 0.2)


def test_both_orders_is_symmetric_and_removes_a_position_bias():
    biased = FirstBiased()
    a, b = " cat dog saw rope", " red red"
    assert biased.preference(PROMPT, a, b) + biased.preference(PROMPT, b, a) > 1.0
    fixed = BothOrders(biased)
    assert fixed.preference(PROMPT, a, b) + fixed.preference(PROMPT, b, a) == pytest.approx(1.0)
    assert fixed.preference(PROMPT, a, a) == pytest.approx(0.5)
    # random flips: unbiased on average
    flip = RandomFlip(biased, seed=0)
    same = [flip.preference(PROMPT, a, a) for _ in range(400)]
    assert abs(np.mean(same) - 0.5) < 0.05
    assert set(np.round(same, 6)) == {0.7, 0.3}


def _rule_rows(n, seed):
    """Pairs where the answer containing the prompt's keyword always wins (and otherwise random)."""
    rng = random.Random(seed)
    prompts = rng.sample(all_prompts(), n)
    rows = []
    for prompt in prompts:
        answer = teacher_response(prompt, rng).split()
        with_kw = " ".join([prompt.keyword, *answer[1:]])
        without = " ".join(w for w in answer if w != prompt.keyword) or "the"
        rows.append({"prompt": prompt.text, "chosen": " " + with_kw, "rejected": " " + without})
    return rows


@pytest.mark.parametrize("kind", ["bt", "pairwise"])
def test_learned_judges_learn_a_clear_preference(kind, tmp_path):
    train, test = _rule_rows(400, seed=0), _rule_rows(100, seed=1)
    judge = train_learned_judge(train, kind)
    p = judge_batch(judge, [r["prompt"] for r in test], [r["chosen"] for r in test], [r["rejected"] for r in test])
    assert (p > 0.5).mean() > 0.9
    path = judge.save(tmp_path / "judge.pt")
    again = resolve_judge(f"{kind}:{path}")
    assert again.preference(test[0]["prompt"], test[0]["chosen"], test[0]["rejected"]) == pytest.approx(p[0])
    if kind == "bt":
        rewards = judge.reward([test[0]["prompt"]] * 2, [test[0]["chosen"], test[0]["rejected"]])
        assert 1 / (1 + np.exp(rewards[1] - rewards[0])) == pytest.approx(p[0], rel=1e-5)
    else:
        with pytest.raises(ValueError, match="no per-answer reward"):
            judge.reward(["x"], ["y"])
        assert load_learned_judge(path).kind == "pairwise"


def test_registry_names_and_one_line_errors(tmp_path):
    assert isinstance(resolve_judge("majority"), MajorityJudge)
    assert isinstance(resolve_judge("weighted", position_bias="both"), BothOrders)
    with pytest.raises(ValueError, match=r"unknown judge 'gpt4': choose one of majority, weighted, bt:PATH"):
        resolve_judge("gpt4")
    with pytest.raises(FileNotFoundError):
        resolve_judge(f"bt:{tmp_path / 'missing.pt'}")
    judge = train_learned_judge(_rule_rows(20, seed=0), "bt", None)
    path = judge.save(tmp_path / "bt.pt")
    with pytest.raises(ValueError, match="holds a 'bt' judge"):
        resolve_judge(f"pairwise:{path}")


def test_judge_batch_matches_single_calls():
    judge = MajorityJudge()
    rng = random.Random(0)
    prompts = [p.text for p in rng.sample(all_prompts(), 20)]
    a = [teacher_response(TaskPrompt.parse(p), rng) for p in prompts]
    b = [teacher_response(TaskPrompt.parse(p), rng) for p in prompts]
    expected = [judge.preference(p, x, y) for p, x, y in zip(prompts, a, b, strict=True)]
    assert judge_batch(judge, prompts, a, b).tolist() == expected
    assert judge_batch(BothOrders(judge), prompts, a, b).tolist() == expected  # already symmetric


def test_relabel_pairs_follows_the_judge_and_drops_ties():
    from hybridrl.preference.oracles import relabel_pairs

    class FirstLonger:
        def preference(self, prompt, first, second):
            return 0.5 if len(first) == len(second) else float(len(first) > len(second))

    rows = [{"prompt": "p", "chosen": "aa", "rejected": "a"}, {"prompt": "q", "chosen": "b", "rejected": "bbb"},
            {"prompt": "r", "chosen": "cc", "rejected": "dd"}]
    assert relabel_pairs(FirstLonger(), rows) == [{"prompt": "p", "chosen": "aa", "rejected": "a"},
                                                  {"prompt": "q", "chosen": "bbb", "rejected": "b"}]


def test_lm_judge_reads_the_labels_next_token_probabilities(tiny_lm):
    """lm:PATH: P(first beats second) is the softmax of the two labels' next-token logits after the judge's
    instruction, batched with padding exactly as one pair at a time; swapping the answers swaps the labels'
    roles in the instruction (a different question, so no symmetry is asserted)."""
    import torch

    from hybridrl.preference.lm_judge import LMJudge, judge_prompt_ids
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.oracles import resolve_judge

    tokenizer = load_tokenizer(tiny_lm[0])
    model = load_causal_lm(tiny_lm[0])
    labels = ("red", "blue")  # words the tiny task's vocabulary knows
    judge = LMJudge(model=model, tokenizer=tokenizer, labels=labels, batch_size=2)
    prompts = ["write about the fox", [{"role": "user", "content": "write three colors"}], "write about bread"]
    firsts, seconds = [" the red fox", " red blue", " bread"], [" a fox", " green and white and black", " corn"]
    batched = judge.preference_batch(prompts, firsts, seconds)
    for prompt, first, second, p in zip(prompts, firsts, seconds, batched, strict=True):
        ids = torch.tensor([judge_prompt_ids(tokenizer, prompt, first, second, labels)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1, list(judge.label_ids)]
        assert p == pytest.approx(float(logits.softmax(-1)[0]), abs=1e-5)
        assert judge.preference(prompt, first, second) == pytest.approx(p, abs=1e-5)
    assert ((batched > 0) & (batched < 1)).all()
    with pytest.raises(ValueError, match="has no token for the label"):
        LMJudge(model=model, tokenizer=tokenizer, labels=("zzqx", "B"))
    with pytest.raises(ValueError, match="begin with the same token"):
        LMJudge(model=model, tokenizer=tokenizer, labels=("red", "red"))
    # lm:PATH loads the model as a judge with the labels A and B, which this tiny vocabulary lacks
    with pytest.raises(ValueError, match="no token for the label 'A'"):
        resolve_judge(f"lm:{tiny_lm[0]}", device="cpu")
