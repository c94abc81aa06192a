"""``hybridrl pref ...``: train pairwise preference methods and reward-model judges, build and evaluate
the synthetic task, win-rate matrices, games; self-play lives in :mod:`hybridrl.cli.pref_selfplay`.

Mounted by the main CLI as ``hybridrl pref``; ``python -m hybridrl.cli.pref`` runs it alone (what
``accelerate launch -m hybridrl.cli.pref train ...`` needs). Importing this module
imports neither transformers nor TRL; every command imports what it needs. Errors are one line on
stderr: exit code 2 for what the user can fix (names, data, files, a run directory in use or holding
another run), 1 when training diverged (the last good checkpoint is kept), 130 on Ctrl-C (progress up
to the last checkpoint is saved; rerunning the command resumes).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hybridrl.cli.errors import one_line_errors
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
    read_prompts,
    run_command,
)
from hybridrl.cli.pref_selfplay import selfplay_command

app = typer.Typer(
    help="Preference optimization on language models (DPO, IPO, f-DPO), self-play Nash learning "
    "(INPO, SPPO, Nash-MP, EGPO, Nash-MD, online IPO) and Nash learning on games.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

def _hold_out(rows: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """(train rows, eval rows) of a ``datasets.Dataset``: a seeded ``fraction`` held out, rows kept in order."""
    kept, held = held_out_indices(len(rows), fraction, seed, "pairs")
    return rows.select(kept), rows.select(held)


@app.command()
def train(
    method: Annotated[str, typer.Argument(help="dpo, fdpo or ipo.")],
    model: Annotated[str, typer.Option(help="HF model id or local model directory.")],
    dataset: Annotated[
        str, typer.Option(help="HF dataset id, dataset directory, or .json/.jsonl/.parquet file.")
    ],
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/pref-METHOD).")] = None,
    split: Annotated[str, typer.Option(help="Dataset split.")] = "train",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed (sampling, shuffling, initialization).")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N (default: automatic).")] = None,
    batch_size: Annotated[int, typer.Option(help="Pairs per device per micro-batch.")] = 8,
    gradient_accumulation_steps: Annotated[
        int, typer.Option("--grad-accum", help="Micro-batches accumulated per optimizer step.")
    ] = 1,
    learning_rate: Annotated[float, typer.Option("--lr", help="Optimizer learning rate.")] = 1e-6,
    warmup_steps: Annotated[int, typer.Option(help="Steps of linear learning-rate warm-up.")] = 0,
    lr_schedule: Annotated[str, typer.Option(help="Decay after warm-up: linear, cosine or constant.")] = "linear",
    beta: Annotated[float | None, typer.Option(help="KL strength (default 0.1; fdpo 1.0).")] = None,
    loss_type: Annotated[str | None, typer.Option(help="sigmoid, ipo, hinge, robust.")] = None,
    divergence: Annotated[
        str | None,
        typer.Option(
            help="f-DPO divergence: reverse_kl, forward_kl, js_divergence (js), alpha_divergence (alpha)."
        ),
    ] = None,
    alpha: Annotated[float | None, typer.Option(help="alpha-divergence coefficient (TRL's).")] = None,
    label_smoothing: Annotated[
        float | None, typer.Option(help="Label-flip rate for the robust loss.")
    ] = None,
    max_length: Annotated[int | None, typer.Option(help="Longest prompt+completion in tokens.")] = 1024,
    max_prompt_length: Annotated[int | None, typer.Option(help="Longest prompt in tokens.")] = None,
    truncation_mode: Annotated[str, typer.Option(help="keep_start or keep_end.")] = "keep_start",
    reference: Annotated[
        str, typer.Option(help="precompute (cached) or model (a forward per step).")
    ] = "precompute",
    lora_r: Annotated[int, typer.Option(help="LoRA rank (0: full fine-tuning).")] = 0,
    merge_lora: Annotated[
        bool, typer.Option(help="With LoRA, save OUT/model merged into the base weights (else the adapter alone).")
    ] = True,
    pairs_per_forward: Annotated[
        int | None, typer.Option(help="Pairs per model call, grouped by length (CPU: 2 is fastest here).")
    ] = None,
    mixed_precision: Annotated[str, typer.Option(help="no, bf16 or fp16.")] = "no",
    dtype: DtypeOption = "float32",
    attn_implementation: AttentionOption = None,
    gradient_checkpointing: CheckpointingOption = False,
    eval_split: Annotated[
        str | None, typer.Option(help="A split of the dataset to score during training (eval/loss...).")
    ] = None,
    eval_fraction: Annotated[
        float, typer.Option(help="Or hold out this fraction of the training split (seeded) as eval pairs.")
    ] = 0.0,
    eval_every: Annotated[int, typer.Option(help="Optimizer steps between evaluations (0: at the end).")] = 0,
    report_to: ReportOption = None,
    log_every: Annotated[int, typer.Option(help="Optimizer steps between metric lines.")] = 10,
    save_every: Annotated[int, typer.Option(help="Optimizer steps between checkpoints.")] = 500,
    resume: Annotated[bool, typer.Option(help="Resume from OUT/checkpoint.pt when present.")] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train METHOD on a preference dataset (prompt/chosen/rejected)."""
    from dataclasses import replace

    from hybridrl.preference.losses import resolve_method

    def body() -> None:
        # validate every name before loading anything heavy
        overrides = {
            k: v
            for k, v in dict(
                beta=beta,
                loss_type=loss_type,
                divergence=divergence,
                alpha=alpha,
                label_smoothing=label_smoothing,
            ).items()
            if v is not None
        }
        loss_config = replace(resolve_method(method), **overrides)
        from hybridrl.preference.data import PreferenceDataConfig
        from hybridrl.preference.trainer import TrainConfig

        data_config = PreferenceDataConfig(
            max_length=max_length, max_prompt_length=max_prompt_length, truncation_mode=truncation_mode
        )  # type: ignore[arg-type]
        if reference not in ("precompute", "model"):
            raise ValueError(f"unknown reference {reference!r}: use 'precompute' or 'model'")
        if mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"unknown mixed_precision {mixed_precision!r}: use 'no', 'bf16' or 'fp16'")
        if lr_schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}: use 'linear', 'cosine' or 'constant'")
        weights_dtype = parse_dtype(dtype)
        check_eval_fraction(eval_fraction, "--eval-split", eval_split is not None)
        train_config = TrainConfig(
            steps=steps,
            batch_size=batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            learning_rate=learning_rate,
            warmup_steps=warmup_steps,
            lr_schedule=lr_schedule,  # type: ignore[arg-type]
            gradient_checkpointing=gradient_checkpointing,
            eval_every=eval_every,
            report_to=tuple(report_to or ()),
            mixed_precision=mixed_precision,  # type: ignore[arg-type]
            reference=reference,
            lora_r=lora_r,
            merge_lora=merge_lora,
            pairs_per_forward=pairs_per_forward,
            log_every=log_every,
            save_every=save_every,  # type: ignore[arg-type]
            seed=seed,
            device=device,
            progress=progress,
        )

        from hybridrl.core.session import prepare_run_dir
        from hybridrl.preference.data import load_preference_dataset, tokenize_pairs
        from hybridrl.preference.models import load_causal_lm, load_tokenizer
        from hybridrl.preference.trainer import PairwiseTrainer

        run_dir = prepare_run_dir(out or Path("runs") / f"pref-{method}")  # before the long loads
        rows = load_preference_dataset(dataset, split=split)
        eval_rows = load_preference_dataset(dataset, split=eval_split) if eval_split is not None else None
        if eval_fraction > 0:
            rows, eval_rows = _hold_out(rows, eval_fraction, seed)
        tokenizer = load_tokenizer(model)
        pairs, report = tokenize_pairs(rows, tokenizer, data_config)
        typer.echo(f"data: {report.summary()}", err=True)
        eval_pairs = None
        if eval_rows is not None:
            eval_pairs, eval_report = tokenize_pairs(eval_rows, tokenizer, data_config)
            typer.echo(f"eval data: {eval_report.summary()}", err=True)
        trainer = PairwiseTrainer(
            model=load_causal_lm(model, dtype=weights_dtype, attn_implementation=attn_implementation),
            tokenizer=tokenizer,
            pairs=pairs,
            loss_config=loss_config,
            train_config=train_config,
            out_dir=run_dir,
            eval_pairs=eval_pairs,
        )
        last = trainer.train(resume=resume)
        summary = ", ".join(
            f"{k}={last[k]:.4g}"
            for k in ("loss", "rewards/accuracies", "rewards/margins", "time/tokens_per_s")
            if k in last
        )
        typer.echo(f"{method}: {trainer.step} steps, {summary}; model in {run_dir / 'model'}")

    run_command(body)


