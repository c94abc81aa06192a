"""Run settings of self-play (shared by every method) and its learning-rate schedule.

The method's own hyperparameters live in its file (:mod:`hybridrl.preference.selfplay_methods`); these
are the loop's: sampling, optimisation, precision, LoRA, where and how it runs. The docstring of each
field is the ``--help`` of its ``hybridrl pref selfplay`` flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class SelfPlayConfig:
    """Run settings shared by every self-play method (the method's own hyperparameters live in its file)."""

    iterations: int = 3
    """Outer iterations (SPPO and INPO use 3)."""
    samples_per_prompt: int = 4
    """Answers K sampled per prompt and iteration (SPPO 5, INPO 8)."""
    prompts_per_iteration: int | None = None
    """Prompts drawn (seeded) per iteration; None uses every prompt every iteration."""
    steps_per_iteration: int = 20
    """Optimizer steps per iteration (per phase for extragradient methods); online IPO and Nash-MD take
    one step per iteration on all its pairs, as their reference trainers."""
    batch_size: int = 64
    """Answer pairs per optimizer step."""
    micro_batch_size: int | None = None
    """Answer pairs per forward inside a step, their gradients accumulated (None: the step's whole
    batch). A sum over each micro-batch divided by the step's pairs: the same gradient, less memory."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast the training forward to bfloat16 or float16 (log-probs are taken in float32 regardless).
    fp16 scales the loss (torch.amp.GradScaler: unscaled before clipping, a step with inf/NaN gradients
    skipped) and needs CUDA; bf16 needs no scaling."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning rate after warm-up: constant, linear decay to 0, or a half cosine to 0 (transformers'
    schedules), over the optimizer steps of lr_schedule_span. An extragradient half step is undone with
    its AdamW state and reruns the rates of the steps it prepares, so only kept steps count."""
    warmup_ratio: float = 0.0
    """Fraction of the schedule's steps (rounded up) warmed up linearly from 0 (SPPO uses 0.1)."""
    lr_schedule_span: Literal["run", "iteration"] = "run"
    """Steps the schedule spans: the whole run (EGPO's LM trainer), or each iteration afresh (SPPO and
    INPO train each iteration as a new HF Trainer run). Over the run, iterations join the run's record."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory for long answers, one more forward."""
    cpu_backups: bool = False
    """Keep the extragradient backup (trainable weights and their AdamW state) in host memory instead
    of on the device, for models whose optimizer state barely fits twice."""
    report_to: tuple[str, ...] = ()
    """Also send the metric lines to tensorboard (OUT/tb) and/or wandb."""
    learning_rate: float = 5e-7
    """AdamW step size (SPPO, INPO and EGPO use 5e-7 on 7B models; tiny models need far more)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (EGPO uses 1.0)."""
    temperature: float = 1.0
    """Sampling temperature (INPO 1.0)."""
    max_new_tokens: int = 64
    """Longest sampled answer (TRL's online trainers default to 64)."""
    sample_batch_size: int = 256
    """Rows per sampling / anchor forward."""
    seed: int = 0
    """Seeds sampling, prompt draws and pair order."""
    lora_r: int = 0
    """LoRA rank through peft; 0 trains every weight. With LoRA the reference is the base model (adapter
    disabled) and the saved model has the adapter merged in."""
    lora_alpha: int = 16
    """LoRA scaling numerator (peft's examples use 2r)."""
    lora_dropout: float = 0.0
    """LoRA dropout (0 keeps the policy equal to the reference at the start)."""
    lora_target_modules: tuple[str, ...] = ("all-linear",)
    """Module names that get adapters; ("all-linear",) puts one on every linear layer but the output head."""
    eval_every: int = 1
    """Iterations between held-out evaluations of the policy against the reference, when the run has eval
    prompts: after iteration t (from 0) when t + 1 is a multiple of it, and always after the last; 0
    evaluates after the last iteration only."""
    eval_samples_per_prompt: int = 2
    """Answers per eval prompt from the policy and from the reference (answer k of each compared)."""
    device: str | None = None
    """cpu, cuda, cuda:N or None for automatic."""
    progress: bool = True
    """Show a progress bar over iterations."""

    def __post_init__(self) -> None:
        for name in ("iterations", "samples_per_prompt", "steps_per_iteration", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lora_r < 0 or not 0 <= self.lora_dropout < 1 or not self.lora_target_modules:
            raise ValueError("need lora_r >= 0, lora_dropout in [0, 1) and at least one LoRA target module")
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt must be at least 2 (pairs are judged), got {self.samples_per_prompt}")
        if self.prompts_per_iteration is not None and self.prompts_per_iteration < 1:
            raise ValueError(f"prompts_per_iteration must be at least 1 or None, got {self.prompts_per_iteration}")
        if self.learning_rate <= 0 or self.temperature <= 0:
            raise ValueError("learning_rate and temperature must be positive")
        if self.eval_every < 0 or self.eval_samples_per_prompt < 1:
            raise ValueError(f"need eval_every >= 0 and eval_samples_per_prompt >= 1, got {self.eval_every} and "
                             f"{self.eval_samples_per_prompt}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be at least 1 or None, got {self.micro_batch_size}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"unknown mixed_precision {self.mixed_precision!r}: use 'no', 'bf16' or 'fp16'")
        if self.lr_schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}: use 'constant', 'linear' or 'cosine'")
        if self.lr_schedule_span not in ("run", "iteration"):
            raise ValueError(f"unknown lr_schedule_span {self.lr_schedule_span!r}: use 'run' or 'iteration'")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        unknown = set(self.report_to) - {"tensorboard", "wandb"}
        if unknown:
            raise ValueError(f"unknown report_to {sorted(unknown)}: choose from tensorboard, wandb")

    @property
    def flat_schedule(self) -> bool:
        """The learning rate never changes (constant, no warm-up): the schedule settings mean nothing."""
        return self.lr_schedule == "constant" and self.warmup_ratio == 0.0


LORA_SETTINGS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
SCHEDULE_SETTINGS = ("lr_schedule", "warmup_ratio", "lr_schedule_span")
