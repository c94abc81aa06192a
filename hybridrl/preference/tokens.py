"""What every batch of token rows shares: padding into rectangles, device moves, per-token log-probs.

The lowest room of the LM side of :mod:`hybridrl.preference`: the batch layouts
(:mod:`hybridrl.preference.layouts`), the reference log-probs, the sampler and the task's SFT warm-up
all pad and score tokens through these few functions, so that each is written once.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Literal, TypeVar

import torch
from torch import Tensor

BatchT = TypeVar("BatchT")


def pad(
    rows: Sequence[Sequence[int]], pad_value: int, *, side: Literal["left", "right"] = "right"
) -> tuple[Tensor, Tensor]:
    """Token rows as one ``[N, W]`` long tensor padded with ``pad_value``, and its ``[N, W]`` 0/1 mask.

    ``W`` is the longest row of ``rows``. Right padding keeps every row starting at column 0 (what a
    scored batch wants); left padding makes every row end at the last column (what a batch about to be
    continued by sampling, or a prompt followed by its answers, wants).
    """
    tensors = [torch.as_tensor(row, dtype=torch.long) for row in rows]
    ids = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=pad_value, padding_side=side)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(t) for t in tensors], batch_first=True, padding_side=side)
    return ids, mask


def batch_to(batch: BatchT, device: torch.device) -> BatchT:
    """A copy of a batch dataclass with every tensor field on ``device``."""
    return replace(batch, **{f.name: getattr(batch, f.name).to(device, non_blocking=True) for f in fields(batch)})


def _forward_parameters(model: torch.nn.Module) -> Mapping[str, inspect.Parameter]:
    inner = getattr(model, "module", model)  # DDP
    if hasattr(inner, "get_base_model"):  # PEFT forwards **kwargs to the base model
        inner = inner.get_base_model()
    return inspect.signature(inner.forward).parameters


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether ``model``'s forward can skip the LM head on positions whose logits are not wanted."""
    return "logits_to_keep" in _forward_parameters(model)


def cache_name(model: torch.nn.Module) -> str:
    """The name of the key-value cache in ``model``'s forward and output: ``cache`` since transformers
    5.2x renamed it (the old name still works there but warns), ``past_key_values`` before."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """``log softmax(logits)[labels]`` in float32, shape of ``labels``, without the full log-softmax."""
    logits = logits.float()  # fp32 log-probs: bf16 errors are large on summed sequences (gotcha 15.1)
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)