@app.command("make-task")
def make_task_command(
    out: Annotated[Path, typer.Argument(help="Directory for sft_model/, pairs.jsonl, test_prompts.jsonl.")],
    seed: Annotated[int, typer.Option(help="Random seed (sampling, shuffling, initialization).")] = 0,
    sft_steps: Annotated[int, typer.Option(help="SFT warm-up steps.")] = 800,
    test_prompts: Annotated[int, typer.Option(help="Held-out prompts for reported win rates.")] = 400,
    validation_prompts: Annotated[
        int, typer.Option(help="Held-out prompts for tuning (validation_prompts.jsonl), drawn before the test ones.")
    ] = 0,
) -> None:
    """Build the synthetic judged task: tiny SFT model + preference pairs labelled by the judge."""

    def body() -> None:
        from hybridrl.preference.task import TaskConfig, make_task

        summary = make_task(out, TaskConfig(seed=seed, sft_steps=sft_steps, num_test_prompts=test_prompts,
                                            num_validation_prompts=validation_prompts))
        typer.echo(
            f"task in {out}: {summary['num_pairs']} pairs from {summary['num_train_prompts']} prompts, "
            f"{summary['num_validation_prompts']} validation and {summary['num_test_prompts']} test prompts, "
            "SFT judge score "
            f"{summary['sft_mean_judge_score']:.2f}/{summary['max_judge_score']:.0f}"
        )

    run_command(body)


