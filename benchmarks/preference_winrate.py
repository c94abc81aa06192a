"""Pairwise preference methods against the SFT model on the synthetic judged task: tuned on validation
prompts, reported on test prompts over several training seeds, and the f-DPO diversity trade-off.

DPO (reverse KL), IPO, and f-DPO with Jensen-Shannon and with forward KL train from the task's SFT model
on the task's labelled pairs, each at every beta of ``betas`` and every seed of ``seeds``. Every model is
scored on the validation and on the test prompts: win rate over SFT under the task's weighted judge
(ties count one half), KL(policy || SFT) per answer in nats, and diversity (distinct-1/2 among the answers
to one prompt, per-token sampling entropy). Then:

1. **tune**: each method keeps the beta of its best mean *validation* win rate (the same number of tries,
   ``len(betas)``, for every method);
2. **report**: the kept beta's *test* scores, mean ± sd over seeds, with KL, judge calls (the labelled
   pairs, each judged once when the task was made) and optimizer steps;
3. **trade-off**: each f-DPO beta next to the DPO beta of the closest mean validation win rate; the
   differences (win rate, KL, diversity) are read on the test prompts.

    HYBRIDRL_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/preference_winrate.py

Runs live under ``--runs`` and resume: a rerun skips finished trainings and evaluations, so two
processes can share the grid (``--methods dpo ipo`` and ``--methods fdpo-js fdpo-fkl``, each with its
own ``--out``) before one run without ``--methods`` writes the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from hybridrl.core.checkpoint import atomic_write_json
from hybridrl.core.seeding import num_threads_from_env

CONFIG = Path(__file__).parent / "configs" / "preference" / "winrate.yaml"
RESULTS = Path(__file__).parent / "results"
EVAL_SEED = 10_000
SCORES = ("win_rate", "kl", "entropy", "distinct_1", "distinct_2", "judge_score")
"""What each evaluation reports, averaged over seeds in the tables."""


def ensure_task(path: Path, cfg: dict) -> None:
    if (path / "validation_prompts.jsonl").exists():
        return
    from hybridrl.preference.task import TaskConfig, make_task

    make_task(path, TaskConfig(seed=cfg["seed"], num_validation_prompts=cfg["validation_prompts"],
                               num_test_prompts=cfg["test_prompts"]))


def train(task: Path, run_dir: Path, cfg: dict, loss: dict, beta: float, seed: int) -> dict[str, Any]:
    """Train one model (skipped when its model is saved); its final training metrics and wall time."""
    cache = run_dir / "train.json"
    if cache.exists() and (run_dir / "model").exists():
        return json.loads(cache.read_text())
    from hybridrl.preference.data import load_preference_dataset, tokenize_pairs
    from hybridrl.preference.losses import PreferenceLossConfig
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.trainer import PairwiseTrainer, TrainConfig

    tokenizer = load_tokenizer(task / "sft_model")
    rows = load_preference_dataset(task / "pairs.jsonl")
    pairs, _ = tokenize_pairs(rows, tokenizer)
    trainer = PairwiseTrainer(
        model=load_causal_lm(task / "sft_model"), tokenizer=tokenizer, pairs=pairs,
        loss_config=PreferenceLossConfig(**loss, beta=beta),
        train_config=TrainConfig(steps=cfg["steps"], batch_size=cfg["batch_size"], learning_rate=cfg["learning_rate"],
                                 seed=seed, progress=False, log_every=50, save_every=10**9, device="cpu"),
        out_dir=run_dir)
    start = time.perf_counter()
    last = trainer.train(resume=True)
    info = {"train_s": time.perf_counter() - start, "final_train_loss": last["loss"],
            "final_train_accuracy": last["rewards/accuracies"], "optimizer_steps": cfg["steps"],
            "judge_calls": len(rows)}
    atomic_write_json(cache, info)
    return info


def evaluate(task: Path, run_dir: Path, split: str, cfg: dict, seed: int) -> dict[str, Any]:
    """Win rate over SFT, KL to SFT and diversity on one split of held-out prompts; cached in the run."""
    cache = run_dir / f"eval-{split}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.task import evaluate_against, read_jsonl
    from hybridrl.preference.winrate import kl_to_reference

    prompts = [row["prompt"] for row in read_jsonl(task / f"{split}_prompts.jsonl")]
    tokenizer = load_tokenizer(task / "sft_model")
    policy, sft = load_causal_lm(run_dir / "model"), load_causal_lm(task / "sft_model")
    result = evaluate_against(policy, sft, tokenizer, prompts, seed=EVAL_SEED + seed,
                              samples_per_prompt=cfg["samples_per_prompt"])
    result.update(kl_to_reference(policy, sft, tokenizer, prompts, seed=EVAL_SEED + seed,
                                  samples_per_prompt=cfg["samples_per_prompt"]))
    result["prompts"] = len(prompts)
    atomic_write_json(cache, result)
    return result


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict], split: str) -> dict[str, float]:
    """Mean and sd over seeds of one setting's scores on a split."""
    out: dict[str, float] = {}
    for key in SCORES:
        out[key], out[f"{key}_sd"] = mean_sd([r[split][key] for r in runs])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--task", type=Path, default=Path("runs/bench/pref_task_split"))
    parser.add_argument("--runs", type=Path, default=Path("runs/bench/preference_winrate"))
    parser.add_argument("--methods", nargs="*", default=None, help="a subset of the config's methods")
    parser.add_argument("--out", type=Path, default=RESULTS / "preference_winrate.json")
    cli = parser.parse_args()
    cfg = yaml.safe_load(cli.config.read_text())
    methods = cli.methods or list(cfg["methods"])
    unknown = set(methods) - set(cfg["methods"])
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}: the config has {', '.join(cfg['methods'])}")

    import torch

    from hybridrl.preference.models import quiet_hf_libraries

    torch.set_num_threads(num_threads_from_env() or 1)  # a shared 2-core CPU
    quiet_hf_libraries()
    began = time.perf_counter()
    ensure_task(cli.task, cfg["task"])

    runs: dict[str, dict[float, list[dict]]] = {}
    for method in methods:
        runs[method] = {}
        for beta in cfg["betas"]:
            runs[method][beta] = []
            for seed in cfg["seeds"]:
                where = cli.runs / f"{method}-beta{beta}-seed{seed}"
                info = train(cli.task, where, cfg, cfg["methods"][method], beta, seed)
                scores = {split: evaluate(cli.task, where, split, cfg, seed) for split in ("validation", "test")}
                runs[method][beta].append({"seed": seed, **info, **scores})
                print(f"{method} beta {beta} seed {seed}: validation {scores['validation']['win_rate']:.3f}, "
                      f"test {scores['test']['win_rate']:.3f}, KL {scores['test']['kl']:.2f} "
                      f"({info['train_s']:.0f} s)", file=sys.stderr, flush=True)

    sweep = [{"method": m, "beta": b, "validation": summarize(rs, "validation"), "test": summarize(rs, "test")}
             for m, by_beta in runs.items() for b, rs in by_beta.items()]
    table = []
    for method in methods:
        rows = [row for row in sweep if row["method"] == method]
        best = max(rows, key=lambda row: row["validation"]["win_rate"])
        first = runs[method][best["beta"]][0]
        table.append({"method": method, "beta": best["beta"], "validation_win_rate": best["validation"]["win_rate"],
                      **best["test"], "judge_calls": first["judge_calls"],
                      "optimizer_steps": first["optimizer_steps"], "seeds": len(cfg["seeds"])})
    dpo = [row for row in sweep if row["method"] == "dpo"]
    matched = []
    for row in sweep:
        if not row["method"].startswith("fdpo") or not dpo:
            continue
        closest = min(dpo, key=lambda d: abs(d["validation"]["win_rate"] - row["validation"]["win_rate"]))
        matched.append({"method": row["method"], "beta": row["beta"], "dpo_beta": closest["beta"],
                        **{f"delta_{k}": row["test"][k] - closest["test"][k] for k in SCORES}})

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    wall_s = time.perf_counter() - began
    atomic_write_json(cli.out, {"config": cfg, "commit": commit, "threads": torch.get_num_threads(),
                                "wall_s": wall_s, "table": table, "sweep": sweep, "matched": matched,
                                "runs": {m: {str(b): rs for b, rs in by.items()} for m, by in runs.items()}})

    print(f"\nwin rate over SFT on the test prompts x {cfg['samples_per_prompt']} answers (weighted judge), "
          f"mean ± sd over seeds {cfg['seeds']}; beta chosen on validation prompts among {cfg['betas']}\n")
    print("| method | beta | win rate vs SFT | KL to SFT (nats) | entropy | distinct-2 | optimizer steps "
          "| judge calls |")
    print("|---|---|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row['method']} | {row['beta']} | {row['win_rate']:.3f} ± {row['win_rate_sd']:.3f} | "
              f"{row['kl']:.2f} ± {row['kl_sd']:.2f} | {row['entropy']:.3f} | {row['distinct_2']:.3f} | "
              f"{row['optimizer_steps']} | {row['judge_calls']} |")
    print("\nthe whole sweep on test prompts (win rate ± sd, KL, entropy):")
    for row in sweep:
        t = row["test"]
        print(f"  {row['method']:9s} beta {row['beta']:<5} validation {row['validation']['win_rate']:.3f}  test "
              f"{t['win_rate']:.3f} ± {t['win_rate_sd']:.3f}  KL {t['kl']:.2f}  H {t['entropy']:.3f}  "
              f"d1 {t['distinct_1']:.3f}  d2 {t['distinct_2']:.3f}")
    if matched:
        print("\nf-DPO minus DPO at the closest validation win rate, on test prompts:")
        for m in matched:
            print(f"  {m['method']:9s} beta {m['beta']:<5} vs DPO beta {m['dpo_beta']:<5} win "
                  f"{m['delta_win_rate']:+.3f}  KL {m['delta_kl']:+.2f}  H {m['delta_entropy']:+.3f}  "
                  f"d1 {m['delta_distinct_1']:+.3f}  d2 {m['delta_distinct_2']:+.3f}")
    print(f"\nwall time {wall_s / 60:.1f} min; results in {cli.out}")


if __name__ == "__main__":
    main()
