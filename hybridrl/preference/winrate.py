"""Pairwise win-rate matrices of several policies under a judge, with confidence intervals.

With intransitive preferences a ranking against one baseline can mislead (A beats the reference more
often than B does, yet B beats A), so the evaluation is the full matrix ``win_rate[i][j] = P(player i
beats player j)`` (EGPO's protocol, gotcha 15.9). Written as JSON in one fixed format that the report
tool draws as a heatmap::

    {"players": [names], "win_rate": [[p_ij]], "ci_low": [[...]], "ci_high": [[...]],
     "judge": "majority", "num_comparisons": [[n_ij]], "seed": 0}

The diagonal is 0.5 with ``n_ii = 0``. For language models every player answers every prompt
``samples_per_prompt`` times with the same sampling seed (common random numbers: two copies of one
model tie exactly); answer ``s`` of player i is compared with answer ``s`` of player j, ties count one
half, and the interval is a percentile bootstrap over *prompts* (answers to one prompt are correlated).
Tabular policies use the exact ``P`` (:func:`hybridrl.preference.games.exact_winrate_matrix`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hybridrl.core.checkpoint import atomic_write_text
from hybridrl.preference.oracles import PreferenceOracle, judge_batch

if TYPE_CHECKING:
    import torch
    from torch import Tensor
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from hybridrl.preference.prompts import Prompt

MATRIX_KEYS = ("players", "win_rate", "ci_low", "ci_high", "judge", "num_comparisons", "seed")


def bootstrap_interval(
    per_prompt: np.ndarray, *, rng: np.random.Generator, resamples: int = 1000, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``per_prompt`` (one mean outcome per prompt)."""
    picks = rng.integers(0, len(per_prompt), size=(resamples, len(per_prompt)))
    means = per_prompt[picks].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def matrix_from_outcomes(
    players: Sequence[str],
    outcomes: Mapping[tuple[int, int], np.ndarray],
    *,
    judge: str,
    seed: int,
    resamples: int = 1000,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The win-rate JSON from ``outcomes[(i, j)]``, ``[num_prompts, samples]`` preferences of i over j (i < j)."""
    n = len(players)
    win = np.full((n, n), 0.5)
    low, high = np.full((n, n), 0.5), np.full((n, n), 0.5)
    count = np.zeros((n, n), dtype=int)
    rng = np.random.default_rng(seed)
    for (i, j), values in sorted(outcomes.items()):
        values = np.asarray(values, dtype=np.float64)
        per_prompt = values.mean(axis=1)
        lo, hi = bootstrap_interval(per_prompt, rng=rng, resamples=resamples, confidence=confidence)
        win[i, j], win[j, i] = values.mean(), 1.0 - values.mean()
        low[i, j], high[i, j] = lo, hi
        low[j, i], high[j, i] = 1.0 - hi, 1.0 - lo
        count[i, j] = count[j, i] = values.size
    return {
        "players": list(players),
        "win_rate": win.tolist(),
        "ci_low": low.tolist(),
        "ci_high": high.tolist(),
        "judge": judge,
        "num_comparisons": count.tolist(),
        "seed": seed,
    }


def winrate_matrix(
    models: Mapping[str, PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    judge: PreferenceOracle,
    *,
    judge_name: str,
    seed: int = 0,
    samples_per_prompt: int = 4,
    temperature: float = 1.0,
    max_new_tokens: int = 12,
    resamples: int = 1000,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Sample every model's answers to ``prompts`` and judge every pair of models (see the module docstring).

    A prompt may be a conversation: the players read it through the tokenizer's chat template, the judge
    as it is.
    """
    from hybridrl.preference.task import sample_responses

    if len(models) < 2:
        raise ValueError(f"a win-rate matrix needs at least two players, got {len(models)}")
    if not prompts:
        raise ValueError("no prompts to evaluate on")
    names = list(models)
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    answers = [
        sample_responses(
            models[name], tokenizer, repeated, seed=seed, temperature=temperature, max_new_tokens=max_new_tokens
        )[0]
        for name in names
    ]
    outcomes = {
        (i, j): judge_batch(judge, repeated, answers[i], answers[j]).reshape(len(prompts), samples_per_prompt)
        for i in range(len(names))
        for j in range(i + 1, len(names))
    }
    return matrix_from_outcomes(
        names, outcomes, judge=judge_name, seed=seed, resamples=resamples, confidence=confidence
    )


def write_matrix(matrix: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the matrix JSON (only the fixed keys, in their order)."""
    missing = [k for k in MATRIX_KEYS if k not in matrix]
    if missing:
        raise ValueError(f"win-rate matrix lacks {missing}")
    # keys in the documented order (atomic_write_json would sort them)
    atomic_write_text(path, json.dumps({k: matrix[k] for k in MATRIX_KEYS}, indent=2) + "\n")


def format_matrix(matrix: Mapping[str, Any]) -> str:
    """A markdown table: row player's win rate against the column player, with the CI under it."""
    players = matrix["players"]
    lines = ["| row beats column | " + " | ".join(players) + " |", "|---" * (len(players) + 1) + "|"]
    for i, name in enumerate(players):
        cells = [
            "–"
            if i == j
            else f"{matrix['win_rate'][i][j]:.3f} [{matrix['ci_low'][i][j]:.2f}, {matrix['ci_high'][i][j]:.2f}]"
            for j in range(len(players))
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def answer_log_ratios(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    batch_size: int = 512,
) -> Tensor:
    r"""``[N]`` :math:`\log\pi(y|x) - \log\pi_{ref}(y|x)` of each answer (completion ``i`` to prompt ``i``),
    summed over its tokens, float32 on the CPU, no gradient; empty for no answers.

    Averaged over answers sampled from :math:`\pi` at temperature 1 it estimates :math:`KL(\pi \| \pi_{ref})`
    (:func:`kl_to_reference`; self-play's held-out evaluation). ``reference`` may be a LoRA policy seen with
    its adapter off (:class:`hybridrl.preference.models.AdapterDisabled`).
    """
    import torch

    from hybridrl.preference.logprobs import completion_logps

    if not completions:
        return torch.zeros(0)
    sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completions, strict=True)]
    lengths = [len(p) for p in prompt_ids]
    return (completion_logps(policy, sequences, lengths, pad_token_id=pad_token_id, batch_size=batch_size)
            - completion_logps(reference, sequences, lengths, pad_token_id=pad_token_id, batch_size=batch_size))


def kl_to_reference(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    *,
    seed: int,
    samples_per_prompt: int = 4,
    max_new_tokens: int = 12,
    batch_size: int = 512,
) -> dict[str, float]:
    r"""Monte-Carlo :math:`KL(\pi \| \pi_{ref})` per answer on ``prompts``, in nats.

    Answers :math:`y \sim \pi(\cdot|x)` are sampled at temperature 1 (seeded), and the estimate is the mean
    of :math:`\log\pi(y|x) - \log\pi_{ref}(y|x)` summed over each answer's tokens (:func:`answer_log_ratios`),
    with its standard error over prompts (answers to one prompt correlate). A policy that wins by drifting
    far from its reference shows it here: report it next to the win rate.
    """
    import torch

    from hybridrl.preference.prompts import encode_prompts
    from hybridrl.preference.sampling import sample_completions

    device = next(policy.parameters()).device
    prompt_ids = [ids for ids in encode_prompts(tokenizer, prompts) for _ in range(samples_per_prompt)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    completions = sample_completions(
        policy, prompt_ids, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, max_new_tokens=max_new_tokens,
        temperature=1.0, generator=torch.Generator(device=device).manual_seed(seed), batch_size=batch_size,
    )
    ratio = answer_log_ratios(policy, reference, prompt_ids, completions, pad_token_id=pad, batch_size=batch_size)
    per_prompt = ratio.double().reshape(len(prompts), samples_per_prompt).mean(dim=1)
    stderr = float(per_prompt.std() / len(prompts) ** 0.5) if len(prompts) > 1 else float("nan")
    return {"kl": float(per_prompt.mean()), "kl_stderr": stderr}
