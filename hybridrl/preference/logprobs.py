"""Per-sequence log-probabilities of completions, and the reference log-probs cached once per dataset.

``log pi(y|x) = sum_{t in completion} log pi(y_t | x, y_<t)``: logits at position ``t-1`` score the
token at ``t``; prompt and padding tokens are masked out and the rest is summed. Chosen and rejected
answers go through the model in one forward (the rows of a :class:`~hybridrl.preference.data.PairBatch`).

Speed: the LM head only runs from the first completion position of the batch on (``logits_to_keep``),
and log-softmax is never materialised for the whole vocabulary: the gathered logit minus a logsumexp
gives the same number with one fewer ``[2B, T, V]`` tensor.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from hybridrl.core.checkpoint import atomic_save, load_checkpoint
from hybridrl.preference.data import (
    PROMPT,
    PackedPairBatch,
    PairBatch,
    SharedPromptBatch,
    TokenizedPairs,
    collate_packed,
    collate_pairs,
    collate_shared_prompt,
    shares_prompts,
)

AnyPairBatch = PairBatch | SharedPromptBatch | PackedPairBatch


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    inner = getattr(model, "module", model)  # DDP
    if hasattr(inner, "get_base_model"):  # PEFT forwards **kwargs to the base model
        inner = inner.get_base_model()
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """``log softmax(logits)[labels]`` in float32, shape of ``labels``, without the full log-softmax."""
    logits = logits.float()  # fp32 log-probs: bf16 errors are large on summed sequences (gotcha 15.1)
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(model: torch.nn.Module, batch: PairBatch) -> tuple[Tensor, Tensor]:
    """Summed completion log-probs ``[2B]`` (float32) and completion lengths ``[2B]`` of a pair batch.

    One forward for chosen and rejected. Gradients flow to ``model`` unless called under ``no_grad``.
    """
    width = batch.input_ids.size(1)
    # The first completion token of the batch is predicted from the position before it: logits before
    # that are never used, so the LM head is skipped for them.
    first_completion = int(batch.completion_mask.float().argmax(dim=1).min())
    keep = min(max(width - first_completion + 1, 2), width)  # an empty prompt: the first token is unscored
    kwargs = {"logits_to_keep": keep} if _accepts_logits_to_keep(model) else {}
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **kwargs
    ).logits
    logits = logits[:, -keep:-1]
    labels = batch.input_ids[:, width - keep + 1 :]
    mask = batch.completion_mask[:, width - keep + 1 :]
    per_token = token_logps(logits, labels)
    return (per_token * mask).sum(dim=1), mask.sum(dim=1)


def shared_prompt_logps(model: torch.nn.Module, batch: SharedPromptBatch) -> tuple[Tensor, Tensor]:
    """:func:`sequence_logps` with each prompt run once instead of twice (same numbers, less work).

    The prompts go through the model once (left-padded, so they all end at the last column); their
    key/value cache, indexed twice, is the context of the chosen and of the rejected completions,
    which go through together in a second call. Gradients flow through the cache into the prompt
    positions exactly as in the concatenated forward. Saves the prompt's share of the forward and
    backward: a third of the work when prompt and answers are equally long.

    Needs a model that accepts ``past_key_values`` and ``position_ids`` (every HF decoder does).
    """
    num_pairs = batch.prompt_ids.size(0)
    prompt_positions = (batch.prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    prompt_out = model(
        input_ids=batch.prompt_ids,
        attention_mask=batch.prompt_mask,
        position_ids=prompt_positions,
        use_cache=True,
        **({"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}),
    )
    both = torch.cat([torch.arange(num_pairs), torch.arange(num_pairs)]).to(batch.prompt_ids.device)
    cache = prompt_out.past_key_values
    cache.reorder_cache(both)  # index_select: differentiable, prompt rows reused by chosen and rejected
    prompt_lengths = batch.prompt_mask.sum(dim=1)[both]
    width = batch.completion_ids.size(1)
    positions = prompt_lengths[:, None] + torch.arange(width, device=batch.completion_ids.device)
    mask = torch.cat([batch.prompt_mask[both], batch.completion_mask], dim=1)
    logits = model(
        input_ids=batch.completion_ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    ).logits
    # the first completion token is scored by the prompt's last position, the others by the completion
    first = token_logps(prompt_out.logits[:, -1][both], batch.completion_ids[:, 0])
    rest = token_logps(logits[:, :-1], batch.completion_ids[:, 1:]) * batch.completion_mask[:, 1:]
    return first * batch.completion_mask[:, 0] + rest.sum(dim=1), batch.completion_mask.sum(dim=1)


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
    return _accepts_logits_to_keep(model)


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
    return torch.zeros(visible.shape, dtype=dtype, device=segment.device).masked_fill_(
        ~visible, torch.finfo(dtype).min
    )


def packed_logps(model: torch.nn.Module, batch: PackedPairBatch) -> tuple[Tensor, Tensor]:
    """:func:`sequence_logps` of a packed batch: one model call, no padding, each prompt once.

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


