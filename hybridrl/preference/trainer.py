"""One trainer for offline pairwise preference methods (DPO, IPO, f-DPO, ...) on ``accelerate``.

Runs on the CPU, one GPU, or several GPUs under ``accelerate launch`` (data-parallel; each process
takes its slice of every global batch). Per optimizer step it sees
``batch_size x gradient_accumulation_steps x num_processes`` pairs.

Where the time goes and what is not wasted:
- reference log-probs are computed once per dataset before training (length-sorted batches, no
  gradient), cached on disk by a hash of weights and data, and looked up by pair index; the
  reference model is then freed. ``reference="model"`` keeps a frozen copy (or the LoRA base) instead;
- whole pairs are packed side by side into a few rows, each prompt stored once, with a block mask
  that lets a token see only its own prompt and answer (``logprobs.packed_logps``): one model call
  and almost no padding. Models whose attention cannot take that mask (FlashAttention 2) send each
  prompt through once and feed its key/value cache to both answers instead
  (``logprobs.shared_prompt_logps``); under DDP, chosen and rejected go through in one
  concatenated forward (``logprobs.sequence_logps``);
- batches are padded to their own longest row, not to a global maximum; with ``pairs_per_forward``
  a micro-batch is further split into length-sorted groups, each laid out on its own;
- no autocast on the CPU, metrics leave the device only when logged; gradient checkpointing only
  when asked (it trades a second forward for activation memory).

With ``eval_pairs`` the trainer also scores held-out pairs (no gradient, every ``eval_every`` steps
and at the end) against the same reference, logging ``eval/loss`` and ``eval/rewards/...`` lines.

The run directory is a :class:`~hybridrl.core.session.Session`'s: ``config.json`` holds the run's
record (train and loss settings, a hash of the pairs) and a rerun with another is refused;
checkpoints (``checkpoint.pt``, written atomically) hold the weights (the adapter only with LoRA),
optimizer, schedule, step, RNG states and the metrics not yet logged; the data order is a function
of (seed, step), so a resumed run sees exactly the batches, and writes exactly the metric lines, an
uninterrupted one would have. ``results.json`` holds the final metrics.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
from array import array
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from hybridrl.core.optim import lr_factor
from hybridrl.core.seeding import seed_everything
from hybridrl.core.session import CHECKPOINT, Session
from hybridrl.preference.data import TokenizedPairs
from hybridrl.preference.logprobs import (
    AnyPairBatch,
    cached_reference_logps,
    collate,
    packing_mask_kind,
    pair_logps,
    reference_mode,
)
from hybridrl.preference.losses import PairLogps, PreferenceLossConfig, preference_loss
from hybridrl.preference.models import apply_lora, disable_dropout, enable_gradient_checkpointing, make_accelerator

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

FREE_SETTINGS = ("device", "progress", "log_every", "save_every", "eval_every", "report_to", "merge_lora")
"""Train settings left out of a run's record: a rerun may change them and still resume."""


