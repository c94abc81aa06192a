"""Ancestral sampling from causal LMs, written once for self-play, the synthetic task and win rates.

Plain multinomial sampling at a temperature (no top-k, no top-p), token by token with a KV cache,
from an explicit :class:`torch.Generator` so that the caller's global RNG is never touched. With the
same generator state this draws exactly what ``model.generate(do_sample=True, top_k=0, top_p=1.0)``
draws from a generator seeded alike: the same softmax, one ``multinomial`` per step over every row
(finished rows too, their token then replaced by padding), stopping when every row has ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hybridrl.preference.tokens import accepts_logits_to_keep, cache_name, pad


@dataclass(frozen=True)
class Samples:
    """What :func:`sample` drew."""

    completions: list[list[int]]
    """One completion per prompt: its token ids, up to and including the first EOS when one was drawn."""
    entropy_sum: float = 0.0
    """Sum over the drawn tokens (up to and including EOS) of the sampling distribution's entropy (nats);
    0 unless asked for."""
    num_tokens: int = 0
    """How many tokens ``entropy_sum`` sums over."""

    @property
    def mean_entropy(self) -> float:
        """Mean per-token entropy of the sampling distribution: a diversity measure needing no second forward."""
        return self.entropy_sum / max(self.num_tokens, 1)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    *,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator,
    mixture: tuple[torch.nn.Module, float] | None = None,
    batch_size: int = 256,
    entropy: bool = False,
) -> Samples:
    """One sampled completion per prompt in ``prompt_ids``, ``batch_size`` prompts per batch.

    With ``mixture=(reference, alpha)`` every next token is drawn from
    ``softmax(((1 - alpha) * logits_policy + alpha * logits_ref) / temperature)``, the per-token geometric
    mixture of Nash-MD (TRL's ``GeometricMixtureWrapper``), with both models' KV caches kept. With
    ``entropy`` the sampling distribution's entropy is summed over the drawn tokens.

    ``generator`` must live on the model's device; the draws depend on ``batch_size`` (one draw per
    row and step), so a caller that wants to reproduce a run keeps it fixed.
    """
    models = [model] if mixture is None else [model, mixture[0]]
    device = next(model.parameters()).device
    states = [m.training for m in models]
    for m in models:
        m.eval()
    completions: list[list[int]] = []
    entropy_sum, num_tokens = 0.0, 0
    try:
        for start in range(0, len(prompt_ids), batch_size):
            # left padding: every prompt ends at the last column, where its first new token goes
            ids, mask = (t.to(device) for t in pad(prompt_ids[start : start + batch_size], pad_token_id, side="left"))
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            caches: list[Any] = [None] * len(models)
            cache_names = [cache_name(m) for m in models]
            tokens, step_mask = ids, mask
            step_positions = positions
            done = torch.zeros(ids.size(0), dtype=torch.bool, device=device)
            generated, entropies = [], []
            for _ in range(max_new_tokens):
                logits = []
                for n, m in enumerate(models):
                    kwargs = {"logits_to_keep": 1} if accepts_logits_to_keep(m) else {}
                    out = m(
                        input_ids=tokens,
                        attention_mask=step_mask,
                        position_ids=step_positions,
                        use_cache=True,
                        **{cache_names[n]: caches[n]},
                        **kwargs,
                    )
                    caches[n] = getattr(out, cache_names[n])
                    logits.append(out.logits[:, -1].float())
                mixed = logits[0] if mixture is None else (1 - mixture[1]) * logits[0] + mixture[1] * logits[1]
                scores = mixed / temperature
                if entropy:
                    log_probs = scores.log_softmax(-1)
                    # 0 * log 0 = 0 for tokens of probability 0
                    entropies.append(-(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(-1))
                token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
                token = torch.where(done, torch.full_like(token, pad_token_id), token)
                generated.append(token)
                done |= token == eos_token_id
                if bool(done.all()):
                    break
                tokens = token[:, None]
                step_mask = torch.cat([step_mask, torch.ones_like(tokens)], dim=1)
                step_positions = step_positions[:, -1:] + 1
            new = torch.stack(generated, dim=1)
            is_eos = (new == eos_token_id).long()
            # the tokens up to and including the first EOS; later ones are padding
            keep = (is_eos.cumsum(1) - is_eos) == 0
            if entropy:
                entropy_sum += float((torch.stack(entropies, dim=1) * keep).sum())
                num_tokens += int(keep.sum())
            completions.extend(row[k].tolist() for row, k in zip(new.cpu(), keep.cpu(), strict=True))
    finally:
        for m, state in zip(models, states, strict=True):
            m.train(state)
    return Samples(completions, entropy_sum, num_tokens)


def sample_completions(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    *,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator,
    mixture: tuple[torch.nn.Module, float] | None = None,
    batch_size: int = 256,
) -> list[list[int]]:
    """One sampled completion (token ids, EOS included when produced) per prompt; see :func:`sample`."""
    return sample(
        model,
        prompt_ids,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        generator=generator,
        mixture=mixture,
        batch_size=batch_size,
    ).completions
