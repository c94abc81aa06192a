"""The packed pair batch: whole pairs side by side in a few rows under a block attention mask.

Valid when chosen and rejected share their prompt, and only for attention implementations that take
a custom mask (:func:`packing_mask_kind`). No padding but a row's tail, each prompt once, one model call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hybridrl.preference.tokens import accepts_logits_to_keep, batch_to, token_logps

if TYPE_CHECKING:
    from hybridrl.preference.data import TokenizedPairs

PROMPT, CHOSEN, REJECTED = 0, 1, 2
"""Values of :attr:`PackedPairBatch.branch`: which part of its pair a packed token belongs to."""


@dataclass(frozen=True)
class PackedPairBatch:
    """Whole pairs packed side by side into a few rows, each laid out prompt, chosen, rejected.

    Nothing is padded but the tail of a row, and each prompt is stored once. A token attends to the
    earlier tokens of its own pair's prompt and of its own answer only (the mask is built from
    ``segment`` and ``branch``), and its position id is the one it has in its own prompt+answer
    sequence, so every log-prob equals the one of the concatenated batch.
    """

    input_ids: Tensor
    """``[R, L]`` token ids of the packed rows (padding only at the end of a row)."""
    position_ids: Tensor
    """``[R, L]`` position of each token in its own prompt+answer sequence."""
    segment: Tensor
    """``[R, L]`` the pair (its slot in ``indices``) each token belongs to; -1 on padding."""
    branch: Tensor
    """``[R, L]`` PROMPT, CHOSEN or REJECTED; -1 on padding."""
    pred_index: Tensor
    """``[N]`` flat index ``row * L + column`` of the position whose logits predict each completion token."""
    target_ids: Tensor
    """``[N]`` the completion tokens, chosen and rejected of every pair."""
    owner: Tensor
    """``[N]`` the sequence each completion token belongs to: slot ``i`` chosen, ``B + i`` rejected."""
    indices: Tensor
    """``[B]`` dataset index of each pair."""

    @property
    def num_pairs(self) -> int:
        return self.indices.numel()

    def num_tokens(self) -> int:
        """Tokens of the equivalent concatenated batch (prompt counted twice), as TRL counts them."""
        return int(2 * (self.branch == PROMPT).sum() + (self.branch > PROMPT).sum())

    def to(self, device: torch.device) -> PackedPairBatch:
        return batch_to(self, device)

    def logps(self, model: torch.nn.Module) -> tuple[Tensor, Tensor]:
        """See :func:`packed_logps`."""
        return packed_logps(model, self)


def collate_packed(
    pairs: TokenizedPairs, indices: Sequence[int] | Tensor, *, pad_token_id: int, row_length: int | None = None
) -> PackedPairBatch:
    """Pack the pairs of ``indices`` (which must share their prompts) into rows of at most ``row_length``.

    ``row_length`` (default: the longest pair) is raised to the longest pair if shorter. Pairs go into
    rows first-fit by decreasing length, which leaves little room at the row ends; attention costs
    grow with the row length, so rows are kept about as long as the longest pair.
    """
    index_list = [int(i) for i in indices]
    num_pairs = len(index_list)
    pieces = []
    for i in index_list:
        start = pairs.chosen_prompt_lengths[i]
        pieces.append((pairs.chosen_ids[i][:start], pairs.chosen_ids[i][start:], pairs.rejected_ids[i][start:]))
    sizes = [sum(map(len, piece)) for piece in pieces]
    capacity = max(max(sizes), row_length or 0)
    rows: list[list[int]] = []
    room: list[int] = []
    for slot in sorted(range(num_pairs), key=lambda s: -sizes[s]):
        fits = next((r for r, free in enumerate(room) if sizes[slot] <= free), None)
        if fits is None:
            rows.append([slot])
            room.append(capacity - sizes[slot])
        else:
            rows[fits].append(slot)
            room[fits] -= sizes[slot]
    width = capacity - min(room)
    # packing, not padding: several sequences share a row, so the rows are filled in place
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    branch = torch.full((len(rows), width), -1, dtype=torch.long)
    pred_index: list[int] = []
    target_ids: list[int] = []
    owner: list[int] = []
    for r, slots in enumerate(rows):
        column = 0
        for slot in slots:
            prompt, chosen, rejected = pieces[slot]
            parts = ((PROMPT, prompt, None), (CHOSEN, chosen, slot), (REJECTED, rejected, num_pairs + slot))
            prompt_last = r * width + column + len(prompt) - 1
            for part, tokens, sequence in parts:
                end = column + len(tokens)
                input_ids[r, column:end] = torch.tensor(tokens, dtype=torch.long)
                offset = 0 if part == PROMPT else len(prompt)
                position_ids[r, column:end] = torch.arange(offset, offset + len(tokens))
                segment[r, column:end] = slot
                branch[r, column:end] = part
                if sequence is not None:
                    # the prompt's last position predicts the first answer token, each token the next
                    pred_index += [prompt_last, *range(r * width + column, r * width + end - 1)]
                    target_ids += tokens
                    owner += [sequence] * len(tokens)
                column = end
    return PackedPairBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        segment=segment,
        branch=branch,
        pred_index=torch.tensor(pred_index, dtype=torch.long),
        target_ids=torch.tensor(target_ids, dtype=torch.long),
        owner=torch.tensor(owner, dtype=torch.long),
        indices=torch.tensor(index_list, dtype=torch.long),
    )


def packing_mask_kind(model: torch.nn.Module) -> str | None:
    """How ``model`` takes the custom attention mask of a packed batch: 'bool', 'float', or None (it cannot).

    SDPA takes a boolean mask (True: attend), eager attention an additive one; kernels that only know
    causal or padding masks (FlashAttention 2, ...) cannot run a packed batch.
    """
    inner = getattr(model, "module", model)
    config = getattr(inner, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    return {"sdpa": "bool", "eager": "float"}.get(implementation)


def _supports_boolean_logits_to_keep(model: torch.nn.Module) -> bool:
    # transformers slices hidden states by a boolean [R, L] mask (packed training) since slice_logits_to_keep
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:
        return False
    return accepts_logits_to_keep(model)


def packed_attention_mask(batch: PackedPairBatch, kind: str, dtype: torch.dtype) -> Tensor:
    """``[R, 1, L, L]`` mask: a token sees the earlier tokens of its pair's prompt and of its own answer."""
    segment, branch = batch.segment, batch.branch
    width = segment.size(1)
    earlier = torch.ones(width, width, dtype=torch.bool, device=segment.device).tril()
    same_pair = segment[:, :, None] == segment[:, None, :]
    same_text = (branch[:, None, :] == PROMPT) | (branch[:, :, None] == branch[:, None, :])
    # the diagonal keeps every padding row non-empty (a fully masked softmax row is NaN)
    visible = (same_pair & same_text & earlier) | torch.eye(width, dtype=torch.bool, device=segment.device)
    visible = visible[:, None]
    if kind == "bool":
        return visible
    return torch.zeros(visible.shape, dtype=dtype, device=segment.device).masked_fill_(~visible, torch.finfo(dtype).min)