REPORTERS = ("tensorboard", "wandb")
"""Where metric lines can go besides metrics.jsonl."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation and run settings; defaults follow TRL's ``DPOConfig`` unless said otherwise."""

    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 8
    """Pairs per process per micro-batch (TRL/HF ``per_device_train_batch_size`` default)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step (HF default)."""
    learning_rate: float = 1e-6
    """AdamW step size (TRL DPOConfig default; the DPO paper used 1e-6 too, with RMSprop)."""
    weight_decay: float = 0.0
    """AdamW weight decay (HF default)."""
    warmup_steps: int = 0
    """Linear warm-up steps (HF default 0; the DPO paper used 150)."""
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warm-up: linear to 0 (HF default), a half cosine to 0 (HF's cosine schedule, one
    cycle), or constant."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (HF default)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """accelerate autocast; log-probs are computed in float32 regardless. TRL defaults to bf16 on GPU."""
    reference: Literal["precompute", "model"] = "precompute"
    """precompute: reference log-probs once per dataset, cached (TRL precompute_ref_log_probs=True);
    model: a frozen reference forward every step (TRL's default)."""
    reference_batch_size: int | None = None
    """Pairs per batch when precomputing reference log-probs (None: batch_size, as TRL's
    precompute_ref_batch_size; larger is faster but raises peak memory above training's)."""
    pairs_per_forward: int | None = None
    """Pairs per model call inside a micro-batch, grouped by length (None: all at once). Smaller groups
    carry less padding (a CPU win); larger ones use a GPU better. Loss and gradient are unchanged."""
    share_prompt: bool = True
    """Run each prompt once for its chosen and rejected answers (same loss, less work; see
    logprobs.shared_prompt_logps). Single-process only: under DDP the concatenated forward is used."""
    packing: bool = True
    """With share_prompt: pack whole pairs into few rows under a block attention mask (one model call,
    no padding; see logprobs.packed_logps). Used when the model's attention is SDPA or eager."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of storing them (non-reentrant HF
    checkpointing): less memory for long sequences, about one more forward of time."""
    lora_r: int = 0
    """LoRA rank through peft; 0 trains every weight."""
    lora_alpha: int = 16
    """LoRA scaling numerator (peft's examples use 2r)."""
    lora_dropout: float = 0.0
    """LoRA dropout (0 keeps the policy equal to the reference at step 0)."""
    merge_lora: bool = True
    """With LoRA, save OUT/model with the adapter merged into the base weights (a plain model that loads
    without peft); False saves the adapter alone (peft's format). Checkpoints hold the adapter either way."""
    log_every: int = 10
    """Steps between metric lines (TRL logging_steps default)."""
    eval_every: int = 0
    """Steps between evaluations on the eval pairs, when given (0: only at the end)."""
    report_to: tuple[str, ...] = ()
    """Also send metric lines to: tensorboard (OUT/tb) and/or wandb (needs the package; the run
    resumes under the same W&B id). metrics.jsonl is always written."""
    save_every: int = 500
    """Steps between checkpoints (HF save_steps default); one is always written at the end."""
    seed: int = 0
    """Seeds data order and any randomness in the model."""
    device: str | None = None
    """'cpu', 'cuda', 'cuda:N' or None for automatic (accelerate launch decides under several processes)."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        unknown = set(self.report_to) - set(REPORTERS)
        if unknown:
            raise ValueError(f"unknown report_to {sorted(unknown)}: choose from {', '.join(REPORTERS)}")
        if self.reference_batch_size is not None and self.reference_batch_size < 1:
            raise ValueError(
                f"reference_batch_size must be at least 1 or None, got {self.reference_batch_size}"
            )
        if self.pairs_per_forward is not None and self.pairs_per_forward < 1:
            raise ValueError(f"pairs_per_forward must be at least 1 or None, got {self.pairs_per_forward}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")


class PairwiseTrainer:
    """Trains a causal LM on tokenized preference pairs with a loss from ``losses.LOSSES``.

    Args:
        model: the policy; it is also the reference (its initial weights) unless ``ref_model`` is given.
        tokenizer: gives the pad token and is saved beside the final model.
        pairs: the output of ``data.tokenize_pairs``.
        loss_config: loss name, beta, divergence.
        train_config: optimisation and run settings.
        out_dir: checkpoints, metrics.jsonl, config.json, the reference cache and the final model.
        ref_model: an explicit reference model (else the initial policy / the LoRA base).
        eval_pairs: held-out pairs scored every ``eval_every`` steps and at the end (no gradient).
    """

    def __init__(
        self,
        *,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        pairs: TokenizedPairs,
        loss_config: PreferenceLossConfig,
        train_config: TrainConfig,
        out_dir: str | os.PathLike,
        ref_model: PreTrainedModel | None = None,
        eval_pairs: TokenizedPairs | None = None,
    ) -> None:
        if len(pairs) == 0:
            raise ValueError("no preference pairs left to train on: see the drop report of tokenize_pairs")
        self.config = train_config
        self.loss_config = loss_config
        self.pairs = pairs
        self.eval_pairs = eval_pairs if eval_pairs is not None and len(eval_pairs) else None
        self.tokenizer = tokenizer
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.out_dir = Path(out_dir)
        self.accelerator = make_accelerator(train_config.device, train_config.mixed_precision)
        self.device = self.accelerator.device
        seed_everything(train_config.seed)

        disable_dropout(model)
        if train_config.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if train_config.lora_r > 0:
            model = apply_lora(model, r=train_config.lora_r, alpha=train_config.lora_alpha,
                               dropout=train_config.lora_dropout)
        model.to(self.device)
        self.ref_model = None
        if train_config.reference == "model" and (ref_model is not None or train_config.lora_r == 0):
            # a frozen copy of the initial policy when no reference is given (TRL loads it from the path)
            ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
            disable_dropout(ref_model)
            self.ref_model = ref_model.to(self.device).eval().requires_grad_(False)
        self._explicit_ref = ref_model if train_config.reference == "precompute" else None
        # the packed layout needs every model that scores it (policy, reference) to take its mask
        scorers = [m for m in (model, self.ref_model, self._explicit_ref) if m is not None]
        self.pack = train_config.packing and all(packing_mask_kind(m) is not None for m in scorers)
        self.ref_table: torch.Tensor | None = None
        self.eval_ref_table: torch.Tensor | None = None

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=train_config.learning_rate, weight_decay=train_config.weight_decay
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # not prepared: accelerate would step it once per process, and our schedule counts optimizer steps
        self.schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        self.step = 0
        self._orders: dict[int, list[int]] = {}
        self._pairs_sha256: str | None = None

    # -- schedule and data order -------------------------------------------------------------------

    def _lr_factor(self, step: int) -> float:
        return lr_factor(step, self.config.steps, self.config.warmup_steps, self.config.lr_schedule)

    @property
    def global_batch_size(self) -> int:
        return (
            self.config.batch_size * self.config.gradient_accumulation_steps * self.accelerator.num_processes
        )

    def _epoch_order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}  # keep two epochs
            self._orders[epoch] = torch.randperm(len(self.pairs), generator=generator).tolist()
        return self._orders[epoch]

    def micro_batch_indices(self, step: int, micro: int) -> list[int]:
        """Pair indices of micro-batch ``micro`` of optimizer step ``step`` on this process.

        The stream of pairs is the concatenation of seeded per-epoch permutations; a global batch is the
        next ``global_batch_size`` of them; it depends only on (seed, step), which makes resume exact.
        """
        n, size = len(self.pairs), self.config.batch_size
        start = (
            step * self.global_batch_size
            + (micro * self.accelerator.num_processes + self.accelerator.process_index) * size
        )
        return [self._epoch_order(position // n)[position % n] for position in range(start, start + size)]

    # -- reference ---------------------------------------------------------------------------------

    def prepare_reference(self) -> None:
        """Fill ``ref_table`` [N, 2] (and the eval pairs') from the cache or one pass of the reference
        (precompute mode)."""
        if self.config.reference != "precompute" or self.ref_table is not None:
            return
        reference = (
            self._explicit_ref
            if self._explicit_ref is not None
            else self.accelerator.unwrap_model(self.model)
        )
        if self._explicit_ref is not None:
            self._explicit_ref.to(self.device)
        self.ref_table = self._reference_table(reference, self.pairs)
        if self.eval_pairs is not None:
            self.eval_ref_table = self._reference_table(reference, self.eval_pairs)
        self._explicit_ref = None  # the reference model is not needed any more

    def _reference_table(self, reference: torch.nn.Module, pairs: TokenizedPairs) -> torch.Tensor:
        """[N, 2] reference log-probs of ``pairs`` on the device: from the cache, else one pass."""
        gather = None
        if self.accelerator.num_processes > 1:
            def gather(table: torch.Tensor) -> torch.Tensor:
                return self.accelerator.reduce(table.to(self.device), reduction="sum").cpu()
        table, _ = cached_reference_logps(
            reference,
            pairs,
            self.out_dir,
            pad_token_id=self.pad_token_id,
            batch_size=self.config.reference_batch_size or self.config.batch_size,
            device=self.device,
            shard=(self.accelerator.process_index, self.accelerator.num_processes),
            share_prompt=self.config.share_prompt and self.accelerator.num_processes == 1,
            pack=self.pack,
            gather=gather,
            save=self.accelerator.is_main_process,
        )
        return table.to(self.device)

    def _reference_logps(self, batch: AnyPairBatch, table: torch.Tensor | None = None) -> torch.Tensor:
        table = self.ref_table if table is None else table
        if table is not None:
            rows = table[batch.indices]  # [B, 2]
            return torch.cat([rows[:, 0], rows[:, 1]])
        reference = self.ref_model if self.ref_model is not None else self.model
        with reference_mode(reference):
            return pair_logps(reference, batch)[0]

    # -- one step ----------------------------------------------------------------------------------

    def collate(self, indices: list[int], pairs: TokenizedPairs | None = None) -> AnyPairBatch:
        # DDP expects one forward per backward; the shared-prompt layout makes two
        share = self.config.share_prompt and self.accelerator.num_processes == 1
        return collate(self.pairs if pairs is None else pairs, indices, pad_token_id=self.pad_token_id,
                       share_prompt=share, pack=self.pack)

    def length_chunks(self, indices: list[int]) -> list[list[int]]:
        """Split a micro-batch into groups of ``pairs_per_forward`` pairs of similar length.

        Each group is padded to its own longest row, so short pairs stop paying for long ones. The
        loss is a mean over pairs, so grouping changes neither the loss nor the gradient.
        """
        size = self.config.pairs_per_forward
        if size is None or size >= len(indices):
            return [indices]
        pairs = self.pairs

        def length(i: int) -> int:
            return max(len(pairs.chosen_ids[i]), len(pairs.rejected_ids[i]))

        ordered = sorted(indices, key=length)
        return [ordered[i : i + size] for i in range(0, len(ordered), size)]

    def compute_loss(
        self, batches: AnyPairBatch | list[AnyPairBatch], ref_table: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and metrics of the pairs of one batch, or of several batches as one (on the device).

        ``ref_table`` holds the reference log-probs of the pairs the batches index (default: the
        training pairs' table, or the reference model's forward in ``reference="model"`` mode).
        """
        parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        for batch in batches if isinstance(batches, list) else [batches]:
            logps, lengths = pair_logps(self.model, batch)
            ref_logps = self._reference_logps(batch, ref_table)
            half = batch.num_pairs
            for name, values in (("logps", logps), ("lengths", lengths), ("ref", ref_logps)):
                parts[f"chosen_{name}"].append(values[:half])
                parts[f"rejected_{name}"].append(values[half:])
        joined = {key: torch.cat(values) for key, values in parts.items()}
        pair = PairLogps(
            policy_chosen=joined["chosen_logps"],
            policy_rejected=joined["rejected_logps"],
            ref_chosen=joined["chosen_ref"],
            ref_rejected=joined["rejected_ref"],
            chosen_lengths=joined["chosen_lengths"],
            rejected_lengths=joined["rejected_lengths"],
        )
        out = preference_loss(pair, self.loss_config)
        return out.loss, {"loss": out.loss.detach(), **out.metrics}

    def train_step(self) -> tuple[dict[str, torch.Tensor], int]:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches; (metrics, tokens)."""
        accumulation = self.config.gradient_accumulation_steps
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        tokens = 0
        self.model.train()
        for micro in range(accumulation):
            chunks = self.length_chunks(self.micro_batch_indices(self.step, micro))
            batches = [self.collate(chunk) for chunk in chunks]
            tokens += sum(batch.num_tokens() for batch in batches)  # counted on the CPU: no device sync
            batches = [batch.to(self.device) for batch in batches]
            last = micro == accumulation - 1
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
            with sync, self.accelerator.autocast():
                loss, metrics = self.compute_loss(batches)
                self.accelerator.backward(loss / accumulation)
            for key, value in metrics.items():
                sums[key] = sums[key] + value / accumulation
        sums["grad_norm"] = self.accelerator.clip_grad_norm_(
            self.model.parameters(), self.config.max_grad_norm
        )
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return dict(sums), tokens  # a plain dict: the metrics not yet logged are checkpointed

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss and reward metrics over every eval pair (``eval/...``), means weighted by pairs.

        Every process scores all eval pairs (they are few), so no reduction is needed.
        """
        if self.eval_pairs is None:
            raise ValueError("no eval pairs: pass eval_pairs to the trainer")
        if self.config.reference == "precompute" and self.eval_ref_table is None:
            # computed from the initial policy; after training has begun it could not be
            raise RuntimeError("prepare_reference() computes the eval pairs' reference log-probs, before training")
        self.model.eval()
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        order = sorted(range(len(self.eval_pairs)), key=lambda i: len(self.eval_pairs.chosen_ids[i]))
        size = self.config.reference_batch_size or self.config.batch_size
        for start in range(0, len(order), size):
            batch = self.collate(order[start:start + size], self.eval_pairs).to(self.device)
            with self.accelerator.autocast():
                _, metrics = self.compute_loss(batch, self.eval_ref_table)
            for key, value in metrics.items():
                sums[key] = sums[key] + value.float() * batch.num_pairs
        self.model.train()
        return {f"eval/{key}": float(value) / len(self.eval_pairs) for key, value in sums.items()}

    # -- checkpoints -------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def run_record(self) -> dict[str, Any]:
        """What defines this run, saved as ``config.json``: a rerun in ``out_dir`` with another is refused.

        Where it runs, whether it shows a bar and how often it logs and saves may change between reruns.
        """
        if self._pairs_sha256 is None:
            self._pairs_sha256 = pairs_digest(self.pairs)
        train = {k: v for k, v in asdict(self.config).items() if k not in FREE_SETTINGS}
        return {"train": train, "loss": asdict(self.loss_config), "num_pairs": len(self.pairs),
                "pairs_sha256": self._pairs_sha256}

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        model = self.accelerator.unwrap_model(self.model)
        if self.config.lora_r > 0:
            from peft import get_peft_model_state_dict

            return get_peft_model_state_dict(model)
        return model.state_dict()

    def _load_state(self, state: dict[str, Any]) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if self.config.lora_r > 0:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, state["model"])
        else:
            model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])

    def save_model(self, path: str | os.PathLike | None = None) -> Path:
        """Save the policy and tokenizer as an HF model directory: with LoRA, merged into the base weights
        (``merge_lora``; the trainer's model is the merged one afterwards, so call this last) or the
        adapter alone."""
        path = Path(path) if path is not None else self.out_dir / "model"
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.model)
            if self.config.lora_r > 0 and self.config.merge_lora:
                model = model.merge_and_unload()
            model.save_pretrained(path)
            self.tokenizer.save_pretrained(path)
        return path

    # -- the loop ----------------------------------------------------------------------------------

    def train(self, *, resume: bool = True, stop_at: int | None = None) -> dict[str, float]:
        """Train to ``config.steps`` (or pause at ``stop_at``, checkpointed); returns the last metrics.

        The run goes through :class:`~hybridrl.core.session.Session`: a rerun resumes from
        ``checkpoint.pt`` (``resume=False`` starts over), a finished run returns its final metrics
        from ``results.json`` without training, and NaN/inf raise ``DivergenceError``.
        """
        session = Session(
            self.out_dir,
            self.run_record(),
            total=self.config.steps,
            desc="pref train",
            progress=self.config.progress,
            rate_name=None,  # tokens per second are counted here instead
            main_process=self.accelerator.is_main_process,
            tensorboard="tensorboard" in self.config.report_to,
            wandb="wandb" in self.config.report_to,
            map_location=self.device,
        )
        if not resume:
            session.start_over()
        if session.finished is not None:
            session.release()
            self.step = self.config.steps  # the record holds steps: a finished run reached them
            return dict(session.finished)
        with session:
            self.prepare_reference()  # before loading a checkpoint: the reference is the *initial* model
            last: dict[str, float] = {}
            tokens = 0
            if session.resume_state is not None:
                state = session.resume_state
                self._load_state(state)
                session.restore_rng()
                # the session restores the metrics of the steps since the last line; their tokens are ours
                tokens, last = int(state["window_tokens"]), dict(state["last"])
            began = time.perf_counter()
            end = self.config.steps if stop_at is None else min(stop_at, self.config.steps)
            while self.step < end:
                metrics, step_tokens = self.train_step()
                session.add(metrics)
                tokens += step_tokens
                session.advance()
                if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                    last = self._flush(session, tokens, time.perf_counter() - began)
                    tokens, began = 0, time.perf_counter()
                if self.eval_pairs is not None and self._eval_due():
                    evaluation = self.evaluate()
                    session.log(self.step, evaluation)
                    last = {**last, **evaluation}
                if self.step % self.config.save_every == 0 or self.step == end:
                    state = {"model": self._trainable_state(), "optimizer": self.optimizer.state_dict(),
                             "schedule": self.schedule.state_dict(), "window_tokens": tokens, "last": last}
                    session.save(self.step, state, check=state["model"])
            if self.step >= self.config.steps:
                self.save_model()
                self.accelerator.wait_for_everyone()
                return session.finish(last)  # results.json, written last, holds the final metrics
        self.accelerator.wait_for_everyone()
        return last

    def _eval_due(self) -> bool:
        every = self.config.eval_every
        return self.step == self.config.steps or (every > 0 and self.step % every == 0)

    def _flush(self, session: Session, tokens: int, seconds: float) -> dict[str, float]:
        """One metrics line: the window's means over steps and processes, tokens per second, the lr."""
        if self.accelerator.num_processes > 1:
            tokens = int(self.accelerator.reduce(torch.tensor(float(tokens), device=self.device), reduction="sum"))

            def reduce(means: torch.Tensor) -> torch.Tensor:
                return self.accelerator.reduce(means, reduction="mean")
        else:
            reduce = None
        extra = {"time/tokens_per_s": tokens / max(seconds, 1e-9), "lr": self.schedule.get_last_lr()[0]}
        return session.flush(self.step, extra, reduce=reduce)


def pairs_digest(pairs: TokenizedPairs) -> str:
    """A hash of the tokenized pairs (ids and prompt lengths): part of a run's record."""
    digest = hashlib.sha256()
    for sequences in (pairs.chosen_ids, pairs.rejected_ids):
        for sequence in sequences:
            digest.update(len(sequence).to_bytes(4, "little"))
            digest.update(array("q", sequence).tobytes())
    digest.update(str((pairs.chosen_prompt_lengths, pairs.rejected_prompt_lengths)).encode())
    return digest.hexdigest()[:20]


def metrics_summary(path: str | os.PathLike) -> str:
    """Last line of a metrics file, for the CLI's one-line summary."""
    lines = Path(path).read_text().splitlines()
    return json.dumps(json.loads(lines[-1])) if lines else "{}"
