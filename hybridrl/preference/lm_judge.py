r"""A causal language model as a pairwise judge (LLM-as-a-judge): ``--judge lm:ID_OR_PATH``.

The judge reads the prompt and both answers in one instruction (:func:`judge_prompt_ids`) that asks
which answer is better, and its preference is the probability it puts on the first answer's label
against the second's as the next token:

    P(first beats second) = exp(l_A) / (exp(l_A) + exp(l_B)),

with ``l_A`` and ``l_B`` the next-token logits of the labels (``A`` and ``B``). No text is generated: one
forward per pair, batched on the judge's device. A tokenizer with a chat template reads the
instruction as a user message followed by the generation prompt; one without reads it as text ending
in ``Better answer:`` (the labels are then scored with their leading space, as they would be written).

Unlike a reward model, such a judge can be intransitive and favours one position; wrap it with
``--position-bias both`` (both orders averaged) or ``flip`` (a random order per query).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from hybridrl.preference.data import is_conversation
from hybridrl.preference.prompts import Prompt
from hybridrl.preference.tokens import pad

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

INSTRUCTION = "Which answer to the question is better? Reply with {first} or {second} only."


def _as_text(prompt: Prompt) -> str:
    if is_conversation(prompt):
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    return str(prompt).strip()


def judge_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, first: str, second: str,
                     labels: tuple[str, str]) -> list[int]:
    """Token ids of the judge's instruction for one pair, ending where the label is to be read."""
    text = (f"{INSTRUCTION.format(first=labels[0], second=labels[1])}\n\nQuestion: {_as_text(prompt)}\n\n"
            f"Answer {labels[0]}: {first.strip()}\n\nAnswer {labels[1]}: {second.strip()}")
    if getattr(tokenizer, "chat_template", None):
        return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                  add_generation_prompt=True, return_dict=False))
    return list(tokenizer(f"{text}\n\nBetter answer:")["input_ids"])


def label_token_ids(tokenizer: PreTrainedTokenizerBase, labels: tuple[str, str]) -> tuple[int, int]:
    """The first token of each label as the judge would write it; two distinct known tokens, else one line."""
    spaced = not getattr(tokenizer, "chat_template", None)  # after "Better answer:" a label follows a space
    ids = []
    for label in labels:
        tokens = tokenizer((" " if spaced else "") + label, add_special_tokens=False)["input_ids"]
        if not tokens or tokens[0] == tokenizer.unk_token_id:
            raise ValueError(f"the judge's tokenizer has no token for the label {label!r}: pick labels it knows")
        ids.append(int(tokens[0]))
    if ids[0] == ids[1]:
        raise ValueError(f"the labels {labels} begin with the same token: pick labels that differ at once")
    return ids[0], ids[1]


@dataclass
class LMJudge:
    """A causal LM as a :class:`~hybridrl.preference.oracles.PreferenceOracle` (see the module docstring)."""

    model: PreTrainedModel
    """Any causal LM (an instruction-tuned one judges best), on the device the judge runs on."""
    tokenizer: PreTrainedTokenizerBase
    """Its tokenizer (its chat template, when it has one, frames the instruction)."""
    labels: tuple[str, str] = ("A", "B")
    """How the instruction names the first and the second answer."""
    batch_size: int = 16
    """Pairs per forward (length-sorted, so that a batch carries little padding)."""
    label_ids: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.label_ids = label_token_ids(self.tokenizer, self.labels)
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def preference_batch(self, prompts: Sequence[Prompt], firsts: Sequence[str], seconds: Sequence[str]) -> np.ndarray:
        """``[N]`` float64 P(first beats second): the softmax of the two labels' next-token logits."""
        rows = [judge_prompt_ids(self.tokenizer, p, a, b, self.labels)
                for p, a, b in zip(prompts, firsts, seconds, strict=True)]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        device = next(self.model.parameters()).device
        out = torch.zeros(len(rows), dtype=torch.float64)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            ids, mask = pad([rows[i] for i in chunk], pad_id, side="right")  # positions start at 0 in every row
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            last = mask.sum(dim=1).to(device) - 1
            pair = logits[torch.arange(len(chunk), device=device), last][:, list(self.label_ids)].float()
            out[chunk] = pair.softmax(dim=-1)[:, 0].double().cpu()
        return out.numpy()

    def preference(self, prompt: Prompt, first: str, second: str) -> float:
        return float(self.preference_batch([prompt], [first], [second])[0])


def load_lm_judge(name_or_path: str | os.PathLike, *, device: str | None = None) -> LMJudge:
    """The causal LM at ``name_or_path`` (HF id or local directory) as a pairwise judge on ``device``."""
    from hybridrl.core.seeding import resolve_device
    from hybridrl.preference.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(name_or_path).to(resolve_device(device))
    return LMJudge(model=model, tokenizer=load_tokenizer(name_or_path))
