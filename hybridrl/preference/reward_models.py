r"""Bradley-Terry reward models as judges, and their training: any Hugging Face sequence classifier with
one output (``num_labels=1``).

A reward model scores a prompt and an answer read together, :math:`r(x, y)`; as a judge its preference is
:math:`P(a \succ b \mid x) = \sigma(r(x, a) - r(x, b))` (Bradley-Terry), transitive by construction.
What it reads (:func:`encode_for_reward`, the same for training and judging):

- a conversation (a prompt of ``{"role", "content"}`` messages): the reward model tokenizer's chat
  template over the prompt's messages and an assistant message holding the answer; a tokenizer without
  a template reads ``role: content`` lines instead;
- text: prompt + answer + EOS (EOS appended, as TRL's ``RewardTrainer`` does, so that the score is read
  after the answer has ended).

The score is the classifier's output at the last token that is not padding (transformers' sequence
classifiers pool there; sequences are padded on the right with the model's ``pad_token_id``, which is
set from the tokenizer, or EOS, when the checkpoint has none).

:func:`train_reward_model` fits :math:`-\log\sigma(r(x, y_w) - r(x, y_l))` (:func:`bradley_terry_loss`)
with AdamW on prompt/chosen/rejected rows, from a causal LM (a new one-output head goes on top) or a
sequence-classification checkpoint; :func:`save_reward_model` writes it with ``save_pretrained`` into a
temporary directory renamed into place; ``--judge rm:DIR`` then loads it (:func:`load_reward_judge`).
Unlike the pairwise and self-play trainers, this one has no checkpoints: a killed run starts over.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from hybridrl.preference.data import chat_template_ids, is_conversation, looks_like_a_path, split_implicit_prompt
from hybridrl.preference.prompts import Prompt, prompt_key
from hybridrl.preference.tokens import pad

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Answer = str | list[dict[str, str]]
"""An answer: text, or assistant messages (the chosen/rejected columns of conversational pair data)."""


# ---------------------------------------------------------------------------------------------------
# What the reward model reads


def encode_for_reward(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, answer: Answer, *, max_length: int | None = None
) -> list[int]:
    """Token ids of ``prompt`` and ``answer`` read together (see the module docstring); the last
    ``max_length`` of them when longer (the answer's end, where the score is read, stays)."""
    if is_conversation(prompt):
        turn = answer if isinstance(answer, list) else [{"role": "assistant", "content": answer.strip()}]
        messages = [*prompt, *turn]
        if getattr(tokenizer, "chat_template", None):
            ids = chat_template_ids(tokenizer, messages)
        else:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
            ids = list(tokenizer(text + (tokenizer.eos_token or ""))["input_ids"])
    elif isinstance(answer, str):
        eos = tokenizer.eos_token or ""
        text = prompt + answer
        ids = list(tokenizer(text if text.endswith(eos) else text + eos)["input_ids"])
    else:
        raise ValueError("a text prompt needs a text answer, got messages: give the prompt as messages too")
    return ids[-max_length:] if max_length is not None else ids


def reward_pad_token_id(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The id sequences are padded with: the model's ``pad_token_id``, set from the tokenizer's pad token
    (else EOS) when the checkpoint has none (GPT-2's), since the classifier finds each row's last token by it."""
    config = model.config
    if getattr(config, "pad_token_id", None) is None:
        fallback = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if fallback is None:
            raise ValueError("the reward model's tokenizer has neither a pad nor an EOS token to pad batches with")
        config.pad_token_id = fallback
    return int(config.pad_token_id)


def reward_scores(model: PreTrainedModel, rows: Sequence[Sequence[int]], *, pad_token_id: int) -> Tensor:
    """``[N]`` float32 rewards of token rows, in one forward (gradient flows unless under ``no_grad``)."""
    device = next(model.parameters()).device
    ids, mask = pad(rows, pad_token_id, side="right")
    # decoders would build a KV cache nobody reads; encoders (BERT-style reward models) take no such flag
    kwargs = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
    return logits[:, 0].float()


# ---------------------------------------------------------------------------------------------------
# The judge


@dataclass
class RewardModelJudge:
    """A reward model as a :class:`~hybridrl.preference.oracles.PreferenceOracle`:
    ``P(first beats second) = sigmoid(r(prompt, first) - r(prompt, second))``.

    Each call scores every distinct (prompt, answer) once, so the ``K(K-1)/2`` pairs of a prompt's ``K``
    answers cost ``K`` rows; nothing is cached from one call to the next.
    """

    model: PreTrainedModel
    """A sequence classifier with one output, on the device the judge runs on."""
    tokenizer: PreTrainedTokenizerBase
    """The reward model's tokenizer (its chat template renders conversations)."""
    batch_size: int = 32
    """Rows per forward (length-sorted, so that a batch carries little padding)."""
    max_length: int | None = None
    """Keep the last this many tokens of a longer row; None keeps all."""
    pad_token_id: int = field(init=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.pad_token_id = reward_pad_token_id(self.model, self.tokenizer)
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def rewards(self, prompts: Sequence[Prompt], answers: Sequence[Answer]) -> np.ndarray:
        """``[N]`` float64 rewards of ``answers[i]`` to ``prompts[i]``; only their differences mean anything."""
        if len(prompts) != len(answers):
            raise ValueError(f"rewards needs as many prompts as answers, got {len(prompts)} and {len(answers)}")
        slot: dict[str, int] = {}
        rows: list[list[int]] = []
        index = []
        for prompt, answer in zip(prompts, answers, strict=True):
            key = json.dumps([prompt_key(prompt), answer if isinstance(answer, str) else prompt_key(answer)])
            if key not in slot:
                slot[key] = len(rows)
                rows.append(encode_for_reward(self.tokenizer, prompt, answer, max_length=self.max_length))
            index.append(slot[key])
        scores = torch.zeros(len(rows), dtype=torch.float64)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            values = reward_scores(self.model, [rows[i] for i in chunk], pad_token_id=self.pad_token_id)
            scores[chunk] = values.double().cpu()
        return scores[index].numpy()

    def preference_batch(
        self, prompts: Sequence[Prompt], firsts: Sequence[Answer], seconds: Sequence[Answer]
    ) -> np.ndarray:
        """``[N]`` float64 ``sigmoid(r(prompt, first) - r(prompt, second))``, in one :meth:`rewards` call."""
        n = len(prompts)
        r = torch.from_numpy(self.rewards([*prompts, *prompts], [*firsts, *seconds]))
        return torch.sigmoid(r[:n] - r[n:]).numpy()

    def preference(self, prompt: Prompt, first: Answer, second: Answer) -> float:
        return float(self.preference_batch([prompt], [first], [second])[0])


def _from_pretrained(name_or_path: str | os.PathLike, **kwargs: Any) -> tuple[PreTrainedModel, dict]:
    from transformers import AutoModelForSequenceClassification

    if looks_like_a_path(name_or_path) and not Path(name_or_path).exists():  # not a failed Hub lookup
        raise ValueError(f"reward model {name_or_path} does not exist: pass a local model directory or a "
                         "Hugging Face model id")
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            str(name_or_path), dtype=torch.float32, output_loading_info=True, **kwargs
        )
    except (OSError, ValueError) as err:  # a missing path, or a config no sequence classifier exists for
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cannot load a reward model from {str(name_or_path)!r} ({reason}): pass a local model directory "
            "or a Hugging Face model id"
        ) from err


def load_reward_judge(
    name_or_path: str | os.PathLike, *, device: str | None = None, batch_size: int = 32
) -> RewardModelJudge:
    """The reward model at ``name_or_path`` (HF id or local directory) as a judge on ``device``.

    Refused in one line: a model with more than one output, and a checkpoint without a trained head
    (a causal LM, say, whose new head would score at random).
    """
    from hybridrl.core.seeding import resolve_device
    from hybridrl.preference.models import load_tokenizer

    model, info = _from_pretrained(name_or_path)
    fix = f"train one with `hybridrl pref train-judge rm --model {name_or_path} --pairs PAIRS --out DIR`"
    if info.get("missing_keys"):
        missing = ", ".join(sorted(info["missing_keys"])[:3])
        raise ValueError(f"{name_or_path} holds no trained reward head (missing {missing}): {fix}")
    if model.config.num_labels != 1:
        raise ValueError(f"{name_or_path} has {model.config.num_labels} outputs, but a reward model judge needs "
                         f"one (num_labels=1): {fix}")
    tokenizer = load_tokenizer(name_or_path)
    return RewardModelJudge(model.to(resolve_device(device)), tokenizer, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------------
# Training


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    r"""Mean of :math:`-\log\sigma(r_w - r_l)` over ``[...]`` rewards, with the accuracy and mean margin."""
    margin = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(margin).mean()
    return loss, {"accuracy": (margin > 0).float().mean().detach(), "margin": margin.mean().detach()}


@dataclass(frozen=True, kw_only=True)
class RewardTrainConfig:
    """Optimisation of a reward model (defaults follow TRL's ``RewardConfig`` unless said otherwise)."""

    steps: int = 200
    """AdamW steps."""
    batch_size: int = 8
    """Pairs per step (HF ``per_device_train_batch_size`` default)."""
    learning_rate: float = 1e-4
    """AdamW step size (TRL RewardConfig default)."""
    weight_decay: float = 0.0
    """AdamW weight decay (HF default)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (HF default)."""
    max_length: int | None = 1024
    """Longest row in tokens, cut at its start (TRL instead drops longer pairs); None keeps every token."""
    seed: int = 0
    """Seeds a new head's initialisation and the pair order."""
    device: str | None = None
    """cpu, cuda, cuda:N or None for automatic."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 tokens or None, got {self.max_length}")


def load_reward_model_for_training(
    name_or_path: str | os.PathLike, *, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A one-output sequence classifier from any causal or sequence-classification checkpoint, and its
    tokenizer; a head that is new (or of another size) is initialised from ``seed``."""
    from hybridrl.preference.models import load_tokenizer

    with torch.random.fork_rng(devices=[]):  # seeded head, the caller's RNG untouched
        torch.manual_seed(seed)
        model, _ = _from_pretrained(name_or_path, num_labels=1, ignore_mismatched_sizes=True)
    return model, load_tokenizer(name_or_path)


def reward_pairs(
    tokenizer: PreTrainedTokenizerBase, rows: Sequence[Mapping[str, Any]] | Any, *, max_length: int | None
) -> tuple[list[list[int]], list[list[int]]]:
    """(chosen rows, rejected rows) of token ids from prompt/chosen/rejected rows (an implicit prompt is
    split off); pairs whose answers are equal or missing are skipped (they carry no preference)."""
    chosen_rows, rejected_rows = [], []
    for row in rows:
        chosen, rejected, prompt = row.get("chosen"), row.get("rejected"), row.get("prompt")
        if not isinstance(chosen, (str, list)) or not isinstance(rejected, (str, list)) or chosen == rejected:
            continue
        if prompt is None:
            prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
        chosen_rows.append(encode_for_reward(tokenizer, prompt, chosen, max_length=max_length))
        rejected_rows.append(encode_for_reward(tokenizer, prompt, rejected, max_length=max_length))
    return chosen_rows, rejected_rows


def train_reward_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]] | Any,
    config: RewardTrainConfig | None = None,
) -> list[float]:
    """Fit ``model`` (in place) on prompt/chosen/rejected ``rows`` with :func:`bradley_terry_loss`; returns
    the loss of every step. Batches are drawn from seeded permutations of the pairs, epoch after epoch.

    Raises:
        ValueError: no pair to train on.
        DivergenceError: the loss became NaN/inf (nothing should then be saved).
    """
    from hybridrl.core.seeding import resolve_device
    from hybridrl.core.session import DivergenceError
    from hybridrl.preference.models import disable_dropout

    config = config or RewardTrainConfig()
    chosen_rows, rejected_rows = reward_pairs(tokenizer, rows, max_length=config.max_length)
    if not chosen_rows:
        raise ValueError("no pair with two different answers to train a reward model on")
    pad_token_id = reward_pad_token_id(model, tokenizer)
    disable_dropout(model)  # TRL's RewardConfig disables dropout too
    model.to(resolve_device(config.device)).train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    n, size = len(chosen_rows), config.batch_size
    stream = torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-config.steps * size // n))])
    losses = []
    for step in range(config.steps):
        batch = stream[step * size : (step + 1) * size].tolist()
        # chosen and rejected in one forward: one padded batch of 2B rows
        rewards = reward_scores(
            model, [chosen_rows[i] for i in batch] + [rejected_rows[i] for i in batch], pad_token_id=pad_token_id
        )
        loss, _ = bradley_terry_loss(rewards[: len(batch)], rewards[len(batch) :])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        losses.append(loss.detach())
    model.eval()
    values = torch.stack(losses).cpu()  # one device sync for the whole run
    if not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).nonzero()[0])
        raise DivergenceError(f"reward model training diverged at step {bad + 1} (the loss is NaN/inf): "
                              "lower --lr")
    return values.tolist()


def save_reward_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: str | os.PathLike
) -> Path:
    """Write model and tokenizer with ``save_pretrained`` into a temporary directory beside ``out`` and
    rename it into place, so that ``out`` never holds half a model; an existing model directory there is
    replaced, any other existing path is refused."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "config.json").exists())):
        raise ValueError(f"{out} exists and is not a model directory: pass a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)
    return out
