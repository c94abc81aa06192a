r"""Held-out evaluation of a self-play run: the policy against its reference on prompts it never trains on.

After every ``eval_every`` iterations (and after the last), the policy answers each eval prompt
``eval_samples_per_prompt`` times and the reference answers it as often from the same seed (common
random numbers: while the policy still equals its reference the two draw the same answers, which tie
exactly). The run's judge compares answer ``k`` of the policy with answer ``k`` of the reference. The
iteration's metrics line gets:

- ``eval/win_rate_vs_ref``: the mean preference of the policy's answer over the reference's (ties count
  one half), answers sampled at the run's temperature and ``max_new_tokens``;
- ``eval/kl_to_ref``: Monte-Carlo :math:`KL(\pi \| \pi_{ref})` per answer in nats, the mean over the
  policy's answers of :math:`\log\pi(y|x) - \log\pi_{ref}(y|x)`
  (:func:`hybridrl.preference.winrate.answer_log_ratios`). The KL is that of the model's own
  distribution, so its answers are those above at temperature 1, else a second draw at temperature 1;
- ``eval/judge_calls``: the answer pairs the evaluation judged (counted as the training's ``judge_calls``
  counts its pairs), kept out of the training ``judge_calls``, which benchmarks sum as the training cost.

The reference is the trainer's: a frozen copy, or with LoRA the base model with the adapter disabled.

Why no eval loss: a self-play loss is defined on targets the method builds from the policy's own fresh
answers judged against each other (``K(K-1)/2`` queries per prompt, and for the extragradient methods a
half-step policy's answers too), anchored to the iterate :math:`\pi_t` itself; on held-out prompts that is a
second training iteration without its update, and its value moves with the targets rather than with the
policy's quality. The win rate over the reference and the KL to it are the held-out learning curve.

Reproducibility: the answers come from the trainer's sampling stream of (iteration, ``EVAL_PHASE``), a
phase no training step uses, and a judge that flips a seeded coin per query
(:class:`~hybridrl.preference.oracles.RandomFlip`) is given a coin of its own seeded alike, so
evaluating consumes no training stream (the training answers, judgments and updates are those of a run
without evaluation) and a resumed run that redoes an evaluation gets the same numbers.

Several processes: each evaluates its contiguous shard of the eval prompts; the per-answer outcomes and
log-ratios are gathered and averaged over all answers, the one-process computation on those answers
(the draws themselves depend on the shards, as the training's do).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hybridrl.preference.oracles import PreferenceOracle, RandomFlip, judge_batch
from hybridrl.preference.prompts import Prompt
from hybridrl.preference.sampling import sample_completions
from hybridrl.preference.winrate import answer_log_ratios

EVAL_PHASE = 2
"""The sampling phase of an evaluation (training samples in phases 0 and 1)."""


def eval_due(iteration: int, every: int, iterations: int) -> bool:
    """Whether the policy is evaluated after iteration ``iteration`` (from 0) of ``iterations``."""
    done = iteration + 1
    return done >= iterations or (every > 0 and done % every == 0)


def evaluation_judge(judge: PreferenceOracle, seed: int) -> PreferenceOracle:
    """``judge`` for one evaluation: a coin-flipping judge gets a fresh coin seeded by ``seed``, so that
    evaluating neither moves the training's coin nor depends on where it stands."""
    if isinstance(judge, RandomFlip):
        return dataclasses.replace(judge, seed=seed)
    return judge


@dataclass(frozen=True)
class EvalShard:
    """One process's evaluation answers, reduced to what the metrics need (CPU tensors, gathered)."""

    outcomes: Tensor
    """``[n]`` float64 preferences of the policy's answer over the reference's."""
    log_ratios: Tensor
    """``[n]`` :math:`\\log\\pi(y|x) - \\log\\pi_{ref}(y|x)` of the policy's temperature-1 answers."""


@torch.no_grad()
def evaluate_shard(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    prompts: Sequence[Prompt],
    prompt_ids: Sequence[Sequence[int]],
    judge: PreferenceOracle,
    *,
    generator: Callable[[], torch.Generator],
    decode: Callable[[Sequence[Sequence[int]]], list[str]],
    samples_per_prompt: int,
    temperature: float,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    batch_size: int,
) -> EvalShard:
    """Sample, judge and score the answers to ``prompts`` (this process's shard; see the module docstring).

    ``generator()`` returns a new generator in the same state on every call: the policy and the
    reference draw from equal streams. ``decode`` turns completions into the text the judge reads.
    """
    k = samples_per_prompt
    rows = [ids for ids in prompt_ids for _ in range(k)]
    if not rows:  # a process whose shard is empty (fewer eval prompts than processes)
        return EvalShard(torch.zeros(0, dtype=torch.float64), torch.zeros(0))

    def draw(model: torch.nn.Module, at: float) -> list[list[int]]:
        return sample_completions(model, rows, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                  max_new_tokens=max_new_tokens, temperature=at, generator=generator(),
                                  batch_size=batch_size)

    ours, theirs = draw(policy, temperature), draw(reference, temperature)
    repeated = [p for p in prompts for _ in range(k)]
    outcomes = torch.as_tensor(judge_batch(judge, repeated, decode(ours), decode(theirs)), dtype=torch.float64)
    answers = ours if temperature == 1.0 else draw(policy, 1.0)
    ratios = answer_log_ratios(policy, reference, rows, answers, pad_token_id=pad_token_id, batch_size=batch_size)
    return EvalShard(outcomes, ratios)


def summarize(shards: Sequence[EvalShard]) -> dict[str, float]:
    """The ``eval/...`` metrics of the shards of every process, as means over all their answers."""
    outcomes = torch.cat([shard.outcomes for shard in shards])
    ratios = torch.cat([shard.log_ratios for shard in shards]).double()
    if outcomes.numel() == 0:
        raise ValueError("an evaluation without answers: no eval prompts")
    return {
        "eval/win_rate_vs_ref": float(outcomes.mean()),
        "eval/kl_to_ref": float(ratios.mean()),
        "eval/judge_calls": float(outcomes.numel()),
    }
