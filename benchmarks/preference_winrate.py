"""Win rate against the SFT model, and the f-DPO diversity trade-off, on the synthetic judged task.

1. DPO (reverse KL) is trained on the task's pairs; its answers to the held-out prompts are compared
   with the SFT model's under the programmatic judge (ties count one half). Goal: above 60%.
2. f-DPO with Jensen-Shannon and forward KL is trained with the same settings at several betas; for
   each run the table gives win rate and diversity (distinct-1/2 among the answers to one prompt, and
   the per-token sampling entropy), so that divergences can be compared at similar win rates.

    HYBRIDRL_THREADS=1 python benchmarks/preference_winrate.py --seed 0 --out runs/bench/winrate.json

The task is built (``hybridrl pref make-task``) into ``--task`` when it is not there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from hybridrl.core.checkpoint import atomic_write_json
from hybridrl.core.seeding import num_threads_from_env

CONFIG = Path(__file__).parent / "configs" / "preference" / "winrate.yaml"


def train_and_evaluate(
    task: Path, run_dir: Path, cfg: dict, *, divergence: str, beta: float, seed: int
) -> dict:
    from hybridrl.preference.data import load_preference_dataset, tokenize_pairs
    from hybridrl.preference.losses import PreferenceLossConfig
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.task import evaluate_against, read_jsonl
    from hybridrl.preference.trainer import PairwiseTrainer, TrainConfig

    tokenizer = load_tokenizer(task / "sft_model")
    pairs, _ = tokenize_pairs(load_preference_dataset(task / "pairs.jsonl"), tokenizer)
    trainer = PairwiseTrainer(
        model=load_causal_lm(task / "sft_model"),
        tokenizer=tokenizer,
        pairs=pairs,
        loss_config=PreferenceLossConfig(beta=beta, divergence=divergence),
        train_config=TrainConfig(
            steps=cfg["steps"],
            batch_size=cfg["batch_size"],
            learning_rate=cfg["learning_rate"],
            seed=seed,
            progress=False,
            log_every=50,
            save_every=10**9,
        ),
        out_dir=run_dir,
    )
    start = time.perf_counter()
    last = trainer.train(resume=False)
    train_s = time.perf_counter() - start
    prompts = [row["prompt"] for row in read_jsonl(task / "test_prompts.jsonl")]
    result = evaluate_against(
        trainer.accelerator.unwrap_model(trainer.model),
        load_causal_lm(task / "sft_model"),
        tokenizer,
        prompts,
        seed=seed,
        samples_per_prompt=cfg["samples_per_prompt"],
    )
    return {
        "divergence": divergence,
        "beta": beta,
        "seed": seed,
        "train_s": train_s,
        "final_train_accuracy": last["rewards/accuracies"],
        "final_train_loss": last["loss"],
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--task", type=Path, default=Path("runs/bench/pref_task"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/preference_winrate.json"))
    parser.add_argument("--skip-tradeoff", action="store_true", help="only the DPO win rate")
    cli = parser.parse_args()
    cfg = yaml.safe_load(cli.config.read_text())

    import torch
    import transformers

    torch.set_num_threads(num_threads_from_env() or 1)  # a shared 2-core CPU: see README
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    if not (cli.task / "pairs.jsonl").exists():
        from hybridrl.preference.task import TaskConfig, make_task

        make_task(cli.task, TaskConfig(seed=cli.seed))
    task_summary = json.loads((cli.task / "task.json").read_text())

    runs = []
    grid = [("reverse_kl", cfg["beta"])]
    if not cli.skip_tradeoff:
        grid += [(d, b) for b in cfg["betas_tradeoff"] for d in cfg["divergences"] if (d, b) not in grid]
    for divergence, beta in grid:
        run_dir = cli.out.parent / f"winrate-{divergence}-beta{beta}-seed{cli.seed}"
        result = train_and_evaluate(cli.task, run_dir, cfg, divergence=divergence, beta=beta, seed=cli.seed)
        runs.append(result)
        print(
            f"{divergence:14s} beta={beta:<5} win={result['win_rate']:.3f} d1={result['distinct_1']:.3f} "
            f"d2={result['distinct_2']:.3f} H={result['entropy']:.3f} ({result['train_s']:.0f}s)",
            file=sys.stderr,
        )

    headline = runs[0]
    print(
        f"\nDPO vs SFT on {headline['num_comparisons']} held-out answers (seed {cli.seed}): "
        f"win rate {headline['win_rate']:.3f}, judge score {headline['judge_score']:.2f} vs "
        f"{headline['baseline_judge_score']:.2f} (max {task_summary['max_judge_score']:.0f})"
    )
    print(
        f"\n{'divergence':14s} {'beta':>5s} {'win rate':>8s} {'distinct-1':>10s} {'distinct-2':>10s} "
        f"{'entropy':>8s} {'judge':>6s}"
    )
    sft = runs[0]
    print(
        f"{'SFT model':14s} {'-':>5s} {0.5:8.3f} {sft['baseline_distinct_1']:10.3f} "
        f"{sft['baseline_distinct_2']:10.3f} "
        f"{sft['baseline_entropy']:8.3f} {sft['baseline_judge_score']:6.2f}"
    )
    for r in sorted(runs, key=lambda r: (r["beta"], r["divergence"])):
        print(
            f"{r['divergence']:14s} {r['beta']:5.2f} {r['win_rate']:8.3f} {r['distinct_1']:10.3f} "
            f"{r['distinct_2']:10.3f} {r['entropy']:8.3f} {r['judge_score']:6.2f}"
        )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    atomic_write_json(
        cli.out,
        {
            "config": cfg,
            "seed": cli.seed,
            "task": task_summary,
            "commit": commit,
            "threads": torch.get_num_threads(),
            "runs": runs,
        },
    )
    print(f"results in {cli.out}")


if __name__ == "__main__":
    main()
