"""The concatenated pair batch: chosen and rejected as full prompt+answer rows of one right-padded batch.

Rows ``[0, B)`` are prompt+chosen, rows ``[B, 2B)`` prompt+rejected; one forward scores both. Always
valid (the two answers may have different prompts, e.g. after ``keep_end`` truncation), and the only
layout whose model call is a plain padded forward (what DDP and every attention kernel take).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hybridrl.preference.tokens import accepts_logits_to_keep, batch_to, pad, token_logps

if TYPE_CHECKING:
    from hybridrl.preference.data import TokenizedPairs


@dataclass(frozen=True)
class PairBatch:
    """One concatenated batch: rows ``[0, B)`` are prompt+chosen, rows ``[B, 2B)`` prompt+rejected."""

    input_ids: Tensor
    """``[2B, T]`` token ids, right-padded to the longest row of *this* batch."""
    attention_mask: Tensor
    """``[2B, T]`` 1 on real tokens."""
    completion_mask: Tensor
    """``[2B, T]`` 1 on completion tokens (the tokens whose log-prob is summed)."""
    indices: Tensor
    """``[B]`` dataset index of each pair (to look up cached reference log-probs)."""

    @property
    def num_pairs(self) -> int:
        return self.indices.numel()

    def num_tokens(self) -> int:
        """Non-padding tokens (prompt + completion, chosen + rejected), counted as TRL's ``num_tokens``."""
        return int(self.attention_mask.sum())

    def to(self, device: torch.device) -> PairBatch:
        return batch_to(self, device)

    def logps(self, model: torch.nn.Module) -> tuple[Tensor, Tensor]:
        """See :func:`sequence_logps`."""
        return sequence_logps(model, self)


def collate_sequences(
    sequences: Sequence[Sequence[int]],
    prompt_lengths: Sequence[int],
    *,
    pad_token_id: int,
    indices: Sequence[int] = (),
) -> PairBatch:
    """Full sequences (prompt + completion) as one right-padded batch whose completions are scored.

    The rows need not come in pairs: self-play scores a flat list of sampled answers this way
    (``indices`` then stays empty).
    """
    input_ids, attention_mask = pad(sequences, pad_token_id, side="right")
    positions = torch.arange(input_ids.size(1))
    completion_mask = attention_mask * (positions >= torch.tensor(list(prompt_lengths))[:, None]).long()
    return PairBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        indices=torch.tensor(list(indices), dtype=torch.long),
    )


def collate_pairs(pairs: TokenizedPairs, indices: Sequence[int] | Tensor, *, pad_token_id: int) -> PairBatch:
    """Concatenate chosen and rejected of ``indices`` into one right-padded ``[2B, T]`` batch.

    ``T`` is the longest sequence of this batch, never a global maximum.
    """
    index_list = [int(i) for i in indices]
    sequences = [pairs.chosen_ids[i] for i in index_list] + [pairs.rejected_ids[i] for i in index_list]
    starts = [pairs.chosen_prompt_lengths[i] for i in index_list] + [
        pairs.rejected_prompt_lengths[i] for i in index_list
    ]
    return collate_sequences(sequences, starts, pad_token_id=pad_token_id, indices=index_list)


def sequence_logps(model: torch.nn.Module, batch: PairBatch) -> tuple[Tensor, Tensor]:
    """Summed completion log-probs ``[2B]`` (float32) and completion lengths ``[2B]`` of a pair batch.

    One forward for chosen and rejected. Gradients flow to ``model`` unless called under ``no_grad``.
    """
    width = batch.input_ids.size(1)
    # The first completion token of the batch is predicted from the position before it: logits before
    # that are never used, so the LM head is skipped for them.
    first_completion = int(batch.completion_mask.float().argmax(dim=1).min())
    keep = min(max(width - first_completion + 1, 2), width)  # an empty prompt: the first token is unscored
    kwargs = {"logits_to_keep": keep} if accepts_logits_to_keep(model) else {}
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **kwargs).logits
    logits = logits[:, -keep:-1]
    labels = batch.input_ids[:, width - keep + 1 :]
    mask = batch.completion_mask[:, width - keep + 1 :]
    per_token = token_logps(logits, labels)
    return (per_token * mask).sum(dim=1), mask.sum(dim=1)