def packed_logps(model: torch.nn.Module, batch: PackedPairBatch) -> tuple[Tensor, Tensor]:
    """:func:`~hybridrl.preference.layouts.concatenated.sequence_logps` of a packed batch: one model
    call, no padding, each prompt once.

    Same numbers as the concatenated forward (up to float summation order); the LM head runs only on
    the positions that predict a completion token.
    """
    kind = packing_mask_kind(model)
    if kind is None:
        raise ValueError(
            "this model's attention implementation cannot take a packed batch's mask: "
            "load it with attn_implementation='sdpa' or 'eager', or turn packing off"
        )
    inner = getattr(model, "module", model)
    dtype = next(inner.parameters()).dtype
    rows, width = batch.input_ids.shape
    keep = torch.zeros(rows * width, dtype=torch.bool, device=batch.input_ids.device)
    keep[batch.pred_index] = True
    kwargs = {"logits_to_keep": keep.view(rows, width)} if _supports_boolean_logits_to_keep(model) else {}
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=packed_attention_mask(batch, kind, dtype),
        position_ids=batch.position_ids,
        use_cache=False,
        **kwargs,
    ).logits
    # with ``keep`` the logits are [kept positions, V], in the row-major order of ``keep``
    predictors = keep.cumsum(0)[batch.pred_index] - 1 if kwargs else batch.pred_index
    logits = logits.reshape(-1, logits.size(-1))[predictors]
    per_token = token_logps(logits, batch.target_ids)
    num_sequences = 2 * batch.num_pairs
    logps = per_token.new_zeros(num_sequences).index_add(0, batch.owner, per_token)
    return logps, torch.bincount(batch.owner, minlength=num_sequences)
