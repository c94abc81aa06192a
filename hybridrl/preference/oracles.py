"""Preference oracles (judges): ``preference(prompt, first, second)`` = probability that ``first`` wins.

One protocol for every judge, plus a batched form (:func:`judge_batch`) that learned judges serve with
one forward pass:

- programmatic judges of the synthetic task (defined in :mod:`hybridrl.preference.task`, re-exported
  here): :class:`WeightedJudge` (transitive, one score per answer) and :class:`MajorityJudge` (a
  majority vote of criteria, which produces cycles);
- :class:`LearnedJudge` of kind ``bt``: a Bradley-Terry reward model, ``P = sigmoid(r(x, a) - r(x, b))``,
  transitive by construction;
- :class:`LearnedJudge` of kind ``pairwise``: a general preference model ``P = sigmoid(g(x, a, b))`` that
  reads both answers at once (as the pairwise models used by INPO and EGPO), so it can be intransitive,
  and, like them, it can favour a position;
- a Hugging Face reward model (any sequence classifier with one output), ``P = sigmoid(r(x, a) - r(x, b))``:
  :class:`~hybridrl.preference.reward_models.RewardModelJudge`, which reads conversations through its
  tokenizer's chat template;
- position-bias handling as wrappers: :class:`BothOrders` (average of both orders, INPO's pipeline) and
  :class:`RandomFlip` (one order at random, TRL's PairRM judge and EGPO's pair judge).

Learned judges are small torch models over a word vocabulary built from their training pairs (mean
word embeddings of the prompt and of each answer, their product, and the answer length): seconds to
train on a CPU from the task's ``pairs.jsonl``; no download.

:func:`resolve_judge` maps a command-line name (``majority``, ``weighted``, ``bt:PATH``,
``pairwise:PATH``, ``rm:ID_OR_PATH``, ``lm:ID_OR_PATH``) to a judge.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from hybridrl.core.checkpoint import atomic_save, load_checkpoint
from hybridrl.preference.prompts import Prompt
from hybridrl.preference.task import MajorityJudge, PairwiseJudge, WeightedJudge

__all__ = [
    "BothOrders",
    "LearnedJudge",
    "MajorityJudge",
    "PreferenceOracle",
    "RandomFlip",
    "WeightedJudge",
    "judge_batch",
    "load_learned_judge",
    "resolve_judge",
    "train_learned_judge",
]

PreferenceOracle = PairwiseJudge
"""Anything with ``preference(prompt, first, second) -> float`` (P(first beats second), 0.5 a tie); a
prompt is text or, for judges that read conversations (reward models), a list of messages; a judge may
add ``preference_batch(prompts, firsts, seconds)`` to answer many pairs in one call."""


def judge_batch(
    oracle: PreferenceOracle, prompts: Sequence[Prompt], firsts: Sequence[Any], seconds: Sequence[Any]
) -> np.ndarray:
    """``[N]`` float64 preferences of ``firsts[i]`` over ``seconds[i]``; one batched call when supported.

    Prompts are text or messages and answers text (or, in conversational pair rows, assistant messages),
    as the judge reads them.
    """
    if not len(prompts) == len(firsts) == len(seconds):
        raise ValueError(f"judge_batch needs equal lengths, got {len(prompts)}, {len(firsts)}, {len(seconds)}")
    batched = getattr(oracle, "preference_batch", None)
    if batched is not None:
        return np.asarray(batched(prompts, firsts, seconds), dtype=np.float64)
    return np.array(
        [oracle.preference(p, a, b) for p, a, b in zip(prompts, firsts, seconds, strict=True)], dtype=np.float64
    )


def relabel_pairs(oracle: PreferenceOracle, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Preference rows with chosen/rejected set by ``oracle``; the pairs it ties are dropped."""
    p = judge_batch(oracle, [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    return [dict(r) if pref > 0.5 else {**r, "chosen": r["rejected"], "rejected": r["chosen"]}
            for r, pref in zip(rows, p, strict=True) if pref != 0.5]


# ---------------------------------------------------------------------------------------------------
# Position bias


@dataclass(frozen=True)
class BothOrders:
    """Ask both orders and average: ``(P(a, b) + 1 - P(b, a)) / 2``; symmetric whatever the inner judge."""

    inner: PreferenceOracle

    def preference(self, prompt: str, first: str, second: str) -> float:
        return float(self.preference_batch([prompt], [first], [second])[0])

    def preference_batch(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> np.ndarray:
        forward = judge_batch(self.inner, prompts, firsts, seconds)
        backward = judge_batch(self.inner, prompts, seconds, firsts)
        return 0.5 * (forward + 1.0 - backward)


@dataclass
class RandomFlip:
    """Ask one order chosen by a seeded coin: unbiased on average at the cost of one query per pair."""

    inner: PreferenceOracle
    seed: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def preference(self, prompt: str, first: str, second: str) -> float:
        return float(self.preference_batch([prompt], [first], [second])[0])

    def preference_batch(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> np.ndarray:
        flip = np.array([self.rng.random() < 0.5 for _ in prompts], dtype=bool)
        a = [s if f else x for x, s, f in zip(firsts, seconds, flip, strict=True)]
        b = [x if f else s for x, s, f in zip(firsts, seconds, flip, strict=True)]
        asked = judge_batch(self.inner, prompts, a, b)
        return np.where(flip, 1.0 - asked, asked)


# ---------------------------------------------------------------------------------------------------
# Learned judges


@dataclass(frozen=True, kw_only=True)
class JudgeTrainConfig:
    """Size and optimisation of a learned judge (small: the synthetic task trains it in seconds)."""

    embedding_dim: int = 32
    """Width of the word embeddings."""
    hidden_size: int = 64
    """Width of the MLP head."""
    epochs: int = 30
    """Passes over the labelled pairs."""
    batch_size: int = 128
    """Pairs per Adam step."""
    learning_rate: float = 3e-3
    """Adam step size."""
    seed: int = 0
    """Seeds the initialisation and the pair order."""


class _PairModel(nn.Module):
    """Answer features ``[p, r, p*r, |r|/10]`` from mean word embeddings; a BT score or a pairwise logit."""

    def __init__(self, kind: str, vocab_size: int, config: JudgeTrainConfig) -> None:
        super().__init__()
        self.kind = kind
        dim = 3 * config.embedding_dim + 1
        self.embed = nn.EmbeddingBag(vocab_size, config.embedding_dim, mode="mean", padding_idx=0)
        width = dim if kind == "bt" else 2 * dim
        self.head = nn.Sequential(nn.Linear(width, config.hidden_size), nn.ReLU(), nn.Linear(config.hidden_size, 1))

    def features(self, prompt: Tensor, answer: Tensor) -> Tensor:
        p, r = self.embed(prompt), self.embed(answer)
        length = (answer > 0).sum(-1, keepdim=True).float() / 10.0
        return torch.cat([p, r, p * r, length], dim=-1)

    def forward(self, prompt: Tensor, first: Tensor, second: Tensor) -> Tensor:
        """``[N]`` logits of P(first beats second)."""
        a, b = self.features(prompt, first), self.features(prompt, second)
        if self.kind == "bt":
            return (self.head(a) - self.head(b)).squeeze(-1)
        return self.head(torch.cat([a, b], dim=-1)).squeeze(-1)


def _words(text: str) -> list[str]:
    return text.lower().split()


def _encode(vocab: Mapping[str, int], texts: Sequence[str]) -> Tensor:
    """``[N, L]`` word ids, 0 for padding and unknown words (both ignored by the mean)."""
    rows = [[vocab.get(w, 0) for w in _words(t)] or [0] for t in texts]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids


@dataclass
class LearnedJudge:
    """A trained Bradley-Terry (``kind="bt"``) or general pairwise (``kind="pairwise"``) preference model."""

    kind: Literal["bt", "pairwise"]
    vocab: dict[str, int]
    model: _PairModel
    config: JudgeTrainConfig

    @torch.no_grad()
    def preference_batch(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> np.ndarray:
        self.model.eval()
        logits = self.model(_encode(self.vocab, prompts), _encode(self.vocab, firsts), _encode(self.vocab, seconds))
        return torch.sigmoid(logits).double().numpy()

    def preference(self, prompt: str, first: str, second: str) -> float:
        return float(self.preference_batch([prompt], [first], [second])[0])

    @torch.no_grad()
    def reward(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """``[N]`` Bradley-Terry rewards (``bt`` judges only): only their differences are meaningful."""
        if self.kind != "bt":
            raise ValueError("a pairwise preference model has no per-answer reward: use preference()")
        features = self.model.features(_encode(self.vocab, prompts), _encode(self.vocab, responses))
        return self.model.head(features).squeeze(-1).double().numpy()

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_save(
            {"kind": self.kind, "vocab": self.vocab, "config": asdict(self.config), "state": self.model.state_dict()},
            path,
        )
        return path


def train_learned_judge(
    rows: Sequence[Mapping[str, str]], kind: Literal["bt", "pairwise"], config: JudgeTrainConfig | None = None
) -> LearnedJudge:
    """Fit a judge on ``prompt``/``chosen``/``rejected`` rows (logistic loss on P(chosen beats rejected)).

    The pairwise model sees every pair in both orders (label 1 then 0), so that it learns no position
    preference from the data's layout; the BT model is order-free by construction.
    """
    if kind not in ("bt", "pairwise"):
        raise ValueError(f"unknown judge kind {kind!r}: use 'bt' or 'pairwise'")
    if not rows:
        raise ValueError("no labelled pairs to train a judge on")
    config = config or JudgeTrainConfig()
    words = sorted({w for r in rows for key in ("prompt", "chosen", "rejected") for w in _words(r[key])})
    vocab = {w: i + 1 for i, w in enumerate(words)}
    prompts = _encode(vocab, [r["prompt"] for r in rows])
    chosen = _encode(vocab, [r["chosen"] for r in rows])
    rejected = _encode(vocab, [r["rejected"] for r in rows])
    generator = torch.Generator().manual_seed(config.seed)
    state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)
    model = _PairModel(kind, len(vocab) + 1, config)
    torch.random.set_rng_state(state)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(config.epochs):
        for batch in torch.randperm(len(rows), generator=generator).split(config.batch_size):
            p, c, r = prompts[batch], chosen[batch], rejected[batch]
            logits = model(p, c, r)
            labels = torch.ones_like(logits)
            if kind == "pairwise":
                logits = torch.cat([logits, model(p, r, c)])
                labels = torch.cat([labels, torch.zeros_like(labels)])
            loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    return LearnedJudge(kind=kind, vocab=vocab, model=model, config=config)


def load_learned_judge(path: str | os.PathLike) -> LearnedJudge:
    """Load a judge written by :meth:`LearnedJudge.save`."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("kind") not in ("bt", "pairwise"):
        raise ValueError(f"{path} is not a judge saved by hybridrl (train one with `hybridrl pref train-judge`)")
    config = JudgeTrainConfig(**state["config"])
    model = _PairModel(state["kind"], len(state["vocab"]) + 1, config)
    model.load_state_dict(state["state"])
    return LearnedJudge(kind=state["kind"], vocab=state["vocab"], model=model.eval(), config=config)


# ---------------------------------------------------------------------------------------------------
# Registry

JUDGE_CHOICES = "majority, weighted, bt:PATH, pairwise:PATH, rm:ID_OR_PATH, lm:ID_OR_PATH"
POSITION_CHOICES = ("none", "both", "flip")


def resolve_judge(
    name: str, *, position_bias: Literal["none", "both", "flip"] = "none", seed: int = 0, device: str | None = None
) -> PreferenceOracle:
    """The judge called ``name`` (see :data:`JUDGE_CHOICES`), optionally wrapped against position bias.

    ``rm:ID_OR_PATH`` loads a reward model and ``lm:ID_OR_PATH`` a causal LM asked which answer is better
    (HF id or local directory), onto ``device`` (None: automatic).
    """
    if position_bias not in POSITION_CHOICES:
        raise ValueError(
            f"unknown position bias handling {position_bias!r}: choose one of {', '.join(POSITION_CHOICES)}"
        )
    kind, _, path = name.partition(":")
    judge: PreferenceOracle
    if name == "majority":
        judge = MajorityJudge()
    elif name == "weighted":
        judge = WeightedJudge()
    elif kind in ("bt", "pairwise") and path:
        judge = load_learned_judge(path)
        if judge.kind != kind:
            raise ValueError(f"{path} holds a {judge.kind!r} judge, not a {kind!r} one: use {judge.kind}:{path}")
    elif kind == "rm" and path:
        from hybridrl.preference.reward_models import load_reward_judge

        judge = load_reward_judge(path, device=device)
    elif kind == "lm" and path:
        from hybridrl.preference.lm_judge import load_lm_judge

        judge = load_lm_judge(path, device=device)
    else:
        raise ValueError(f"unknown judge {name!r}: choose one of {JUDGE_CHOICES}")
    if position_bias == "both":
        return BothOrders(judge)
    if position_bias == "flip":
        return RandomFlip(judge, seed=seed)
    return judge
