"""Training throughput and peak memory: hybridrl's PairwiseTrainer against TRL's DPOTrainer.

Same model (a Llama built from config, saved to a directory), same pairs, same batch size, same
max_length, same learning rate and steps, in one invocation. Each variant runs in a fresh process
(spawned) so that its peak memory is its own; variants are interleaved and repeated, and the best
repeat is reported, because this machine's CPU is shared.

Variants:
- ``hybridrl``: PairwiseTrainer, reference log-probs precomputed (default), prompts run once per
  pair, and ``pairs_per_forward`` from the config (length-grouped model calls); the one-off
  precompute time is folded into the end-to-end number;
- ``hybridrl-refmodel``: PairwiseTrainer with a reference forward every step (TRL's default scheme);
- ``trl-default``: DPOTrainer with DPOConfig defaults that run on a CPU (bf16 off): reference
  forward every step and gradient checkpointing on, as DPOConfig sets them;
- ``trl-tuned``: DPOTrainer with ``precompute_ref_log_probs=True`` and gradient checkpointing off.

tokens/s counts every non-padding token (prompt + completion, chosen + rejected) of the training
steps after the first ``timing_warmup_steps``, as TRL's ``num_tokens`` does.

    HYBRIDRL_THREADS=1 python benchmarks/preference_throughput.py --out runs/bench/throughput.json

The throughput suite (``hybridrl bench throughput``) runs the ``hybridrl`` and ``trl-tuned`` variants
through ``compare``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml

from hybridrl.core.checkpoint import atomic_write_json
from hybridrl.core.seeding import num_threads_from_env

# the preset lives with the other benchmark presets, in the source checkout
CONFIG = Path(__file__).parents[2] / "benchmarks" / "configs" / "preference" / "throughput.yaml"
VARIANTS = ("hybridrl", "trl-tuned", "hybridrl-refmodel", "trl-default")


def _threads() -> int:
    return num_threads_from_env() or 1


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def make_inputs(root: Path, cfg: dict, seed: int) -> tuple[Path, Path]:
    """A model directory and a JSONL of pairs with varied prompt/completion lengths."""
    from hybridrl.preference.models import (
        TinyLMConfig,
        build_tiny_model,
        save_model_dir,
        train_word_tokenizer,
    )
    from hybridrl.preference.task import FILLER, TOPICS, task_vocabulary_text

    tokenizer = train_word_tokenizer(task_vocabulary_text())
    shape = TinyLMConfig(
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_layers"],
        num_heads=cfg["num_heads"],
    )
    model_dir = save_model_dir(build_tiny_model(tokenizer, shape, seed=seed), tokenizer, root / "model")
    rng = random.Random(seed)
    words = [w for ws in TOPICS.values() for w in ws] + list(FILLER)
    max_length = cfg["max_length"]

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    rows = []
    for _ in range(cfg["num_pairs"]):
        prompt_len = rng.randint(8, max_length // 2)
        rows.append(
            {
                "prompt": text(prompt_len) + " :",
                "chosen": " " + text(rng.randint(4, max_length // 2)),
                "rejected": " " + text(rng.randint(4, max_length // 2)),
            }
        )
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir, data


def run_hybridrl(model_dir: str, data: str, cfg: dict, out_dir: str, reference: str) -> dict:
    from hybridrl.preference.data import PreferenceDataConfig, load_preference_dataset, tokenize_pairs
    from hybridrl.preference.losses import PreferenceLossConfig
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.trainer import PairwiseTrainer, TrainConfig

    baseline_mb = _peak_rss_mb()
    tokenizer = load_tokenizer(model_dir)
    setup_start = time.perf_counter()
    pairs, _ = tokenize_pairs(
        load_preference_dataset(data), tokenizer, PreferenceDataConfig(max_length=cfg["max_length"])
    )
    trainer = PairwiseTrainer(
        model=load_causal_lm(model_dir),
        tokenizer=tokenizer,
        pairs=pairs,
        loss_config=PreferenceLossConfig(),
        train_config=TrainConfig(
            steps=cfg["steps"],
            batch_size=cfg["batch_size"],
            learning_rate=cfg["learning_rate"],
            reference=reference,
            pairs_per_forward=cfg.get("hybridrl_pairs_per_forward"),
            progress=False,
            log_every=cfg["steps"],
            save_every=10**9,
        ),
        out_dir=out_dir,
    )
    start = time.perf_counter()
    trainer.prepare_reference()
    precompute_s = time.perf_counter() - start
    setup_s = time.perf_counter() - setup_start
    losses, step_times, step_tokens = [], [], []
    for _ in range(cfg["steps"]):
        tic = time.perf_counter()
        metrics, tokens = trainer.train_step()
        losses.append(float(metrics["loss"]))
        step_times.append(time.perf_counter() - tic)
        step_tokens.append(tokens)
    warm = cfg["timing_warmup_steps"]
    return {
        "tokens_per_s": sum(step_tokens[warm:]) / sum(step_times[warm:]),
        "end_to_end_tokens_per_s": sum(step_tokens) / (sum(step_times) + setup_s),
        "setup_s": setup_s,
        "precompute_s": precompute_s,
        "train_s": sum(step_times),
        "first_loss": losses[0],
        "mean_loss": sum(losses) / len(losses),
        "last_loss": losses[-1],
        "tokens": sum(step_tokens),
        "peak_rss_mb": _peak_rss_mb(),
        "baseline_rss_mb": baseline_mb,
    }


def run_trl(model_dir: str, data: str, cfg: dict, out_dir: str, tuned: bool) -> dict:
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from hybridrl.preference.data import load_preference_dataset
    from hybridrl.preference.models import load_tokenizer

    baseline_mb = _peak_rss_mb()

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.begin: list[float] = []
            self.end: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.end.append(time.perf_counter())

    args = DPOConfig(
        output_dir=out_dir,
        max_steps=cfg["steps"],
        per_device_train_batch_size=cfg["batch_size"],
        learning_rate=cfg["learning_rate"],
        max_length=cfg["max_length"],
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        gradient_checkpointing=not tuned,
        precompute_ref_log_probs=tuned,
    )
    clock = Clock()
    token_marks: list[int] = []

    class Tokens(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            token_marks.append(trainer._total_train_tokens)

    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    setup_start = time.perf_counter()
    trainer = DPOTrainer(
        model=model_dir,
        args=args,
        train_dataset=load_preference_dataset(data),
        processing_class=load_tokenizer(model_dir),
        callbacks=[clock, Tokens(), Losses()],
    )
    trainer.remove_callback(PrinterCallback)  # with tqdm off it prints every log line; ours print a summary
    trainer.train()
    total_s = time.perf_counter() - setup_start  # TRL tokenizes and precomputes in __init__
    warm = cfg["timing_warmup_steps"]
    step_s = [e - b for b, e in zip(clock.begin, clock.end, strict=True)]
    per_step_tokens = [token_marks[0]] + [b - a for a, b in itertools.pairwise(token_marks)]
    return {
        "tokens_per_s": sum(per_step_tokens[warm:]) / sum(step_s[warm:]),
        "end_to_end_tokens_per_s": token_marks[-1] / total_s,
        "train_s": sum(step_s),
        "setup_s": total_s - sum(step_s),
        "first_loss": losses[0] if losses else None,
        "mean_loss": sum(losses) / max(len(losses), 1),
        "last_loss": losses[-1] if losses else None,
        "tokens": token_marks[-1],
        "peak_rss_mb": _peak_rss_mb(),
        "baseline_rss_mb": baseline_mb,
    }


def _worker(
    variant: str, model_dir: str, data: str, cfg: dict, out_dir: str, threads: int, queue: mp.Queue
) -> None:
    import torch

    torch.set_num_threads(threads)
    # the summary is printed by the parent: no progress bars (TRL's reference precompute) or deprecation notes
    os.environ["TQDM_DISABLE"] = "1"
    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    runners = {
        "hybridrl": lambda: run_hybridrl(model_dir, data, cfg, out_dir, "precompute"),
        "hybridrl-refmodel": lambda: run_hybridrl(model_dir, data, cfg, out_dir, "model"),
        "trl-tuned": lambda: run_trl(model_dir, data, cfg, out_dir, tuned=True),
        "trl-default": lambda: run_trl(model_dir, data, cfg, out_dir, tuned=False),
    }
    queue.put(runners[variant]())


def _versions() -> dict:
    import torch
    import transformers
    import trl

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "threads": _threads(),
        "commit": commit,
    }


def load_config(path: Path = CONFIG) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the DPO throughput benchmark from a source checkout "
                                "of hybridrl, or pass --config")
    return yaml.safe_load(path.read_text())


def compare(cfg: dict, *, variants: tuple[str, ...] | list[str] = VARIANTS, repeats: int = 2, seed: int = 0,
            threads: int | None = None,
            echo=lambda line: print(line, file=sys.stderr)) -> dict[str, list[dict]]:
    """Every variant ``repeats`` times, interleaved, each in a fresh process on ``threads`` torch threads
    (default: ``HYBRIDRL_THREADS``, else 1); {variant: [results]}."""
    threads = threads or _threads()
    context = mp.get_context("spawn")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, data = make_inputs(Path(tmp), cfg, seed)
        for repeat in range(repeats):
            for variant in variants:
                queue = context.Queue()
                process = context.Process(
                    target=_worker,
                    args=(variant, str(model_dir), str(data), cfg, f"{tmp}/{variant}-{repeat}", threads, queue),
                )
                process.start()
                result = queue.get()
                process.join()
                results[variant].append(result)
                echo(f"repeat {repeat} {variant:18s} {result['tokens_per_s']:9.0f} tok/s")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/preference_throughput.json"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=None, help="override the config's steps")
    cli = parser.parse_args()
    cfg = load_config(cli.config)
    if cli.steps:
        cfg["steps"] = cli.steps
    results = compare(cfg, variants=cli.variants, repeats=cli.repeats, seed=cli.seed)
    best = {v: max(runs, key=lambda r: r["tokens_per_s"]) for v, runs in results.items()}
    print(
        f"\n{'variant':18s} {'tok/s':>9s} {'e2e tok/s':>10s} {'peak MB':>8s} {'+train MB':>9s} "
        f"{'loss[0]':>8s} {'mean loss':>9s} {'last loss':>9s}"
    )
    for variant, r in best.items():
        print(
            f"{variant:18s} {r['tokens_per_s']:9.0f} {r['end_to_end_tokens_per_s']:10.0f} "
            f"{r['peak_rss_mb']:8.0f} "
            f"{r['peak_rss_mb'] - r['baseline_rss_mb']:9.0f} {r['first_loss'] or float('nan'):8.4f} "
            f"{r['mean_loss']:9.4f} {r['last_loss'] or float('nan'):9.4f}"
        )
    ratios = {}
    for ours in ("hybridrl", "hybridrl-refmodel"):
        for theirs in ("trl-tuned", "trl-default"):
            if ours in best and theirs in best:
                ratios[f"{ours}/{theirs}"] = best[ours]["tokens_per_s"] / best[theirs]["tokens_per_s"]
    for name, ratio in ratios.items():
        print(f"speed-up {name}: {ratio:.2f}x")
    atomic_write_json(
        cli.out,
        {
            "config": cfg,
            "seed": cli.seed,
            "env": _versions(),
            "best": best,
            "runs": results,
            "speedups": ratios,
        },
    )
    print(f"results in {cli.out}")


if __name__ == "__main__":
    main()
