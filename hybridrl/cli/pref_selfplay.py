"""``hybridrl pref selfplay``: self-play Nash learning on a language model (mounted by :mod:`hybridrl.cli.pref`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hybridrl.cli.pref_common import (
    JUDGE_HELP,
    PROMPT_FIELD_HELP,
    PROMPTS_HELP,
    AttentionOption,
    CheckpointingOption,
    DtypeOption,
    ReportOption,
    check_eval_fraction,
    held_out_indices,
    parse_dtype,
    parse_params,
    read_prompts,
    run_command,
)


def _eval_prompts(train: list[Any], source: str | None, split: str, field: str | None) -> list[Any]:
    """The prompts of ``--eval-prompts`` (none without it), warning on stderr about those also trained on."""
    if source is None:
        return []
    from hybridrl.preference.prompts import load_prompts, prompt_key

    held = load_prompts(source, split=split, field=field, split_option="--eval-prompts-split")
    shared = len({prompt_key(p) for p in held} & {prompt_key(p) for p in train})
    if shared:
        typer.echo(f"warning: {shared} of the {len(held)} eval prompts are training prompts too", err=True)
    return held



def selfplay_command(
    method: Annotated[str, typer.Argument(help="inpo, sppo, nash_mp, egpo, nash_md, online_ipo or online_dpo.")],
    model: Annotated[str, typer.Option(help="Initial policy and reference: HF model id or local directory.")],
    prompts: Annotated[str, typer.Option(help=PROMPTS_HELP)],
    out: Annotated[Path, typer.Option(help="Run directory; rerunning with it resumes.")],
    judge: Annotated[str, typer.Option(help=JUDGE_HELP)] = "majority",
    prompts_split: Annotated[str, typer.Option(help="Split of a dataset directory or Hub dataset.")] = "train",
    prompt_field: Annotated[str | None, typer.Option(help=PROMPT_FIELD_HELP)] = None,
    position_bias: Annotated[str, typer.Option(help="none, both (average both orders) or flip.")] = "none",
    iterations: Annotated[int, typer.Option(help="Rounds of sampling, judging and updating.")] = 3,
    samples_per_prompt: Annotated[int, typer.Option(help="Answers K per prompt and iteration.")] = 4,
    prompts_per_iteration: Annotated[
        int | None, typer.Option(help="Prompts drawn per iteration (default all).")
    ] = None,
    steps_per_iteration: Annotated[
        int, typer.Option(help="Optimizer steps per iteration and phase (online_ipo, nash_md: one).")
    ] = 20,
    batch_size: Annotated[int, typer.Option(help="Answer pairs per step.")] = 64,
    learning_rate: Annotated[float, typer.Option("--lr", help="Optimizer learning rate.")] = 5e-7,
    lr_schedule: Annotated[
        str, typer.Option(help="Rate after warm-up: constant, linear or cosine (to 0 at the span's end).")
    ] = "constant",
    warmup_ratio: Annotated[float, typer.Option(help="Fraction of the span's steps warmed up linearly from 0.")] = 0.0,
    lr_schedule_span: Annotated[
        str, typer.Option(help="run (the whole run's kept steps) or iteration (restart every iteration).")
    ] = "run",
    max_new_tokens: Annotated[int, typer.Option(help="Longest sampled answer, in tokens.")] = 64,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of the answers.")] = 1.0,
    eval_prompts: Annotated[
        str | None,
        typer.Option(help="Held-out prompts (same kinds of source as --prompts, same --prompt-field) on which the "
                     "policy is evaluated against the reference: eval/win_rate_vs_ref, eval/kl_to_ref."),
    ] = None,
    eval_prompts_split: Annotated[
        str | None, typer.Option(help="Split of a dataset directory or Hub dataset for --eval-prompts "
                                 "(default: --prompts-split).")
    ] = None,
    eval_fraction: Annotated[
        float, typer.Option(help="Or hold out this fraction of the prompts (seeded by --seed) as eval prompts.")
    ] = 0.0,
    eval_every: Annotated[
        int, typer.Option(help="Iterations between evaluations (always after the last; 0: only after the last).")
    ] = 1,
    eval_samples_per_prompt: Annotated[
        int, typer.Option(help="Answers per eval prompt from the policy and from the reference.")
    ] = 2,
    param: Annotated[
        list[str] | None, typer.Option(help="Method hyperparameter KEY=VALUE (e.g. eta=4); repeat.")
    ] = None,
    lora_r: Annotated[
        int, typer.Option(help="LoRA rank (0: full fine-tuning); the reference is then the base model.")
    ] = 0,
    lora_alpha: Annotated[int, typer.Option(help="LoRA scaling numerator.")] = 16,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.0,
    lora_target_modules: Annotated[
        str, typer.Option(help="Comma-separated module names with adapters, or all-linear.")
    ] = "all-linear",
    micro_batch_size: Annotated[
        int | None, typer.Option(help="Answer pairs per forward, gradients accumulated (default: the batch).")
    ] = None,
    mixed_precision: Annotated[
        str, typer.Option(help="no, bf16 or fp16 (autocast of the training forward; fp16 loss-scaled, CUDA only).")
    ] = "no",
    dtype: DtypeOption = "float32",
    attn_implementation: AttentionOption = None,
    gradient_checkpointing: CheckpointingOption = False,
    cpu_backups: Annotated[
        bool, typer.Option(help="Keep the extragradient backup (weights, AdamW state) in host memory.")
    ] = False,
    report_to: ReportOption = None,
    seed: Annotated[int, typer.Option(help="Random seed (sampling, shuffling, initialization).")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N (default: automatic).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar over iterations.")] = True,
) -> None:
    """Self-play Nash learning: sample K answers per prompt, judge them, update; resumes from OUT.

    Judged samples are saved before each update, so a rerun after a kill never asks the judge again about
    them. With --lora-r only a LoRA adapter trains (the reference is the base model with the adapter
    disabled); OUT/model is saved with the adapter merged in, a plain model.

    With --eval-prompts (or --eval-fraction) the policy is evaluated on held-out prompts every --eval-every
    iterations and after the last: its win rate over the reference under the judge and its KL to the
    reference, on the iteration's metrics line (the judge calls of evaluations are eval/judge_calls, not
    judge_calls).

    Several GPUs: `accelerate launch --multi_gpu --num_processes N -m hybridrl.cli.pref selfplay ...` (or
    torchrun): each process samples and judges its share of the prompts, gradients are summed over the
    processes (data-parallel; FSDP and DeepSpeed are refused), only the first process writes to OUT.
    """

    def body() -> None:
        from hybridrl.preference.oracles import resolve_judge
        from hybridrl.preference.selfplay import SelfPlayConfig, resolve_selfplay_method
        from hybridrl.preference.selfplay_parallel import launched_processes, make_processes
        from hybridrl.preference.selfplay_spec import method_config

        check_eval_fraction(eval_fraction, "--eval-prompts", eval_prompts is not None)
        spec = resolve_selfplay_method(method)
        config = method_config(spec, parse_params(param))
        run_config = SelfPlayConfig(
            iterations=iterations,
            samples_per_prompt=samples_per_prompt,
            prompts_per_iteration=prompts_per_iteration,
            steps_per_iteration=steps_per_iteration,
            batch_size=batch_size,
            learning_rate=learning_rate,
            lr_schedule=lr_schedule,  # type: ignore[arg-type]
            warmup_ratio=warmup_ratio,
            lr_schedule_span=lr_schedule_span,  # type: ignore[arg-type]
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            eval_every=eval_every,
            eval_samples_per_prompt=eval_samples_per_prompt,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            lora_target_modules=tuple(m.strip() for m in lora_target_modules.split(",") if m.strip()),
            micro_batch_size=micro_batch_size,
            mixed_precision=mixed_precision,  # type: ignore[arg-type]
            gradient_checkpointing=gradient_checkpointing,
            cpu_backups=cpu_backups,
            report_to=tuple(report_to or ()),
            seed=seed,
            device=device,
            progress=progress,
        )
        weights_dtype = parse_dtype(dtype)
        prompt_list = read_prompts(prompts, prompts_split, prompt_field)
        eval_list = _eval_prompts(prompt_list, eval_prompts, eval_prompts_split or prompts_split, prompt_field)
        if eval_fraction > 0:
            kept, held = held_out_indices(len(prompt_list), eval_fraction, seed, "prompts")
            prompt_list, eval_list = [prompt_list[i] for i in kept], [prompt_list[i] for i in held]
        # a learned judge loads after the cheap checks, on the policy's device (each process's own when
        # several were launched)
        judge_device = device
        if launched_processes() > 1:
            judge_device = str(make_processes(device).device)
        oracle = resolve_judge(judge, position_bias=position_bias, seed=seed, device=judge_device)  # type: ignore[arg-type]
        from hybridrl.core.session import prepare_run_dir

        prepare_run_dir(out)  # before the models load

        from hybridrl.preference.models import load_causal_lm, load_tokenizer
        from hybridrl.preference.selfplay import SelfPlayTrainer

        trainer = SelfPlayTrainer(
            spec=spec,
            method_config=config,
            config=run_config,
            # the reference: a frozen copy, or with LoRA the adapter-free base
            model=load_causal_lm(model, dtype=weights_dtype, attn_implementation=attn_implementation),
            tokenizer=load_tokenizer(model),
            prompts=prompt_list,
            judge=oracle,
            out_dir=out,
            eval_prompts=eval_list,
        )
        last = trainer.run()
        if not trainer.processes.is_main:
            return  # one summary line per run, not per process
        summary = ", ".join(f"{k}={v:.4g}" for k, v in last.items())
        typer.echo(
            f"{method}: {trainer.iteration} iterations, {trainer.judge_calls} new judge calls"
            + (f", last: {summary}" if summary else "")
            + f"; model in {out / 'model'}"
        )

    run_command(body)
