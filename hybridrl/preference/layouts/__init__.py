"""Pair batch layouts: how the chosen and rejected answers of a batch of pairs meet the model.

Each layout is one module holding its batch dataclass, its collate function and its log-prob
function; the batch knows its own log-prob function (``batch.logps(model)``), so nothing picks one
by type. All three give the same ``[2B]`` summed completion log-probs (chosen ``[0, B)``, rejected
``[B, 2B)``) and ``[2B]`` completion lengths:

- :mod:`.concatenated` (:class:`PairBatch`): prompt+answer rows, right-padded; always valid;
- :mod:`.shared_prompt` (:class:`SharedPromptBatch`): each prompt run once, its KV cache reused;
- :mod:`.packed` (:class:`PackedPairBatch`): whole pairs packed into rows under a block mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from hybridrl.preference.layouts.concatenated import PairBatch, collate_pairs, collate_sequences, sequence_logps
from hybridrl.preference.layouts.packed import (
    CHOSEN,
    PROMPT,
    REJECTED,
    PackedPairBatch,
    collate_packed,
    packed_attention_mask,
    packed_logps,
    packing_mask_kind,
)
from hybridrl.preference.layouts.shared_prompt import (
    SharedPromptBatch,
    collate_shared_prompt,
    shared_prompt_logps,
    shares_prompts,
)

if TYPE_CHECKING:
    from hybridrl.preference.data import TokenizedPairs

AnyPairBatch = PairBatch | SharedPromptBatch | PackedPairBatch


def collate(
    pairs: TokenizedPairs,
    indices: list[int],
    *,
    pad_token_id: int,
    share_prompt: bool = True,
    pack: bool = False,
) -> AnyPairBatch:
    """The cheapest valid layout for ``indices``.

    When chosen and rejected share their prompts: packed (``pack``, see :func:`packed_logps`) or
    shared-prompt; otherwise the concatenated batch.
    """
    if share_prompt and shares_prompts(pairs, indices):
        if pack:
            return collate_packed(pairs, indices, pad_token_id=pad_token_id)
        return collate_shared_prompt(pairs, indices, pad_token_id=pad_token_id)
    return collate_pairs(pairs, indices, pad_token_id=pad_token_id)


def pair_logps(model: nn.Module, batch: AnyPairBatch) -> tuple[Tensor, Tensor]:
    """Completion log-probs ``[2B]`` and lengths ``[2B]`` of any batch layout."""
    return batch.logps(model)


__all__ = [
    "CHOSEN",
    "PROMPT",
    "REJECTED",
    "AnyPairBatch",
    "PackedPairBatch",
    "PairBatch",
    "SharedPromptBatch",
    "collate",
    "collate_packed",
    "collate_pairs",
    "collate_sequences",
    "collate_shared_prompt",
    "packed_attention_mask",
    "packed_logps",
    "packing_mask_kind",
    "pair_logps",
    "sequence_logps",
    "shared_prompt_logps",
    "shares_prompts",
]
