"""Completion log-probs over a whole dataset: the reference table cached once, and flat lists of answers.

``log pi(y|x) = sum_{t in completion} log pi(y_t | x, y_<t)``: logits at position ``t-1`` score the
token at ``t``; prompt and padding tokens are masked out and the rest is summed. How one batch is
scored depends on its layout (:mod:`hybridrl.preference.layouts`: concatenated, shared-prompt or
packed, each with its own log-prob function); this module runs them over datasets, without gradient:
the reference table of a pair dataset (:func:`compute_reference_logps`, cached on disk by
:func:`cached_reference_logps`) and the log-probs of sampled answers (:func:`completion_logps`).
The layouts' names are importable from here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from hybridrl.core.checkpoint import atomic_save, load_checkpoint
from hybridrl.preference.data import TokenizedPairs
from hybridrl.preference.layouts import (
    AnyPairBatch,
    collate,
    collate_sequences,
    packed_attention_mask,
    packed_logps,
    packing_mask_kind,
    pair_logps,
    sequence_logps,
    shared_prompt_logps,
)
from hybridrl.preference.tokens import token_logps


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module, *, adapter: bool) -> Iterator[None]:
    """Inside, ``model`` is in eval mode without gradient; ``adapter=False`` also disables a LoRA adapter."""
    inner = getattr(model, "module", model)
    adapter_off = (
        inner.disable_adapter() if not adapter and hasattr(inner, "disable_adapter") else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), adapter_off:
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def reference_mode(model: torch.nn.Module) -> Iterator[None]:
    """Inside, ``model`` computes reference log-probs: no gradient, and a LoRA adapter disabled."""
    with _evaluating(model, adapter=False):
        yield


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
    share_prompt: bool = True,
    pack: bool = False,
    gather: Callable[[Tensor], Tensor] | None = None,
    save: bool = True,
    key: str | None = None,
) -> tuple[Tensor, bool]:
    """Reference log-probs from ``cache_dir`` if this model and data were seen before, else computed, saved.

    Returns the ``[N, 2]`` table and whether it came from the cache. Sharded, each process computes its
    rows (:func:`compute_reference_logps`) and ``gather`` (e.g. a sum over processes) assembles the
    whole table; only a whole table is written, and only where ``save`` (the main process).
    """
    key = key or fingerprint(model, pairs)
    path = Path(cache_dir) / f"ref_logps-{key}.pt"
    if path.exists():
        return load_checkpoint(path)["ref_logps"], True
    table = compute_reference_logps(model, pairs, pad_token_id=pad_token_id, batch_size=batch_size, device=device,
                                    shard=shard, share_prompt=share_prompt, pack=pack)
    if gather is not None:
        table = gather(table)
    if save and (shard[1] == 1 or gather is not None):
        atomic_save({"ref_logps": table, "key": key}, path)
    return table, False


def completion_logps(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    prompt_lengths: Sequence[int],
    *,
    pad_token_id: int,
    batch_size: int = 256,
) -> Tensor:
    """``[N]`` float32 summed completion log-probs of full sequences (prompt + completion), no gradient.

    The concatenated layout's log-probs over a flat list of sequences, in batches of ``batch_size`` in
    the given order. Unlike :func:`compute_reference_logps` a LoRA adapter stays on: self-play scores
    its answers under the current policy too, not only under the reference.
    """
    device = next(model.parameters()).device
    out = []
    with _evaluating(model, adapter=True):
        for start in range(0, len(sequences), batch_size):
            batch = collate_sequences(
                sequences[start : start + batch_size],
                prompt_lengths[start : start + batch_size],
                pad_token_id=pad_token_id,
            ).to(device)
            out.append(sequence_logps(model, batch)[0].float().cpu())
    return torch.cat(out)


__all__ = [
    "AnyPairBatch",
    "cached_reference_logps",
    "collate",
    "completion_logps",
    "compute_reference_logps",
    "fingerprint",
    "packed_attention_mask",
    "packed_logps",
    "packing_mask_kind",
    "pair_logps",
    "reference_mode",
    "sequence_logps",
    "shared_prompt_logps",
    "token_logps",
]
