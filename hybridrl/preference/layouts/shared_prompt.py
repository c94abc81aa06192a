"""The shared-prompt pair batch: each prompt stored and run once, its KV cache reused by both answers.

Valid when chosen and rejected start with the same prompt (:func:`shares_prompts`); gives the
concatenated batch's numbers with a prompt's share of the work saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hybridrl.preference.tokens import accepts_logits_to_keep, batch_to, cache_name, pad, token_logps

if TYPE_CHECKING:
    from hybridrl.preference.data import TokenizedPairs


@dataclass(frozen=True)
class SharedPromptBatch:
    """A pair batch whose prompt is stored once: ``B`` left-padded prompts, ``2B`` right-padded completions.

    Rows ``[0, B)`` of the completions are the chosen answers, ``[B, 2B)`` the rejected ones.
    """

    prompt_ids: Tensor
    """``[B, P]`` prompt tokens, left-padded (so every prompt ends at the last column)."""
    prompt_mask: Tensor
    """``[B, P]`` 1 on real prompt tokens."""
    completion_ids: Tensor
    """``[2B, C]`` completion tokens, right-padded."""
    completion_mask: Tensor
    """``[2B, C]`` 1 on real completion tokens."""
    indices: Tensor
    """``[B]`` dataset index of each pair."""

    @property
    def num_pairs(self) -> int:
        return self.indices.numel()

    def num_tokens(self) -> int:
        """Tokens of the equivalent concatenated batch (prompt counted twice), as TRL counts them."""
        return int(2 * self.prompt_mask.sum() + self.completion_mask.sum())

    def to(self, device: torch.device) -> SharedPromptBatch:
        return batch_to(self, device)

    def logps(self, model: torch.nn.Module) -> tuple[Tensor, Tensor]:
        """See :func:`shared_prompt_logps`."""
        return shared_prompt_logps(model, self)


def shares_prompts(pairs: TokenizedPairs, indices: Sequence[int]) -> bool:
    """Whether chosen and rejected start with the same non-empty prompt in every pair of ``indices``."""
    for i in indices:
        length = pairs.chosen_prompt_lengths[i]
        if (
            length == 0
            or length != pairs.rejected_prompt_lengths[i]
            or pairs.chosen_ids[i][:length] != pairs.rejected_ids[i][:length]
        ):
            return False
    return True


def collate_shared_prompt(
    pairs: TokenizedPairs, indices: Sequence[int] | Tensor, *, pad_token_id: int
) -> SharedPromptBatch:
    """Batch ``indices`` with each prompt once (see :func:`shares_prompts` for when this is valid)."""
    index_list = [int(i) for i in indices]
    prompts = [pairs.chosen_ids[i][: pairs.chosen_prompt_lengths[i]] for i in index_list]
    completions = [pairs.chosen_ids[i][pairs.chosen_prompt_lengths[i] :] for i in index_list] + [
        pairs.rejected_ids[i][pairs.rejected_prompt_lengths[i] :] for i in index_list
    ]
    prompt_ids, prompt_mask = pad(prompts, pad_token_id, side="left")
    completion_ids, completion_mask = pad(completions, pad_token_id, side="right")
    return SharedPromptBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        indices=torch.tensor(index_list, dtype=torch.long),
    )


def shared_prompt_logps(model: torch.nn.Module, batch: SharedPromptBatch) -> tuple[Tensor, Tensor]:
    """:func:`~hybridrl.preference.layouts.concatenated.sequence_logps` with each prompt run once
    instead of twice (same numbers, less work).

    The prompts go through the model once (left-padded, so they all end at the last column); their
    key/value cache, indexed twice, is the context of the chosen and of the rejected completions,
    which go through together in a second call. Gradients flow through the cache into the prompt
    positions exactly as in the concatenated forward. Saves the prompt's share of the forward and
    backward: a third of the work when prompt and answers are equally long.

    Needs a model that accepts a key-value cache and ``position_ids`` (every HF decoder does).
    """
    num_pairs = batch.prompt_ids.size(0)
    prompt_positions = (batch.prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    prompt_out = model(
        input_ids=batch.prompt_ids,
        attention_mask=batch.prompt_mask,
        position_ids=prompt_positions,
        use_cache=True,
        **({"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}),
    )
    both = torch.cat([torch.arange(num_pairs), torch.arange(num_pairs)]).to(batch.prompt_ids.device)
    name = cache_name(model)
    cache = getattr(prompt_out, name)
    cache.reorder_cache(both)  # index_select: differentiable, prompt rows reused by chosen and rejected
    prompt_lengths = batch.prompt_mask.sum(dim=1)[both]
    width = batch.completion_ids.size(1)
    positions = prompt_lengths[:, None] + torch.arange(width, device=batch.completion_ids.device)
    mask = torch.cat([batch.prompt_mask[both], batch.completion_mask], dim=1)
    logits = model(
        input_ids=batch.completion_ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **{name: cache},
    ).logits
    # the first completion token is scored by the prompt's last position, the others by the completion
    first = token_logps(prompt_out.logits[:, -1][both], batch.completion_ids[:, 0])
    rest = token_logps(logits[:, :-1], batch.completion_ids[:, 1:]) * batch.completion_mask[:, 1:]
    return first * batch.completion_mask[:, 0] + rest.sum(dim=1), batch.completion_mask.sum(dim=1)
