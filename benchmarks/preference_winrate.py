"""Win rate against the SFT model, and the f-DPO diversity trade-off, on the synthetic judged task.

1. DPO (reverse KL) is trained on the task's pairs; its answers to the held-out prompts are compared
   with the SFT model's under the programmatic judge (ties count one half). Goal: above 60%.
2. f-DPO with Jensen-Shannon and forward KL is trained with the same settings at several betas; for
   each run the table gives win rate and diversity (distinct-1/2 among the answers to one prompt, and
   the per-token sampling entropy), so that divergences can be compared at similar win rates.

    HYBRIDRL_THREADS=1 python benchmarks/preference_winrate.py --seeds 0 1 2 --out runs/bench/winrate.json

The task is built (``hybridrl pref make-task``) into ``--task`` when it is not there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from hybridrl.core.checkpoint import atomic_write_json
from hybridrl.core.seeding import num_threads_from_env

CONFIG = Path(__file__).parent / "configs" / "preference" / "winrate.yaml"
MATCHED_KEYS = ("win_rate", "entropy", "distinct_1", "distinct_2")
"""What the matched comparison subtracts: the win rate (how well matched) and the diversity measures."""


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


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of each (divergence, beta) setting."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["divergence"], run["beta"]), []).append(run)
    rows = []
    for (divergence, beta), group in sorted(groups.items()):
        row = {"divergence": divergence, "beta": beta, "seeds": [r["seed"] for r in group]}
        for key in ("win_rate", "entropy", "distinct_1", "distinct_2", "judge_score"):
            values = [r[key] for r in group]
            row[key] = statistics.mean(values)
            row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def matched_comparisons(summary: list[dict]) -> list[dict]:
    """Each f-DPO setting next to the reverse-KL (DPO) setting of the closest mean win rate."""
    dpo = [row for row in summary if row["divergence"] == "reverse_kl"]
    matches = []
    for row in summary:
        if row["divergence"] == "reverse_kl" or not dpo:
            continue
        closest = min(dpo, key=lambda d: abs(d["win_rate"] - row["win_rate"]))
        matches.append(
            {
                "divergence": row["divergence"],
                "beta": row["beta"],
                "dpo_beta": closest["beta"],
                **{f"delta_{key}": row[key] - closest[key] for key in MATCHED_KEYS},
            }
        )
    return matches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--task", type=Path, default=Path("runs/bench/pref_task"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training and sampling seeds")
    parser.add_argument("--task-seed", type=int, default=0, help="seed of the task when it has to be built")
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

        make_task(cli.task, TaskConfig(seed=cli.task_seed))
    task_summary = json.loads((cli.task / "task.json").read_text())

    grid = [("reverse_kl", cfg["beta"])]
    if not cli.skip_tradeoff:
        grid += [(d, b) for b in cfg["betas_tradeoff"] for d in cfg["divergences"] if (d, b) not in grid]
    runs = []
    for seed in cli.seeds:
        for divergence, beta in grid:
            run_dir = cli.out.parent / f"winrate-{divergence}-beta{beta}-seed{seed}"
            result = train_and_evaluate(cli.task, run_dir, cfg, divergence=divergence, beta=beta, seed=seed)
            runs.append(result)
            print(
                f"seed {seed} {divergence:14s} beta={beta:<5} win={result['win_rate']:.3f} "
                f"d1={result['distinct_1']:.3f} d2={result['distinct_2']:.3f} H={result['entropy']:.3f} "
                f"({result['train_s']:.0f}s)",
                file=sys.stderr,
            )

    for headline in (r for r in runs if (r["divergence"], r["beta"]) == grid[0]):
        print(
            f"DPO vs SFT on {headline['num_comparisons']} held-out answers (seed {headline['seed']}): "
            f"win rate {headline['win_rate']:.3f}, judge score {headline['judge_score']:.2f} vs "
            f"{headline['baseline_judge_score']:.2f} (max {task_summary['max_judge_score']:.0f})"
        )
    summary = summarize(runs)
    print(
        f"\nmean +- sd over seeds {cli.seeds}\n{'divergence':14s} {'beta':>5s} {'win rate':>13s} "
        f"{'entropy':>13s} {'distinct-1':>10s} {'distinct-2':>10s} {'judge':>6s}"
    )
    sft = runs[0]
    print(
        f"{'SFT model':14s} {'-':>5s} {0.5:13.3f} {sft['baseline_entropy']:13.3f} "
        f"{sft['baseline_distinct_1']:10.3f} {sft['baseline_distinct_2']:10.3f} {sft['baseline_judge_score']:6.2f}"
    )
    for r in summary:
        print(
            f"{r['divergence']:14s} {r['beta']:5.2f} {r['win_rate']:.3f} +- {r['win_rate_sd']:.3f} "
            f"{r['entropy']:.3f} +- {r['entropy_sd']:.3f} {r['distinct_1']:10.3f} {r['distinct_2']:10.3f} "
            f"{r['judge_score']:6.2f}"
        )
    matches = matched_comparisons(summary)
    print(f"\nf-DPO minus DPO at the closest mean win rate\n{'divergence':14s} {'beta':>5s} {'DPO beta':>8s} "
          f"{'win rate':>8s} {'entropy':>8s} {'dist-1':>7s} {'dist-2':>7s}")
    for m in matches:
        print(
            f"{m['divergence']:14s} {m['beta']:5.2f} {m['dpo_beta']:8.2f} {m['delta_win_rate']:+8.3f} "
            f"{m['delta_entropy']:+8.3f} {m['delta_distinct_1']:+7.3f} {m['delta_distinct_2']:+7.3f}"
        )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    atomic_write_json(
        cli.out,
        {
            "config": cfg,
            "seeds": cli.seeds,
            "task": task_summary,
            "commit": commit,
            "threads": torch.get_num_threads(),
            "summary": summary,
            "matched": matches,
            "runs": runs,
        },
    )
    print(f"results in {cli.out}")


if __name__ == "__main__":
    main()
