r"""Iterative self-play for Nash learning on language models: sample, judge, build targets, update.

One loop serves every method in :mod:`hybridrl.preference.selfplay_methods` (INPO, SPPO, Nash-MP,
EGPO, Nash-MD, online IPO). Iteration ``t``:

1. **sample** ``K`` answers per prompt from the current policy :math:`\pi_t` (ancestral sampling with a
   KV cache, seeded by ``(seed, t)``); Nash-MD also samples ``K`` *opponent* answers from the geometric
   mixture :math:`\pi^\mu \propto \pi_t^{1-\alpha}\pi_{ref}^{\alpha}`, mixed per token on the logits;
2. **judge** every pair of the policy's answers to a prompt (``K(K-1)/2`` oracle queries; the other
   order is ``1 - p``), or every (policy, opponent) pair, with the oracle;
3. **persist** answers and judgments atomically (``iterations/iter-TTTT.pt``) *before* any update, so a
   run killed later never asks the oracle again about them;
4. **anchors**: log-probs of the answers under :math:`\pi_{ref}` (a frozen copy; with LoRA the base model,
   the adapter disabled) and :math:`\pi_t` (the policy itself before the update) are computed once,
   without gradient, and cached for the iteration: no copy of the previous iterate is kept;
5. **targets**: the method turns the judgments into pairs of answers and per-pair targets;
6. **update**: ``steps_per_iteration`` AdamW steps on the method's loss (``losses.LOSSES``), or, for a
   method whose loss has no anchor to :math:`\pi_t` (online IPO, Nash-MD), one step on all the fresh
   pairs, as their reference trainers (``SelfPlaySpec.one_step``);
   extragradient methods (EGPO, Nash-MP) first take the steps on targets against :math:`\pi_t`, reaching
   :math:`\pi_{t+1/2}`, sample opponents from it and judge the policy's answers against them (persisted too),
   then **restore the trainable parameters and their AdamW state** of :math:`\pi_t` and take the steps again on
   targets against :math:`\pi_{t+1/2}` (EGPO's LM trainer backs up the optimizer state for the same reason:
   undoing a step by its negative gradient is exact only for plain SGD);
7. **evaluate** (when the run has eval prompts, every ``eval_every`` iterations and after the last): the
   updated policy against the reference on held-out prompts, win rate and KL on the iteration's line
   (:mod:`hybridrl.preference.selfplay_eval`);
8. **checkpoint** (weights, optimizer, iteration) atomically.

Rerunning with the same ``out_dir`` resumes after the last checkpoint and reuses every persisted
sample file; data order and sampling depend only on ``(seed, iteration, phase)``, so a resumed run
reaches the same parameters as an uninterrupted one.

Prompts are text or conversations (:mod:`hybridrl.preference.prompts`): the policy reads a conversation
through its chat template, the judge reads the prompt as given. With LoRA (``lora_r > 0``) only the
adapter trains: the reference is the base model with the adapter disabled (no copy of the weights), the
extragradient backup holds the adapter and its AdamW state, checkpoints hold the adapter and the
optimizer, and the final ``model/`` is the base with the adapter merged in, a plain model.

Scaling (run settings in :mod:`hybridrl.preference.selfplay_config`):

- **several processes** under ``accelerate launch --multi_gpu`` or ``torchrun`` (data-parallel; see
  :mod:`hybridrl.preference.selfplay_parallel`): each process samples and judges its shard of the
  prompts, all of them train on the gathered samples with gradients summed over the processes, so a
  step is the one-process step on the same global batch; only the main process writes files;
- **mixed precision**: bf16 autocast, or fp16 autocast with loss scaling (CUDA);
- **learning-rate schedule**: constant (the default), linear or cosine after a warm-up, over the run's
  kept optimizer steps or each iteration's; the extragradient restore puts its count back too.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from hybridrl.core.checkpoint import atomic_save, load_checkpoint
from hybridrl.core.optim import lr_factor
from hybridrl.core.session import CHECKPOINT, DivergenceError, Session
from hybridrl.preference import selfplay_methods  # noqa: F401  (importing it registers every method)
from hybridrl.preference.data import TokenizedPairs
from hybridrl.preference.logprobs import collate, completion_logps, packing_mask_kind, pair_logps
from hybridrl.preference.losses import PairLogps, resolve_loss
from hybridrl.preference.models import AdapterDisabled, apply_lora, disable_dropout, enable_gradient_checkpointing
from hybridrl.preference.oracles import PreferenceOracle, judge_batch
from hybridrl.preference.prompts import Prompt, encode_prompts, prompts_digest
from hybridrl.preference.sampling import sample_completions
from hybridrl.preference.selfplay_config import LORA_SETTINGS, SCHEDULE_SETTINGS, SelfPlayConfig
from hybridrl.preference.selfplay_eval import EVAL_PHASE, eval_due, evaluate_shard, evaluation_judge, summarize
from hybridrl.preference.selfplay_parallel import join_shards, make_processes
from hybridrl.preference.selfplay_spec import (
    SELFPLAY_METHODS,
    PairTargets,
    SelfPlaySpec,
    all_pairs,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def resolve_selfplay_method(name: str) -> SelfPlaySpec:
    """The method called ``name``; unknown names list the valid ones."""
    if name not in SELFPLAY_METHODS:
        raise ValueError(f"unknown self-play method {name!r}: choose one of {', '.join(SELFPLAY_METHODS)}")
    return SELFPLAY_METHODS[name]


# ---------------------------------------------------------------------------------------------------
# The loop


@dataclass
class JudgedSamples:
    """One iteration's answers and judgments, as persisted (plain lists and CPU tensors)."""

    prompt_indices: list[int]
    """Which prompts (indices into the run's prompt list), P of them."""
    completions: list[list[int]]
    """``P * K`` completion token ids of the policy, row ``p * K + k``."""
    texts: list[str]
    """The same answers decoded (what the judge read)."""
    preferences: Tensor
    """``[P, K, K]`` P(answer i beats answer j) for the policy's answers; 0.5 on the diagonal."""
    opponent_completions: list[list[int]] = field(default_factory=list)
    """``P * K`` opponent answers (Nash-MD's mixture, or the half-step policy's), when the method has them."""
    opponent_preferences: Tensor | None = None
    """``[P, K, K]`` P(policy answer i beats opponent answer m)."""