@app.command("eval-task")
def eval_task_command(
    model: Annotated[str, typer.Option(help="Trained model directory.")],
    task: Annotated[Path, typer.Option(help="Task directory from make-task.")],
    seed: Annotated[int, typer.Option(help="Random seed (sampling, shuffling, initialization).")] = 0,
    samples_per_prompt: Annotated[int, typer.Option(help="Answers sampled per prompt and model.")] = 4,
    split: Annotated[str, typer.Option(help="test, or validation (to choose hyperparameters on).")] = "test",
) -> None:
    """Win rate of MODEL against the task's SFT model on held-out prompts, its KL to that model, and diversity."""

    def body() -> None:
        import json

        from hybridrl.preference.models import load_causal_lm, load_tokenizer
        from hybridrl.preference.task import evaluate_against, read_jsonl
        from hybridrl.preference.winrate import kl_to_reference

        if split not in ("test", "validation"):
            raise ValueError(f"unknown --split {split!r}: use test or validation")
        path = task / f"{split}_prompts.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: make the task with --validation-prompts N")
        prompts = [row["prompt"] for row in read_jsonl(path)]
        policy, sft = load_causal_lm(model), load_causal_lm(task / "sft_model")
        tokenizer = load_tokenizer(task / "sft_model")
        result = evaluate_against(policy, sft, tokenizer, prompts, seed=seed, samples_per_prompt=samples_per_prompt)
        result.update(kl_to_reference(policy, sft, tokenizer, prompts, seed=seed,
                                      samples_per_prompt=samples_per_prompt))
        typer.echo(json.dumps(result, indent=2))

    run_command(body)


@app.command("games")
def games_command(
    method: Annotated[
        list[str] | None, typer.Option(help="nash_mp, egpo, nash_md, inpo, sppo or online_ipo; repeat.")
    ] = None,
    n: Annotated[int, typer.Option(help="Responses per game (the game is n x n).")] = 10,
    beta: Annotated[float, typer.Option(help="KL regularization toward the reference.")] = 0.1,
    iterations: Annotated[int, typer.Option(help="Solver iterations per game.")] = 3000,
    samples: Annotated[int | None, typer.Option(help="Preference queries per estimate (default: exact).")] = None,
    games: Annotated[int, typer.Option(help="Random intransitive games, solved together.")] = 10,
    seed: Annotated[int, typer.Option(help="Seeds the random games and the sampled estimates.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    out: Annotated[Path, typer.Option(help="PNG of the duality gap per iteration (a .json beside it).")] = Path(
        "runs/nash_games.png"
    ),
    x_axis: Annotated[
        str, typer.Option(help="iterations, or queries: preference comparisons used (exact: n^2 per evaluation).")
    ] = "iterations",
) -> None:
    """Duality gap vs iteration (or oracle queries) of Nash-learning methods on random intransitive games."""
    from hybridrl.bench.report.plots import X_AXES, import_pyplot, write_gap_plot
    from hybridrl.core.checkpoint import atomic_write_json
    from hybridrl.preference.games import (
        GAP_FLOOR,
        METHODS,
        SOLVERS,
        gap_bands,
        gap_curves,
        queries_per_iteration,
    )

    methods = method or list(METHODS)
    with one_line_errors():
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}: use {', '.join(METHODS)}")
        if x_axis not in X_AXES:
            raise ValueError(f"unknown x axis {x_axis!r}: use {' or '.join(X_AXES)}")
        if import_pyplot() is None:  # said before the solve, not after it
            raise ValueError("plotting needs matplotlib, which is not installed: pip install 'hybridrl[bench]'")
        curves = gap_curves(methods, n=n, beta=beta, iterations=iterations, samples=samples, seed=seed,
                            num_games=games, device=device)
        bands = gap_bands(curves, {m: queries_per_iteration(m, n, samples) for m in methods})
        kind = "exact preferences" if samples is None else f"{samples} samples per estimate"
        # a method without a reference term is scored by gap_curves on the unregularized game
        unanchored = {m: f"{m} (beta=0 gap)" for m in methods if not SOLVERS[m].regularized}
        write_gap_plot(bands, out, title=f"n={n}, beta={beta}, {kind}, seed={seed}", band=("min", "max"),
                       ylabel=f"duality gap (median, min-max over {games} games)", floor=GAP_FLOOR,
                       labels=unanchored, x=x_axis)
        summary = {m: {"gap_final_median": b["median"][-1], "gap_final_max": b["max"][-1],
                       "queries": b["queries"][-1]} for m, b in bands.items()}
        atomic_write_json(out.with_suffix(".json"), summary)
    typer.echo(f"{'method':<12} {'final gap (median)':>20} {'final gap (max)':>18}   ({games} games, seed {seed})")
    for name, row in summary.items():
        typer.echo(f"{name:<12} {row['gap_final_median']:>20.3g} {row['gap_final_max']:>18.3g}")
    typer.echo(f"plot: {out}")


