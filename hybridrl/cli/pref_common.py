"""What the ``hybridrl pref`` commands share: running a command body (one-line errors, quiet libraries,
thread count), the options both trainers take, and reading prompts, parameters and held-out splits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from hybridrl.cli.errors import one_line_errors
from hybridrl.core.seeding import num_threads_from_env


def quiet_libraries() -> None:
    """The CLI prints its own summary: silence the per-file progress bars of datasets and transformers."""
    from hybridrl.preference.models import quiet_hf_libraries

    quiet_hf_libraries()


def run_command(body: Callable[[], Any]) -> Any:
    with one_line_errors():
        quiet_libraries()
        threads = num_threads_from_env()
        if threads:
            # on a shared or small CPU, fewer intra-op threads avoid oversubscription (measured 40x here)
            torch.set_num_threads(threads)
        return body()


# Options both trainers take.
DtypeOption = Annotated[str, typer.Option(help="Weights' dtype when loading: float32, bfloat16 or float16 (GPU).")]
AttentionOption = Annotated[
    str | None, typer.Option(help="sdpa, eager, flash_attention_2, ... (default: transformers' choice).")
]
CheckpointingOption = Annotated[
    bool, typer.Option(help="Recompute activations in the backward pass (less memory, more time).")
]
ReportOption = Annotated[list[str] | None, typer.Option(help="Also log to tensorboard and/or wandb (repeat).")]


def parse_dtype(name: str) -> torch.dtype:
    """--dtype NAME as a torch dtype; one line naming the choices otherwise."""
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in choices:
        raise ValueError(f"unknown --dtype {name!r}: use {', '.join(choices)}")
    return choices[name]


def check_eval_fraction(fraction: float, other_flag: str, other_given: bool) -> None:
    """One line when ``--eval-fraction`` is out of [0, 1) or given beside the other eval source."""
    if other_given and fraction > 0:
        raise ValueError(f"give {other_flag} or --eval-fraction, not both")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--eval-fraction must be in [0, 1), got {fraction}")


def held_out_indices(n: int, fraction: float, seed: int, what: str) -> tuple[list[int], list[int]]:
    """(kept, held out) indices of ``n`` items: a seeded ``fraction`` (at least one) held out, both in order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(1, round(fraction * n))
    if held >= n:
        raise ValueError(f"--eval-fraction {fraction} leaves no training {what} out of {n}")
    return sorted(order[held:]), sorted(order[:held])


def parse_params(params: list[str] | None) -> dict[str, str]:
    from hybridrl.core.config import parse_assignments

    return parse_assignments(params, "--param")


def read_prompts(source: str | Path, split: str = "train", field: str | None = None) -> list[Any]:
    from hybridrl.preference.prompts import load_prompts

    return load_prompts(source, split=split, field=field)



PROMPTS_HELP = (
    "Prompts: a .jsonl/.json/.parquet file, a dataset directory or a Hugging Face dataset id; a prompt is "
    "text or a list of {role, content} messages (duplicates are dropped)."
)
PROMPT_FIELD_HELP = "Column holding the prompts (default: prompt, else messages)."
JUDGE_HELP = ("majority, weighted, bt:PATH, pairwise:PATH, rm:ID_OR_PATH (a reward model) or lm:ID_OR_PATH "
              "(a causal LM asked which answer is better), on --device.")
