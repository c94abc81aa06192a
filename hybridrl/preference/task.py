"""A synthetic preference task small enough for a CPU, with a programmatic judge.

Prompts ask for a few words on two topics, e.g. ``write four words about animals and tools using rope :``.
Five annotator *criteria* score an answer in [0, 1]:

- ``on_topic``: share of words from the two named topics;
- ``length``: closeness to the asked number of words;
- ``keyword``: the asked word appears;
- ``no_repeats``: share of distinct words;
- ``coverage``: share of the two topics that appear.

:class:`WeightedJudge` sums weighted criteria into one score per answer, so its preferences are
transitive (a Bradley-Terry-style world where DPO's assumptions hold). :class:`MajorityJudge` lets
each criterion vote and the majority decide, which can produce cycles (a Condorcet paradox): the
intransitive variant for the Nash / self-play methods, with the same interface.

The pipeline (:func:`make_task`): train a word-level tokenizer; build a tiny Llama; SFT it on answers
of a noisy *teacher* whose quality varies from answer to answer (so the SFT model's samples vary in
quality too); sample two answers per training prompt from the SFT model; label them with the judge.
Held-out prompts are disjoint from the training prompts.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from hybridrl.core.checkpoint import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from hybridrl.preference.prompts import Prompt

TOPICS: dict[str, tuple[str, ...]] = {
    "animals": ("cat", "dog", "horse", "fox", "owl", "bear", "wolf", "deer"),
    "colors": ("red", "blue", "green", "yellow", "purple", "orange", "white", "black"),
    "foods": ("bread", "apple", "rice", "cheese", "soup", "honey", "plum", "corn"),
    "tools": ("hammer", "saw", "drill", "wrench", "rope", "nail", "brush", "axe"),
    "places": ("river", "forest", "city", "beach", "desert", "valley", "island", "harbor"),
}
FILLER = ("the", "a", "very", "some", "thing", "stuff", "maybe", "really", "of", "it")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}
WORD_NUMBERS = {word: n for n, word in NUMBER_WORDS.items()}
PROMPT_WORDS = ("write", "words", "about", "and", "using", ":")


@dataclass(frozen=True)
class TaskPrompt:
    topics: tuple[str, str]
    length: int
    keyword: str

    @property
    def text(self) -> str:
        return (
            f"write {NUMBER_WORDS[self.length]} words about {self.topics[0]} and {self.topics[1]} "
            f"using {self.keyword} :"
        )

    @classmethod
    def parse(cls, text: str) -> TaskPrompt:
        words = text.split()
        if len(words) != 10 or words[0] != "write" or words[-1] != ":":
            raise ValueError(f"not a prompt of this task: {text!r}")
        return cls(topics=(words[4], words[6]), length=WORD_NUMBERS[words[1]], keyword=words[8])


def all_prompts() -> list[TaskPrompt]:
    """Every prompt of the task (1,920): ordered topic pairs x lengths x a keyword from either topic."""
    prompts = []
    for first, second in itertools.permutations(TOPICS, 2):
        for length in NUMBER_WORDS:
            for keyword in TOPICS[first] + TOPICS[second]:
                prompts.append(TaskPrompt((first, second), length, keyword))
    return prompts


# ---------------------------------------------------------------------------------------------------
# Criteria and judges


def on_topic(prompt: TaskPrompt, words: Sequence[str]) -> float:
    topical = set(TOPICS[prompt.topics[0]]) | set(TOPICS[prompt.topics[1]])
    return sum(w in topical for w in words) / len(words) if words else 0.0


def length_match(prompt: TaskPrompt, words: Sequence[str]) -> float:
    return max(0.0, 1.0 - abs(len(words) - prompt.length) / prompt.length)


def keyword(prompt: TaskPrompt, words: Sequence[str]) -> float:
    return float(prompt.keyword in words)


def no_repeats(prompt: TaskPrompt, words: Sequence[str]) -> float:
    return len(set(words)) / len(words) if words else 0.0


def coverage(prompt: TaskPrompt, words: Sequence[str]) -> float:
    present = set(words)
    return sum(bool(present & set(TOPICS[t])) for t in prompt.topics) / 2.0


CRITERIA = {
    "on_topic": on_topic,
    "length": length_match,
    "keyword": keyword,
    "no_repeats": no_repeats,
    "coverage": coverage,
}
"""Annotator name -> criterion(prompt, words) in [0, 1]."""

DEFAULT_WEIGHTS = {"on_topic": 2.0, "length": 1.0, "keyword": 1.0, "no_repeats": 1.0, "coverage": 1.0}


class PairwiseJudge(Protocol):
    def preference(self, prompt: str, first: str, second: str) -> float:
        """Probability that ``first`` is preferred to ``second`` (0.5 on a tie)."""


def criterion_scores(prompt: str, response: str) -> dict[str, float]:
    task_prompt = TaskPrompt.parse(prompt)
    words = response.split()
    return {name: fn(task_prompt, words) for name, fn in CRITERIA.items()}


@dataclass(frozen=True)
class WeightedJudge:
    """One score per answer, the weighted sum of the criteria; the higher score wins (transitive)."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    def score(self, prompt: str, response: str) -> float:
        scores = criterion_scores(prompt, response)
        return sum(self.weights[name] * scores[name] for name in self.weights)

    def preference(self, prompt: str, first: str, second: str) -> float:
        gap = self.score(prompt, first) - self.score(prompt, second)
        return 0.5 if abs(gap) < 1e-9 else float(gap > 0)