app.command("selfplay")(selfplay_command)  # its own room: hybridrl.cli.pref_selfplay


@app.command("winrate")
def winrate_command(
    model: Annotated[list[str], typer.Option(help="Model directory or HF id; repeat for every player.")],
    out: Annotated[Path, typer.Option(help="JSON file for the matrix.")],
    task: Annotated[Path | None, typer.Option(help="Task directory (its test_prompts.jsonl).")] = None,
    prompts: Annotated[str | None, typer.Option(help=PROMPTS_HELP + " Instead of --task.")] = None,
    prompts_split: Annotated[str, typer.Option(help="Split of a dataset directory or Hub dataset.")] = "train",
    prompt_field: Annotated[str | None, typer.Option(help=PROMPT_FIELD_HELP)] = None,
    name: Annotated[
        list[str] | None, typer.Option(help="Player names, one per --model (default: directory names).")
    ] = None,
    judge: Annotated[str, typer.Option(help=JUDGE_HELP)] = "majority",
    position_bias: Annotated[str, typer.Option(help="none, both or flip.")] = "none",
    samples_per_prompt: Annotated[int, typer.Option(help="Answers sampled per prompt and model.")] = 4,
    num_prompts: Annotated[int | None, typer.Option(help="Use the first N prompts (default all).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest sampled answer, in tokens.")] = 12,
    seed: Annotated[int, typer.Option(help="Random seed (sampling, shuffling, initialization).")] = 0,
) -> None:
    """Pairwise win-rate matrix (with bootstrap CIs over prompts) of several models under a judge.

    Every model answers with the first model's tokenizer, so the players must share one vocabulary.
    """

    def body() -> None:
        from hybridrl.preference.oracles import resolve_judge
        from hybridrl.preference.winrate import format_matrix, winrate_matrix, write_matrix

        if (task is None) == (prompts is None):
            raise ValueError("pass exactly one of --task DIR or --prompts FILE")
        if len(model) < 2:
            raise ValueError(f"a win-rate matrix needs at least two --model, got {len(model)}")
        # a run directory's model/ is named after the run
        names = list(name or []) or [Path(m).parent.name if Path(m).name == "model" else Path(m).name for m in model]
        if len(names) != len(model):
            raise ValueError(f"got {len(names)} --name for {len(model)} --model")
        if len(set(names)) != len(names):
            raise ValueError(f"player names must differ, got {names}: pass --name for each --model")
        if samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be at least 1, got {samples_per_prompt}")
        source = task / "test_prompts.jsonl" if task is not None else prompts
        prompt_texts = read_prompts(source, prompts_split, prompt_field)  # type: ignore[arg-type]
        prompt_texts = prompt_texts[:num_prompts] if num_prompts else prompt_texts
        oracle = resolve_judge(judge, position_bias=position_bias, seed=seed)  # type: ignore[arg-type]

        from hybridrl.preference.models import load_causal_lm, load_tokenizer

        players = {n: load_causal_lm(m) for n, m in zip(names, model, strict=True)}
        matrix = winrate_matrix(
            players,
            load_tokenizer(model[0]),
            prompt_texts,
            oracle,
            judge_name=judge,
            seed=seed,
            samples_per_prompt=samples_per_prompt,
            max_new_tokens=max_new_tokens,
        )
        write_matrix(matrix, out)
        typer.echo(format_matrix(matrix))
        typer.echo(f"matrix in {out}")

    run_command(body)


