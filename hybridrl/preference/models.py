"""Causal language models for preference training: a tiny one built locally, or any HF id or path.

The tiny model exists so that tests, the demo and the CPU benchmarks never download anything: its
tokenizer is a word-level vocabulary trained with `tokenizers` on the task's own text, and the model
is a 2-layer Llama built from a config. Both are saved with ``save_pretrained`` so that every other
piece of code (ours, TRL's) loads them like any Hugging Face model directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
ROLE_TOKENS = ("<system>", "<user>", "<assistant>")
SPECIAL_TOKENS = (PAD, UNK, EOS, *ROLE_TOKENS)

# A minimal chat template: one role token per turn, EOS after each assistant turn (so that a conversational
# completion ends like a plain-text one, which gets EOS appended by the data pipeline).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<{{ message['role'] }}> {{ message['content'] }} "
    "{% if message['role'] == 'assistant' %}<eos> {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


@dataclass(frozen=True, kw_only=True)
class TinyLMConfig:
    """Shape of the tiny Llama used in tests and CPU benchmarks (the TRL test models are of this size)."""

    hidden_size: int = 64
    """Width of the residual stream (TRL's tiny test models use 8-64)."""
    num_layers: int = 2
    """Transformer blocks; 2 is the smallest that can copy a prompt word (an induction head)."""
    num_heads: int = 4
    """Attention heads; head size is hidden_size / num_heads."""
    intermediate_size: int = 128
    """MLP width (2x hidden here instead of Llama's ~2.7x: the task is small)."""
    max_position_embeddings: int = 512
    """Longest sequence the rotary embedding is configured for."""
    initializer_range: float = 0.02
    """Std of the initial weights (Llama default); tests raise it to get far-from-uniform outputs."""


def train_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerBase:
    """Train a word-level tokenizer on ``texts``; words are split on whitespace and punctuation.

    The tokenizer has ``<pad>``, ``<unk>``, ``<eos>`` and the role tokens, no BOS, and a chat template.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(texts, trainer=trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        additional_special_tokens=list(ROLE_TOKENS),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _tiny_llama_config(tokenizer: PreTrainedTokenizerBase, config: TinyLMConfig) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )


def build_tiny_model(
    tokenizer: PreTrainedTokenizerBase, config: TinyLMConfig | None = None, *, seed: int = 0
) -> PreTrainedModel:
    """A randomly initialised Llama sized by ``config`` with ``tokenizer``'s vocabulary (seeded)."""
    from transformers import LlamaForCausalLM

    llama_config = _tiny_llama_config(tokenizer, config or TinyLMConfig())
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the same seed gives the same weights, without touching the caller's RNG
    model = LlamaForCausalLM(llama_config)
    torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def build_tiny_reward_model(
    tokenizer: PreTrainedTokenizerBase, config: TinyLMConfig | None = None, *, seed: int = 0
) -> PreTrainedModel:
    """A randomly initialised one-output Llama sequence classifier (a reward model) sized by ``config``."""
    from transformers import LlamaForSequenceClassification

    llama_config = _tiny_llama_config(tokenizer, config or TinyLMConfig())
    llama_config.num_labels = 1
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(llama_config)
    torch.random.set_rng_state(generator_state)
    return model


def save_model_dir(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | os.PathLike
) -> Path:
    """Write ``model`` and ``tokenizer`` as a normal HF model directory (safetensors weights)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a tokenizer; a missing pad token falls back to EOS (the HF convention TRL follows)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    except OSError as err:
        raise ValueError(
            f"cannot load a tokenizer from {name_or_path!r}: pass a local model directory "
            f"or a Hugging Face model id ({err.__class__.__name__})"
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str | os.PathLike, *, dtype: torch.dtype | None = None, attn_implementation: str | None = None
) -> PreTrainedModel:
    """Load any causal LM by HF id or local path (float32 unless ``dtype`` says otherwise).

    ``attn_implementation`` ('sdpa', 'eager', 'flash_attention_2', ...) defaults to transformers' choice.
    """
    from transformers import AutoModelForCausalLM

    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype or torch.float32, **extra)
    except OSError as err:
        raise ValueError(
            f"cannot load a causal LM from {name_or_path!r}: pass a local model directory "
            f"or a Hugging Face model id ({err.__class__.__name__})"
        ) from err
    return model


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant, so LoRA's frozen
    embeddings need no inputs that require grad); the KV cache is off while training."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2 renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0, as TRL does by default (``disable_dropout=True``).

    With dropout the policy's log-probs at step 0 would differ from the precomputed reference ones.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "attention_dropout"):
        config.attention_dropout = 0.0  # Llama-style attention applies it functionally, not as a module


def quiet_hf_libraries() -> None:
    """Silence the per-file progress bars and warnings of datasets and transformers (callers print a summary)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``, set by ``accelerate launch`` and
    ``torchrun``; 1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_device(device: str | None) -> torch.device:
    """``device`` resolved (None or 'auto': CUDA when present, else the CPU). Under several launched
    processes it may name the kind only (each process takes its own GPU, or the CPU with gloo), not
    one GPU for all."""
    from hybridrl.core.seeding import resolve_device

    resolved = resolve_device(device)  # one-line error when CUDA is asked for and absent
    processes = launched_processes()
    if processes > 1 and resolved.index is not None:
        raise ValueError(f"device {device!r} names one GPU, but {processes} processes were launched: "
                         "pass --device cuda (each process takes its own) or none")
    return resolved


def make_accelerator(device: str | None, mixed_precision: str) -> Any:
    """An ``accelerate.Accelerator`` on ``device`` ('cpu', 'cuda', 'cuda:N'; None: CUDA when present,
    else the CPU), one process's or, under ``accelerate launch``, each launched process's."""
    from accelerate import Accelerator

    kind = launch_device(device)
    if kind.type == "cuda" and kind.index is not None:
        torch.cuda.set_device(kind)  # one process on a chosen GPU
    # cpu=True also joins launched CPU processes with gloo; without it accelerate runs each alone as rank 0
    accelerator = Accelerator(cpu=kind.type == "cpu", mixed_precision=mixed_precision)
    check_data_parallel(accelerator.distributed_type)
    return accelerator


def check_data_parallel(distributed_type: Any) -> None:
    """Refuse sharded training (FSDP, DeepSpeed) in one line: the trainers are data-parallel only.

    Checkpoints, the final save, the reference pass and self-play's parameter backups read the
    unwrapped model's weights whole, which FSDP and ZeRO-3 leave empty on every rank; gathering them
    is not exercised here, so a sharded run is refused rather than saved empty.
    """
    name = getattr(distributed_type, "value", str(distributed_type))
    if name in ("FSDP", "DEEPSPEED"):
        raise ValueError(f"accelerate is configured for {name}, but hybridrl's preference trainers run "
                         "data-parallel only (DDP: every process holds the whole model): run `accelerate "
                         "config` and choose multi-GPU without FSDP or DeepSpeed")


def apply_lora(
    model: PreTrainedModel, *, r: int, alpha: int, dropout: float, target_modules: str | list[str] = "all-linear"
) -> PreTrainedModel:
    """The model wrapped with LoRA adapters of rank ``r`` (peft) on ``target_modules``: module names, or
    ``"all-linear"`` for every linear layer but the output head."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


class AdapterDisabled(torch.nn.Module):
    """A LoRA model seen with its adapter switched off: the base model, sharing the policy's weights.

    Self-play's reference for a LoRA policy (TRL's choice under PEFT): no frozen copy is kept, and every
    forward runs in eval mode inside peft's ``disable_adapter()``. Used without gradient (anchors, mixture
    sampling); ``train()``/``eval()`` on it leave the policy's mode alone.
    """

    def __init__(self, peft_model: torch.nn.Module) -> None:
        super().__init__()
        self.peft_model = peft_model

    def train(self, mode: bool = True) -> AdapterDisabled:
        self.training = mode  # the policy's own mode is the trainer's to set
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        was_training = self.peft_model.training
        self.peft_model.eval()
        try:
            with self.peft_model.disable_adapter():
                return self.peft_model(*args, **kwargs)
        finally:
            self.peft_model.train(was_training)

    def get_base_model(self) -> torch.nn.Module:
        """The transformers model under the adapter (what ``tokens.accepts_logits_to_keep`` inspects)."""
        return self.peft_model.get_base_model()