@dataclass(frozen=True)
class MajorityJudge:
    """Each criterion votes for the answer it scores higher; the majority of non-tied votes wins.

    Pairwise majorities of several transitive annotators need not be transitive, so A > B > C > A is
    possible: the setting where a Nash equilibrium, not a best answer, is the target.
    """

    criteria: tuple[str, ...] = ("on_topic", "length", "no_repeats")

    def preference(self, prompt: str, first: str, second: str) -> float:
        a, b = criterion_scores(prompt, first), criterion_scores(prompt, second)
        votes = sum(np.sign(a[name] - b[name]) for name in self.criteria)
        return 0.5 if votes == 0 else float(votes > 0)


def win_rate(
    judge: PairwiseJudge, prompts: Sequence[str], responses: Sequence[str], baseline: Sequence[str]
) -> float:
    """Mean preference of ``responses`` over ``baseline`` (ties count one half)."""
    return float(
        np.mean([judge.preference(p, a, b) for p, a, b in zip(prompts, responses, baseline, strict=True)])
    )


def distinct_n(responses: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all responses (Li et al. 2016, distinct-n)."""
    grams = [
        tuple(words[i : i + n]) for words in (r.split() for r in responses) for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else 0.0


def per_prompt_distinct_n(responses: Sequence[str], group: int, n: int) -> float:
    """distinct-n within each run of ``group`` consecutive answers (same prompt), averaged over prompts."""
    return float(np.mean([distinct_n(responses[i : i + group], n) for i in range(0, len(responses), group)]))


# ---------------------------------------------------------------------------------------------------
# Teacher, SFT and sampling


def teacher_response(prompt: TaskPrompt, rng: random.Random) -> str:
    """A noisy demonstration: its quality q ~ U(0, 1) sets how on-topic, on-length and clean it is."""
    quality = rng.random()
    length = min(max(prompt.length + rng.randint(-2, 2), 1), 9)
    off_topics = [t for t in TOPICS if t not in prompt.topics]
    words = []
    for _ in range(length):
        if rng.random() < quality:
            words.append(rng.choice(TOPICS[rng.choice(prompt.topics)]))
        elif rng.random() < 0.5:
            words.append(rng.choice(FILLER))
        else:
            words.append(rng.choice(TOPICS[rng.choice(off_topics)]))
    if rng.random() < quality:
        words[rng.randrange(length)] = prompt.keyword
    if length > 1 and rng.random() < 0.5 * (1.0 - quality):
        words[rng.randrange(length)] = rng.choice(words)
    return " " + " ".join(words)


def task_vocabulary_text() -> list[str]:
    """Text covering every word of the task once (the tokenizer's training corpus)."""
    words = [*PROMPT_WORDS, *NUMBER_WORDS.values(), *TOPICS, *FILLER, *itertools.chain(*TOPICS.values())]
    return [" ".join(words)]


def sft_warmup(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    steps: int,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Supervised fine-tuning on completion tokens (+ EOS); returns the loss per step."""
    from hybridrl.preference.tokens import pad, token_logps

    prompt_ids = tokenizer(list(prompts))["input_ids"]
    full_ids = tokenizer([p + r + tokenizer.eos_token for p, r in zip(prompts, responses, strict=True)])[
        "input_ids"
    ]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / steps)
    model.train()
    losses = []
    for _ in range(steps):
        rows = torch.randint(len(full_ids), (batch_size,), generator=generator).tolist()
        ids, mask = pad([full_ids[i] for i in rows], tokenizer.pad_token_id, side="right")
        starts = torch.tensor([len(prompt_ids[i]) for i in rows])
        completion = mask * (torch.arange(ids.size(1)) >= starts[:, None])
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
        per_token = token_logps(logits, ids[:, 1:])
        loss = -(per_token * completion[:, 1:]).sum() / completion[:, 1:].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    *,
    seed: int,
    temperature: float = 1.0,
    max_new_tokens: int = 12,
    batch_size: int = 512,
) -> tuple[list[str], float]:
    """One sampled answer per prompt (ancestral sampling, seeded) and the mean per-token entropy (nats).

    The entropy is that of the sampling distribution at each generated step, averaged over the tokens
    generated up to and including EOS: a diversity measure that needs no second forward pass. Answers
    are drawn by :func:`hybridrl.preference.sampling.sample` from a generator seeded with ``seed``. A prompt
    may be a conversation (messages), which the tokenizer's chat template renders.
    """
    from hybridrl.preference.prompts import encode_prompts
    from hybridrl.preference.sampling import sample

    device = next(model.parameters()).device
    samples = sample(
        model,
        encode_prompts(tokenizer, prompts),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        generator=torch.Generator(device=device).manual_seed(seed),
        batch_size=batch_size,
        entropy=True,
    )
    texts = tokenizer.batch_decode(samples.completions, skip_special_tokens=True)
    return [" " + text.strip() for text in texts], samples.mean_entropy


# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """Sizes of the synthetic task (chosen so that make_task runs in about a minute on 2 CPU cores)."""

    seed: int = 0
    """Seeds the prompt split, the teacher, the model init and the sampling."""
    num_test_prompts: int = 400
    """Held-out prompts for the reported win rates (test_prompts.jsonl)."""
    num_validation_prompts: int = 0
    """Held-out prompts for choosing hyperparameters (validation_prompts.jsonl), drawn before the test
    prompts: 200 validation and 200 test prompts hold out the same 400 prompts as the default."""
    num_train_prompts: int | None = None
    """Training prompts (None: all 1,920 - the held-out others)."""
    demonstrations_per_prompt: int = 4
    """Teacher answers per training prompt for the SFT warm-up."""
    sft_steps: int = 800
    """SFT optimizer steps (batch 64, AdamW, lr 3e-3 decayed linearly)."""
    samples_per_prompt: int = 4
    """SFT samples per training prompt, labelled in consecutive pairs (ties dropped)."""
    hidden_size: int = 64
    """Tiny Llama width (see models.TinyLMConfig)."""


def make_task(out_dir: str | os.PathLike, config: TaskConfig | None = None) -> dict:
    """Build the task into ``out_dir``: sft_model/, pairs.jsonl, test_prompts.jsonl (and
    validation_prompts.jsonl when asked for), task.json."""
    from hybridrl.core.seeding import seed_everything
    from hybridrl.preference.models import (
        TinyLMConfig,
        build_tiny_model,
        save_model_dir,
        train_word_tokenizer,
    )

    config = config or TaskConfig()
    out = Path(out_dir)
    seed_everything(config.seed)
    rng = random.Random(config.seed)
    prompts = all_prompts()
    rng.shuffle(prompts)
    held_out = config.num_validation_prompts + config.num_test_prompts
    validation, test = prompts[: config.num_validation_prompts], prompts[config.num_validation_prompts : held_out]
    train = prompts[held_out:]
    train = train[: config.num_train_prompts] if config.num_train_prompts is not None else train

    demo_prompts = [p.text for p in train for _ in range(config.demonstrations_per_prompt)]
    demos = [teacher_response(TaskPrompt.parse(p), rng) for p in demo_prompts]
    tokenizer = train_word_tokenizer(task_vocabulary_text())
    model = build_tiny_model(
        tokenizer,
        TinyLMConfig(hidden_size=config.hidden_size, intermediate_size=2 * config.hidden_size),
        seed=config.seed,
    )
    sft_losses = sft_warmup(model, tokenizer, demo_prompts, demos, steps=config.sft_steps, seed=config.seed)
    save_model_dir(model, tokenizer, out / "sft_model")

    judge = WeightedJudge()
    train_texts = [p.text for p in train]
    samples = [
        sample_responses(model, tokenizer, train_texts, seed=config.seed * 1000 + k)[0]
        for k in range(config.samples_per_prompt)
    ]
    rows, ties = [], 0
    for k in range(0, config.samples_per_prompt - 1, 2):
        for prompt, first, second in zip(train_texts, samples[k], samples[k + 1], strict=True):
            preference = judge.preference(prompt, first, second)
            if preference == 0.5:
                ties += 1
                continue
            chosen, rejected = (first, second) if preference > 0.5 else (second, first)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    atomic_write_text(out / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(
        out / "test_prompts.jsonl", "".join(json.dumps({"prompt": p.text}) + "\n" for p in test)
    )
    if validation:
        atomic_write_text(
            out / "validation_prompts.jsonl", "".join(json.dumps({"prompt": p.text}) + "\n" for p in validation)
        )
    sft_scores = [judge.score(p, r) for p, r in zip(train_texts, samples[0], strict=True)]
    summary = {
        "config": asdict(config),
        "num_train_prompts": len(train),
        "num_test_prompts": len(test),
        "num_validation_prompts": len(validation),
        "num_pairs": len(rows),
        "ties_dropped": ties,
        "sft_final_loss": float(np.mean(sft_losses[-20:])),
        "sft_mean_judge_score": float(np.mean(sft_scores)),
        "judge_weights": dict(judge.weights),
        "max_judge_score": math.fsum(DEFAULT_WEIGHTS.values()),
    }
    atomic_write_json(out / "task.json", summary)
    return summary


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSON Lines file; a broken file is one line naming the file and the line."""
    from hybridrl.preference.data import read_json_rows

    return read_json_rows(path)


def evaluate_against(
    policy: PreTrainedModel,
    baseline: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    seed: int,
    judge: PairwiseJudge | None = None,
    samples_per_prompt: int = 4,
    temperature: float = 1.0,
) -> dict[str, float]:
    """Win rate of ``policy`` over ``baseline`` under the judge, and the diversity of ``policy``'s answers.

    Each prompt is answered ``samples_per_prompt`` times by each model (seeded sampling). Diversity is
    distinct-1/2 among the answers to the same prompt, averaged over prompts (a collapsed policy repeats
    itself), and the mean per-token sampling entropy.
    """
    judge = judge or WeightedJudge()
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    ours, our_entropy = sample_responses(policy, tokenizer, repeated, seed=seed, temperature=temperature)
    theirs, their_entropy = sample_responses(
        baseline, tokenizer, repeated, seed=seed + 1, temperature=temperature
    )
    scorer = judge if isinstance(judge, WeightedJudge) else WeightedJudge()
    return {
        "win_rate": win_rate(judge, repeated, ours, theirs),
        "judge_score": float(np.mean([scorer.score(p, r) for p, r in zip(repeated, ours, strict=True)])),
        "baseline_judge_score": float(
            np.mean([scorer.score(p, r) for p, r in zip(repeated, theirs, strict=True)])
        ),
        "distinct_1": per_prompt_distinct_n(ours, samples_per_prompt, 1),
        "distinct_2": per_prompt_distinct_n(ours, samples_per_prompt, 2),
        "entropy": our_entropy,
        "baseline_distinct_1": per_prompt_distinct_n(theirs, samples_per_prompt, 1),
        "baseline_distinct_2": per_prompt_distinct_n(theirs, samples_per_prompt, 2),
        "baseline_entropy": their_entropy,
        "num_comparisons": len(repeated),
    }