@app.command("train-judge")
def train_judge_command(
    kind: Annotated[
        str,
        typer.Argument(
            help="bt (small Bradley-Terry judge), pairwise (small general preference judge) or rm (a Hugging "
            "Face reward model fine-tuned from --model)."
        ),
    ],
    pairs: Annotated[
        str,
        typer.Option(
            help="Pairs with prompt/chosen/rejected (e.g. the task's pairs.jsonl); for rm also a .json/.parquet "
            "file, a dataset directory or a Hub dataset id, as `pref train --dataset`."
        ),
    ],
    out: Annotated[Path, typer.Option(help="File (bt, pairwise) or model directory (rm) for the judge.")],
    model: Annotated[
        str | None, typer.Option(help="rm: causal LM or sequence classifier to start from (HF id or directory).")
    ] = None,
    split: Annotated[str, typer.Option(help="rm: split of a dataset directory or Hub dataset.")] = "train",
    epochs: Annotated[int, typer.Option(help="bt, pairwise: passes over the pairs.")] = 30,
    steps: Annotated[int, typer.Option(help="rm: AdamW steps.")] = 200,
    learning_rate: Annotated[float, typer.Option("--lr", help="rm: AdamW learning rate.")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="rm: pairs per step.")] = 8,
    max_length: Annotated[int | None, typer.Option(help="rm: longest row in tokens (cut at its start).")] = 1024,
    seed: Annotated[int, typer.Option(help="Random seed (sampling, shuffling, initialization).")] = 0,
    device: Annotated[str | None, typer.Option(help="rm: cpu, cuda, cuda:N (default: automatic).")] = None,
) -> None:
    """Train a local preference judge from labelled pairs; prints the --judge name to use it with.

    rm fits a reward model r(x, y) with the Bradley-Terry loss -log sigmoid(r(x, chosen) - r(x, rejected))
    and saves it (model and tokenizer) in OUT: use it as --judge rm:OUT.
    """

    def body() -> None:
        if kind not in ("bt", "pairwise", "rm"):
            raise ValueError(f"unknown judge kind {kind!r}: use 'bt', 'pairwise' or 'rm'")
        if kind == "rm":
            _train_reward_model(pairs, out, model, split=split, steps=steps, learning_rate=learning_rate,
                                batch_size=batch_size, max_length=max_length, seed=seed, device=device)
            return
        from hybridrl.preference.oracles import JudgeTrainConfig, train_learned_judge
        from hybridrl.preference.task import read_jsonl

        if model is not None:
            raise ValueError(f"--model trains a reward model: use `train-judge rm`, not {kind!r}")
        if not Path(pairs).is_file():
            raise FileNotFoundError(f"pair file {pairs} does not exist")
        rows = read_jsonl(pairs)
        missing = [c for c in ("prompt", "chosen", "rejected") if rows and c not in rows[0]]
        if missing:
            raise ValueError(f"pair file {pairs} lacks column(s) {missing}")
        judge = train_learned_judge(rows, kind, JudgeTrainConfig(epochs=epochs, seed=seed))  # type: ignore[arg-type]
        judge.save(out)
        typer.echo(f"{kind} judge trained on {len(rows)} pairs: use --judge {kind}:{out}")

    run_command(body)


def _train_reward_model(pairs: str, out: Path, model: str | None, *, split: str, **settings: Any) -> None:
    """``train-judge rm``: fit, save and name the reward model (settings: ``RewardTrainConfig``'s fields)."""
    from hybridrl.preference.data import load_preference_dataset
    from hybridrl.preference.reward_models import (
        RewardTrainConfig,
        load_reward_model_for_training,
        save_reward_model,
        train_reward_model,
    )

    if model is None:
        raise ValueError("train-judge rm needs --model: the causal LM or sequence classifier to start from")
    config = RewardTrainConfig(**settings)  # checked before anything loads
    rows = load_preference_dataset(pairs, split=split)
    reward_model, tokenizer = load_reward_model_for_training(model, seed=config.seed)
    losses = train_reward_model(reward_model, tokenizer, rows, config)
    save_reward_model(reward_model, tokenizer, out)
    typer.echo(f"rm judge trained on {len(rows)} pairs for {len(losses)} steps (loss {losses[0]:.4g} -> "
               f"{losses[-1]:.4g}): use --judge rm:{out}")


def main() -> None:  # `python -m hybridrl.cli.pref`
    app()


if __name__ == "__main__":
    sys.exit(main())