def pair_logps(model: torch.nn.Module, batch: AnyPairBatch) -> tuple[Tensor, Tensor]:
    """Completion log-probs ``[2B]`` and lengths ``[2B]`` of any batch layout."""
    if isinstance(batch, PackedPairBatch):
        return packed_logps(model, batch)
    if isinstance(batch, SharedPromptBatch):
        return shared_prompt_logps(model, batch)
    return sequence_logps(model, batch)


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


@contextlib.contextmanager
def reference_mode(model: torch.nn.Module) -> Iterator[None]:
    """Inside, ``model`` computes reference log-probs: no gradient, and a LoRA adapter disabled."""
    inner = getattr(model, "module", model)
    adapter_off = inner.disable_adapter() if hasattr(inner, "disable_adapter") else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), adapter_off:
            yield
    finally:
        model.train(was_training)


def _length_sorted_batches(pairs: TokenizedPairs, batch_size: int, shard: tuple[int, int]) -> list[list[int]]:
    """Indices of this process's shard, sorted by length so that each batch carries little padding."""
    rank, world = shard
    mine = range(rank, len(pairs), world)
    ordered = sorted(mine, key=lambda i: max(len(pairs.chosen_ids[i]), len(pairs.rejected_ids[i])))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def compute_reference_logps(
    model: torch.nn.Module,
    pairs: TokenizedPairs,
    *,
    pad_token_id: int,
    batch_size: int = 64,
    device: torch.device | None = None,
    shard: tuple[int, int] = (0, 1),
    share_prompt: bool = True,
    pack: bool = False,
) -> Tensor:
    """Reference log-probs of every pair, ``[N, 2]`` float32 on the CPU (column 0 chosen, 1 rejected).

    ``model`` is the reference: the frozen initial policy, or a LoRA model (its adapter is disabled).
    With ``shard=(rank, world)`` a process fills only its rows (the others stay 0) so that a sum over
    processes assembles the whole table.
    """
    device = device or next(model.parameters()).device
    table = torch.zeros(len(pairs), 2)
    with reference_mode(model):
        for indices in _length_sorted_batches(pairs, batch_size, shard):
            batch = collate(pairs, indices, pad_token_id=pad_token_id, share_prompt=share_prompt, pack=pack)
            batch = batch.to(device)
            logps, _ = pair_logps(model, batch)
            table[batch.indices.cpu()] = logps.view(2, -1).t().cpu()
    return table


def fingerprint(model: torch.nn.Module, pairs: TokenizedPairs) -> str:
    """A hash of the model's weights and the tokenized pairs: the reference cache's key."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for sequences in (pairs.chosen_ids, pairs.rejected_ids):
        for sequence in sequences:
            digest.update(len(sequence).to_bytes(4, "little"))
            digest.update(torch.tensor(sequence, dtype=torch.int64).numpy().tobytes())
    digest.update(str((pairs.chosen_prompt_lengths, pairs.rejected_prompt_lengths)).encode())
    return digest.hexdigest()[:20]


def cached_reference_logps(
    model: torch.nn.Module,
    pairs: TokenizedPairs,
    cache_dir: str | os.PathLike,
    *,
    pad_token_id: int,
    batch_size: int = 64,
    device: torch.device | None = None,
    shard: tuple[int, int] = (0, 1),
    key: str | None = None,
) -> tuple[Tensor, bool]:
    """Reference log-probs from ``cache_dir`` if this model and data were seen before, else computed, saved.

    Returns the ``[N, 2]`` table (this shard's rows only when sharded, see
    :func:`compute_reference_logps`) and whether it came from the cache.
    """
    key = key or fingerprint(model, pairs)
    path = Path(cache_dir) / f"ref_logps-{key}.pt"
    if path.exists():
        return load_checkpoint(path)["ref_logps"], True
    table = compute_reference_logps(
        model, pairs, pad_token_id=pad_token_id, batch_size=batch_size, device=device, shard=shard
    )
    if shard[1] == 1:
        atomic_save({"ref_logps": table, "key": key}, path)
    return table, False