class SelfPlayTrainer:
    """Runs a self-play method on a causal LM; see the module docstring for one iteration.

    The run directory is a :class:`~hybridrl.core.session.Session`'s: ``config.json`` holds the run's
    record (a rerun with another is refused), ``checkpoint.pt`` the state after the last finished
    iteration, ``metrics.jsonl`` one line per iteration and ``results.json`` the last one.

    Args:
        spec: the method (``resolve_selfplay_method``).
        method_config: its hyperparameters (``method_config(spec, overrides)``).
        config: run settings.
        model: the policy (trained in place; with LoRA, wrapped by peft and merged at the end).
        ref_model: the frozen reference :math:`\\pi_{ref}`; None takes a frozen copy of ``model``, and with
            LoRA it must be None (the reference is then the base model with the adapter disabled).
        tokenizer: encodes prompts (a conversation through its chat template) and decodes answers.
        prompts: text or conversations (lists of role/content messages).
        judge: any :class:`~hybridrl.preference.oracles.PreferenceOracle`.
        out_dir: checkpoint, per-iteration samples, metrics.jsonl, config.json, and ``model/`` at the end.
        eval_prompts: held-out prompts (text or conversations) on which the policy is evaluated against the
            reference every ``config.eval_every`` iterations and after the last (``eval/...`` metrics);
            None or empty: no evaluation. They are not part of the run's record: evaluating changes
            nothing in training.
    """

    FREE_SETTINGS = ("iterations", "device", "progress", "micro_batch_size", "gradient_checkpointing",
                     "cpu_backups", "report_to", "eval_every", "eval_samples_per_prompt")
    """Run settings left out of the record: more iterations extend a run, and the others change how a
    step is computed or reported, not what it computes."""

    def __init__(
        self,
        *,
        spec: SelfPlaySpec,
        method_config: Any,
        config: SelfPlayConfig,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[Prompt],
        judge: PreferenceOracle,
        out_dir: str | os.PathLike,
        ref_model: PreTrainedModel | None = None,
        eval_prompts: Sequence[Prompt] | None = None,
    ) -> None:
        if not prompts:
            raise ValueError("no prompts to sample from")
        self.spec, self.method_config, self.config = spec, method_config, config
        self.loss_fn = resolve_loss(spec.loss)
        self.processes = make_processes(config.device)
        self.device = self.processes.device
        if config.mixed_precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"mixed_precision 'fp16' needs a CUDA device, not {self.device.type} (float16 "
                             "autocast and loss scaling are for GPUs): use 'bf16' or 'no'")
        self.lora = config.lora_r > 0
        if self.lora and ref_model is not None:
            raise ValueError("with LoRA the reference is the base model with the adapter disabled: pass no ref_model")
        disable_dropout(model)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.ref_model: torch.nn.Module
        if self.lora:
            targets = list(config.lora_target_modules)
            with torch.random.fork_rng(devices=[]):  # the adapter's initial weights follow the run's seed
                torch.manual_seed(config.seed)
                model = apply_lora(model, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                                   target_modules="all-linear" if targets == ["all-linear"] else targets)
            self.model = model.to(self.device)
            self.ref_model = AdapterDisabled(self.model)
        else:
            ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
            disable_dropout(ref_model)
            self.model = model.to(self.device)
            self.ref_model = ref_model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token: sampled answers could never end")
        self.prompts = list(prompts)
        self.prompt_ids: list[list[int]] = encode_prompts(tokenizer, self.prompts)
        self.eval_prompts = list(eval_prompts or [])
        self.eval_prompt_ids: list[list[int]] = encode_prompts(tokenizer, self.eval_prompts)
        self.judge = judge
        self.out_dir = Path(out_dir)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        trained = self.optimizer.param_groups[0]["params"]
        if config.mixed_precision == "fp16" and any(p.dtype == torch.float16 for p in trained):
            raise ValueError("mixed_precision 'fp16' keeps float32 weights and scales their gradients, but the "
                             "trained weights are float16: load the model in float32 (--dtype float32)")
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor())
        # disabled (every call a pass-through) unless fp16: float16 gradients underflow without scaling
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.mixed_precision == "fp16")
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.iteration = 0
        self.judge_calls = 0
        self._session: Session | None = None

    def _lr_factor(self) -> Callable[[int], float]:
        """Step -> learning-rate multiplier, for ``LambdaLR`` (which counts the optimizer steps kept)."""
        config = self.config
        per_iteration = 1 if self.spec.one_step else config.steps_per_iteration
        span = per_iteration * (1 if config.lr_schedule_span == "iteration" else config.iterations)
        warmup = math.ceil(span * config.warmup_ratio)
        if warmup >= span:
            raise ValueError(f"warmup_ratio {config.warmup_ratio} warms up all {span} optimizer steps of the "
                             "schedule (the rate never leaves 0): lower it")
        restart = config.lr_schedule_span == "iteration"

        def factor(step: int) -> float:  # a plain function: LambdaLR's state_dict leaves it out
            return lr_factor(step % span if restart else step, span, warmup, config.lr_schedule)

        return factor

    # -- files ---------------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def samples_path(self, iteration: int, kind: str) -> Path:
        return self.out_dir / "iterations" / f"iter-{iteration:04d}-{kind}.pt"

    def run_record(self) -> dict[str, Any]:
        """What defines this run, saved as ``config.json``: a rerun with another record is refused.

        More iterations extend a run (unless a learning-rate schedule spans it: its length is then
        part of the run), and where it runs or whether it shows a bar may change between reruns: those
        settings are left out. So is the number of processes: persisted samples are reused whatever it is.
        """
        # settings at values that mean nothing (no LoRA, no autocast, a flat schedule) are left out, so
        # that runs made before they existed resume
        free = (self.FREE_SETTINGS + (() if self.lora else LORA_SETTINGS)
                + (("mixed_precision",) if self.config.mixed_precision == "no" else ())
                + (SCHEDULE_SETTINGS if self.config.flat_schedule else ()))
        if not self.config.flat_schedule and self.config.lr_schedule_span == "run":
            free = tuple(name for name in free if name != "iterations")  # the schedule's horizon
        return {
            "method": self.spec.name,
            "method_config": asdict(self.method_config),
            "run": {k: v for k, v in asdict(self.config).items() if k not in free},
            # persisted samples index into the prompt list: it must not change under a resumed run
            "prompts_sha256": prompts_digest(self.prompts),
        }

    def _divergence(self, iteration: int, what: str) -> DivergenceError:
        if self._session is not None:
            return self._session.divergence(iteration, what)
        return DivergenceError(f"training diverged at iteration {iteration} ({what} is NaN/inf): "
                               "lower the learning rate")

    # -- sampling and judging ------------------------------------------------------------------------

    def _generator(self, iteration: int, phase: int) -> torch.Generator:
        """The sampling stream of (iteration, phase); each process of a multi-process run has its own,
        so its draws depend on the number of processes (the update, given the samples, does not)."""
        seed = self.config.seed * 1_000_003 + iteration * 10 + phase + self.processes.rank * 2**40
        return torch.Generator(device=self.device).manual_seed(seed)

    def _on_disk(self, path: Path) -> bool:
        """Whether ``path`` exists as the main process sees it: every process takes the same branch."""
        return self.processes.from_main(path.exists())

    def _gathered(self, shard: dict[str, Any], calls_before: int) -> dict[str, Any]:
        """Every process's ``shard`` of a judged result, joined in prompt order; ``judge_calls`` then
        counts the calls of every process."""
        if self.processes.world == 1:
            return shard
        pieces = self.processes.gather((shard, self.judge_calls - calls_before))
        self.judge_calls = calls_before + sum(calls for _, calls in pieces)
        return join_shards([piece for piece, _ in pieces])

    def _decode(self, completions: Sequence[Sequence[int]]) -> list[str]:
        texts = self.tokenizer.batch_decode([list(c) for c in completions], skip_special_tokens=True)
        return [" " + text.strip() for text in texts]

    def _prompt_indices(self, iteration: int) -> list[int]:
        count = self.config.prompts_per_iteration
        if count is None or count >= len(self.prompts):
            return list(range(len(self.prompts)))
        generator = torch.Generator().manual_seed(self.config.seed * 7_919 + iteration)
        return sorted(torch.randperm(len(self.prompts), generator=generator)[:count].tolist())

    def _sample(
        self, prompt_indices: list[int], generator: torch.Generator, *, mixture: bool = False
    ) -> list[list[int]]:
        k = self.config.samples_per_prompt
        rows = [self.prompt_ids[p] for p in prompt_indices for _ in range(k)]
        return sample_completions(
            self.model,
            rows,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.pad_token_id,
            max_new_tokens=self.config.max_new_tokens,
            temperature=self.config.temperature,
            generator=generator,
            mixture=(self.ref_model, self.method_config.mixture_coef) if mixture else None,
            batch_size=self.config.sample_batch_size,
        )

    def _judge(
        self,
        prompt_indices: list[int],
        firsts: list[str],
        seconds: list[str],
        pairs: tuple[Tensor, Tensor],
        *,
        symmetric: bool,
    ) -> Tensor:
        """``[P, K, K]`` preferences of answer ``firsts[i]`` over ``seconds[j]`` for the pairs asked."""
        k = self.config.samples_per_prompt
        first, second = pairs
        prompts = [self.prompts[prompt_indices[int(i) // k]] for i in first]
        if not prompts:  # a process whose shard is empty (fewer prompts than processes)
            return torch.full((0, k, k), 0.5, dtype=torch.float64)
        values = judge_batch(self.judge, prompts, [firsts[int(i)] for i in first], [seconds[int(j)] for j in second])
        self.judge_calls += len(values)
        matrix = torch.full((len(prompt_indices), k, k), 0.5, dtype=torch.float64)
        rows, cols_a, cols_b = first // k, first % k, second % k
        matrix[rows, cols_a, cols_b] = torch.as_tensor(values)
        if symmetric:
            matrix[rows, cols_b, cols_a] = 1.0 - torch.as_tensor(values)
        return matrix

    def collect(self, iteration: int) -> JudgedSamples:
        """The iteration's judged policy answers (and Nash-MD's mixture opponents): from disk, else new."""
        path = self.samples_path(iteration, "samples")
        if self._on_disk(path):
            return JudgedSamples(**load_checkpoint(path))
        before = self.judge_calls
        prompt_indices = self.processes.part(self._prompt_indices(iteration))  # this process's shard
        generator = self._generator(iteration, 0)
        completions = self._sample(prompt_indices, generator)
        texts = self._decode(completions)
        k = self.config.samples_per_prompt
        preferences = self._judge(prompt_indices, texts, texts, all_pairs(len(prompt_indices), k), symmetric=True)
        shard = JudgedSamples(prompt_indices, completions, texts, preferences)
        if self.spec.mixture_opponents:
            opponents = self._sample(prompt_indices, generator, mixture=True)
            shard.opponent_completions = opponents
            shard.opponent_preferences = self._judge(
                prompt_indices, texts, self._decode(opponents), self._cross_pairs(len(prompt_indices)), symmetric=False
            )
        samples = JudgedSamples(**self._gathered(asdict(shard), before))
        if self.processes.is_main:
            atomic_save(asdict(samples), path)  # before any update: a killed run never re-asks the judge
        return samples

    def _cross_pairs(self, num_prompts: int) -> tuple[Tensor, Tensor]:
        k = self.config.samples_per_prompt
        base = (torch.arange(num_prompts) * k)[:, None, None]
        i, m = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
        return (base + i).reshape(-1), (base + m).reshape(-1)

    def collect_half_step_opponents(self, iteration: int, samples: JudgedSamples) -> Tensor:
        """``[P, K, K]`` judgments of the policy's answers against the half-step policy's (persisted)."""
        path = self.samples_path(iteration, "opponents")
        if self._on_disk(path):
            return load_checkpoint(path)["opponent_preferences"]
        before, k = self.judge_calls, self.config.samples_per_prompt
        start, end = self.processes.bounds(len(samples.prompt_indices))  # this process's prompts
        prompt_indices = samples.prompt_indices[start:end]
        opponents = self._sample(prompt_indices, self._generator(iteration, 1))
        preferences = self._judge(
            prompt_indices,
            samples.texts[start * k : end * k],
            self._decode(opponents),
            self._cross_pairs(end - start),
            symmetric=False,
        )
        judged = self._gathered({"opponent_completions": opponents, "opponent_preferences": preferences}, before)
        if self.processes.is_main:
            atomic_save(judged, path)
        return judged["opponent_preferences"]

    def evaluate(self, iteration: int) -> dict[str, float]:
        """The held-out evaluation after iteration ``iteration``'s update: ``eval/...`` metrics (see
        :mod:`hybridrl.preference.selfplay_eval`). Every process evaluates its shard and gets the whole result."""
        if not self.eval_prompts:
            raise ValueError("no eval prompts: pass eval_prompts to the trainer")
        start, end = self.processes.bounds(len(self.eval_prompts))
        coin = self.config.seed * 1_000_003 + iteration * 10 + EVAL_PHASE + self.processes.rank * 2**40
        shard = evaluate_shard(
            self.model,
            self.ref_model,
            self.eval_prompts[start:end],
            self.eval_prompt_ids[start:end],
            evaluation_judge(self.judge, coin),
            generator=lambda: self._generator(iteration, EVAL_PHASE),
            decode=self._decode,
            samples_per_prompt=self.config.eval_samples_per_prompt,
            temperature=self.config.temperature,
            max_new_tokens=self.config.max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.pad_token_id,
            batch_size=self.config.sample_batch_size,
        )
        return summarize(self.processes.gather(shard))

    # -- trainable state ---------------------------------------------------------------------------------

    def _trainable_copy(self) -> dict[str, Tensor]:
        """A copy of the parameters the optimizer moves (the adapter alone with LoRA): the extragradient
        backup, which frozen weights never need."""
        device = "cpu" if self.config.cpu_backups else None
        return {name: p.detach().to(device, copy=True) for name, p in self.model.named_parameters()
                if p.requires_grad}

    def _optimizer_copy(self) -> dict[str, Any]:
        """A copy of the AdamW state (moments, step counts), in host memory with ``cpu_backups``;
        ``load_state_dict`` moves it back beside the parameters."""
        state = self.optimizer.state_dict()
        if not self.config.cpu_backups:
            return copy.deepcopy(state)
        return {"param_groups": copy.deepcopy(state["param_groups"]),
                "state": {key: {name: value.detach().to("cpu", copy=True) if isinstance(value, Tensor) else value
                                for name, value in slot.items()}
                          for key, slot in state["state"].items()}}

    @torch.no_grad()
    def _restore_trainable(self, saved: dict[str, Tensor]) -> None:
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                p.copy_(saved[name])

    def _backup(self) -> dict[str, Any]:
        """What a step changes (trainable weights, AdamW state, the schedule's count, fp16's loss scale),
        for the extragradient restore. Every process backs up and restores its own copy: they are equal."""
        return {"weights": self._trainable_copy(), "optimizer": self._optimizer_copy(),
                "schedule": copy.deepcopy(self.schedule.state_dict()), "scaler": self.scaler.state_dict()}

    def _restore(self, backup: dict[str, Any]) -> None:
        self._restore_trainable(backup["weights"])
        self.optimizer.load_state_dict(backup["optimizer"])
        self.schedule.load_state_dict(backup["schedule"])
        self.scaler.load_state_dict(backup["scaler"])  # a no-op unless fp16

    def _model_state(self) -> dict[str, Tensor]:
        """The checkpoint's weights: the adapter alone with LoRA (peft's keys), else the whole model."""
        if self.lora:
            from peft import get_peft_model_state_dict

            return get_peft_model_state_dict(self.model)
        return self.model.state_dict()

    def _load_model_state(self, state: dict[str, Tensor]) -> None:
        if self.lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, state)
        else:
            self.model.load_state_dict(state)

    def save_model(self, path: Path) -> None:
        """The policy and tokenizer as a plain HF model directory; with LoRA the adapter is merged into
        the base weights first (the trainer's model is the merged one afterwards: call this last)."""
        if self.lora and hasattr(self.model, "merge_and_unload"):
            self.model = self.model.merge_and_unload()
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    # -- update ----------------------------------------------------------------------------------------

    def anchors(self, samples: JudgedSamples) -> tuple[TokenizedPairs, Tensor, Tensor]:
        """Full sequences of the answers, and their log-probs under the reference and the current policy."""
        k = self.config.samples_per_prompt
        prompts = [self.prompt_ids[p] for p in samples.prompt_indices for _ in range(k)]
        sequences = [p + c for p, c in zip(prompts, samples.completions, strict=True)]
        lengths = [len(p) for p in prompts]
        kwargs = {"pad_token_id": self.pad_token_id, "batch_size": self.config.sample_batch_size}
        start, end = self.processes.bounds(len(sequences))  # each process scores its share

        def score(model: torch.nn.Module) -> Tensor:
            if start == end:
                return torch.zeros(0)
            return completion_logps(model, sequences[start:end], lengths[start:end], **kwargs)

        ref, prev = score(self.ref_model), score(self.model)
        if self.processes.world > 1:
            shares = self.processes.gather((ref, prev))
            ref, prev = torch.cat([r for r, _ in shares]), torch.cat([p for _, p in shares])
        return TokenizedPairs(sequences, lengths, sequences, lengths), ref, prev

    def update(
        self, sequences: TokenizedPairs, ref: Tensor, prev: Tensor, targets: PairTargets, *, iteration: int, phase: int
    ) -> list[Tensor]:
        """AdamW steps on the method's loss over minibatches of ``targets``.

        ``steps_per_iteration`` steps of ``batch_size`` pairs; a ``one_step`` method instead takes a
        single step whose gradient is the mean over every pair, accumulated minibatch by minibatch.
        With several processes every one builds the same global batches and scores its part of each;
        the gradients are summed over the processes before clipping, so a step is the one-process step
        on the same global batch. Returns each step's loss, left on the device (checked for NaN/inf by
        the caller, in one sync).
        """
        pairs = TokenizedPairs(
            [sequences.chosen_ids[int(i)] for i in targets.first],
            [sequences.chosen_prompt_lengths[int(i)] for i in targets.first],
            [sequences.chosen_ids[int(i)] for i in targets.second],
            [sequences.chosen_prompt_lengths[int(i)] for i in targets.second],
        )
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + iteration * 10 + phase)
        size = self.config.batch_size
        if self.spec.one_step:
            order = torch.randperm(len(pairs), generator=generator)
            steps = [[order[start : start + size] for start in range(0, len(pairs), size)]]
        else:
            order = torch.cat(
                [
                    torch.randperm(len(pairs), generator=generator)
                    for _ in range(-(-self.config.steps_per_iteration * size // len(pairs)))
                ]
            )
            steps = [[order[step * size : (step + 1) * size]] for step in range(self.config.steps_per_iteration)]
        micro = self.config.micro_batch_size
        self.model.train()
        losses = []
        pack = packing_mask_kind(self.model) is not None  # both samples of a pair answer the same prompt
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        for chunks in steps:
            total = sum(rows.numel() for rows in chunks)  # the global batch's pairs
            pieces = [self.processes.part(rows) for rows in chunks]
            if micro is not None:
                pieces = [piece for rows in pieces for piece in rows.split(micro)]
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=self.device)
            for rows in pieces:
                if rows.numel() == 0:  # this process's part of a batch smaller than the process count
                    continue
                # a sum over the piece divided by the step's pairs: the accumulated gradient is the mean's
                loss = self._pair_loss(pairs, rows, ref, prev, targets, pack).sum() / total
                self.scaler.scale(loss).backward()
                step_loss += loss.detach()
            self.processes.sum_gradients(trainable)
            self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the scaled one
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
            self.last_lr = self.optimizer.param_groups[0]["lr"]
            self.scaler.step(self.optimizer)  # skipped when fp16 gradients hold inf/NaN
            self.scaler.update()
            self.schedule.step()
            losses.append(step_loss)
        self.optimizer.zero_grad(set_to_none=True)
        if self.processes.world > 1:
            losses = list(self.processes.sum(torch.stack(losses)).unbind())
        return losses

    def _pair_loss(
        self, pairs: TokenizedPairs, rows: Tensor, ref: Tensor, prev: Tensor, targets: PairTargets, pack: bool
    ) -> Tensor:
        """``[len(rows)]`` losses of the method on pairs ``rows`` of ``targets``, with gradient."""
        batch = collate(pairs, rows.tolist(), pad_token_id=self.pad_token_id, pack=pack).to(self.device)
        dtype = torch.float16 if self.config.mixed_precision == "fp16" else torch.bfloat16
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.config.mixed_precision != "no"):
            logps, lengths = pair_logps(self.model, batch)
        half = rows.numel()
        first, second = targets.first[rows], targets.second[rows]
        extras = {"prev_chosen": prev[first], "prev_rejected": prev[second]}
        extras.update({key: value[rows].float() for key, value in targets.extras.items()})
        pair = PairLogps(
            policy_chosen=logps[:half],
            policy_rejected=logps[half:],
            ref_chosen=ref[first].to(self.device),
            ref_rejected=ref[second].to(self.device),
            chosen_lengths=lengths[:half],
            rejected_lengths=lengths[half:],
            extras={key: value.to(self.device) for key, value in extras.items()},
        )
        return self.loss_fn(pair, self.method_config)

    def run_iteration(self, iteration: int) -> dict[str, float]:
        """One iteration (module docstring); returns its metrics line.

        Under :meth:`run`, each update step's loss also goes to the session's window, whose flush
        stops the run on NaN/inf before the iteration is checkpointed.
        """
        samples = self.collect(iteration)
        sequences, ref, prev = self.anchors(samples)
        build = self.spec.build_targets
        if self.spec.extragradient:
            start = self._backup()
            if not self._on_disk(self.samples_path(iteration, "opponents")):  # the half step only serves sampling
                half_targets = build(samples.preferences, None, self.method_config)
                half = self.update(sequences, ref, prev, half_targets, iteration=iteration, phase=0)
                # the half-step policy samples next: NaN weights would fail there, far from their cause
                if not bool(torch.isfinite(torch.stack(half)).all()):
                    raise self._divergence(iteration, "the half step's loss")
            opponents = self.collect_half_step_opponents(iteration, samples)
            self._restore(start)  # AdamW moments and the schedule too: the half step leaves no trace
            targets = build(samples.preferences, opponents, self.method_config)
            losses = self.update(sequences, ref, prev, targets, iteration=iteration, phase=1)
        else:
            targets = build(samples.preferences, samples.opponent_preferences, self.method_config)
            losses = self.update(sequences, ref, prev, targets, iteration=iteration, phase=0)
        if self._session is not None:
            for loss in losses:
                self._session.add({"loss": loss})
        first, last = torch.stack([losses[0], losses[-1]]).tolist()
        lengths = torch.tensor([len(c) for c in samples.completions], dtype=torch.float64)
        num_prompts = len(samples.prompt_indices)
        # the judgments this iteration rests on, whether asked now or read back from its sample files,
        # so that a resumed run logs what an uninterrupted one does (``judge_calls`` counts new calls)
        judged = len(all_pairs(num_prompts, self.config.samples_per_prompt)[0])
        if self.spec.extragradient or self.spec.mixture_opponents:
            judged += len(self._cross_pairs(num_prompts)[0])
        row = {
            "loss/first": first,
            "loss/last": last,
            "pairs": float(targets.first.numel()),
            "judge_calls": float(judged),
            "samples/mean_tokens": float(lengths.mean()),
            "samples/kl_to_ref": float((prev - ref).mean()),
        }
        if not self.config.flat_schedule:
            row["lr"] = self.last_lr  # the rate of the iteration's last kept step
        return row

    def run(self) -> dict[str, float]:
        """Train to ``config.iterations``, resuming from ``out_dir``; saves ``out_dir/model`` at the end.

        Returns the last iteration's metrics; a finished run returns them from ``results.json`` without
        training, unless more iterations are asked for. NaN/inf raise ``DivergenceError`` and keep the
        last checkpoint; Ctrl-C raises ``Interrupted``. With several processes only the main one writes
        files; it claims the run directory before the others read it.
        """
        session = self.processes.main_first(lambda: Session(
            self.out_dir,
            self.run_record(),
            total=self.config.iterations,
            desc=f"selfplay {self.spec.name}",
            progress=self.config.progress,
            step_key="iteration",
            rate_name=None,  # each line has its iteration's wall time instead
            tensorboard="tensorboard" in self.config.report_to,
            wandb="wandb" in self.config.report_to,
            main_process=self.processes.is_main,
            map_location=self.device,
        ))
        finished = session.finished
        if finished is not None and int(finished.get("iterations", 0)) >= self.config.iterations:
            session.release()
            self.iteration = int(finished["iterations"])
            return {k: v for k, v in finished.items() if k != "iterations"}
        session.resume_finished()  # asked for more iterations than it had: go on from its checkpoint
        self._session = session
        try:
            with session:
                last: dict[str, float] = {}
                if session.resume_state is not None:
                    state = session.resume_state
                    self._load_model_state(state["model"])
                    self.optimizer.load_state_dict(state["optimizer"])
                    if "schedule" in state:  # checkpoints written before the schedule existed: a flat one
                        self.schedule.load_state_dict(state["schedule"])
                    self.scaler.load_state_dict(state.get("scaler", {}))
                    self.iteration, last = int(state["step"]), dict(state["last"])
                    session.restore_rng()
                while self.iteration < self.config.iterations:
                    began = time.perf_counter()
                    row = self.run_iteration(self.iteration)
                    row["time/s"] = time.perf_counter() - began
                    if self.eval_prompts and eval_due(self.iteration, self.config.eval_every, self.config.iterations):
                        began = time.perf_counter()
                        row.update(self.evaluate(self.iteration))
                        row["time/eval_s"] = time.perf_counter() - began
                    last = session.flush(self.iteration, row)  # line "iteration": its index, from 0
                    self.iteration += 1
                    state = {"model": self._model_state(), "optimizer": self.optimizer.state_dict(),
                             "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                             "last": last}
                    session.save(self.iteration, state, check=state["model"])
                    session.advance()
                if self.processes.is_main:
                    self.save_model(self.out_dir / "model")
                self.processes.barrier()  # the model is on disk before any process reports the run done
                session.finish({"iterations": self.iteration, **last})
        finally:
            self._session = None
        return last

