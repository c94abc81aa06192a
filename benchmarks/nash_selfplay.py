"""Nash self-play against DPO and online DPO on the synthetic task with an intransitive judge: tuned on
validation prompts, reported on test prompts over several training seeds.

Every player starts from the task's SFT model. The self-play methods (INPO, SPPO, Nash-MP, EGPO,
Nash-MD, online IPO) and online iterative DPO sample and judge their own answers with the
:class:`~hybridrl.preference.task.MajorityJudge` (a majority vote of three criteria, which has Condorcet
cycles); DPO trains on the task's pairs relabelled by the same judge. The protocol:

1. **tune**: each method (DPO included) trains its ``candidates`` (four each, ``configs/preference/
   nash_selfplay.yaml``) at ``tune_seed``; each is scored by its win rate over SFT on the *validation*
   prompts, and the best is kept;
2. **report**: the kept setting trains at every seed in ``seeds`` (the tuning run is reused for
   ``tune_seed``); each model is scored on the *test* prompts: win rate over SFT with a 95% bootstrap
   interval over prompts, and KL(policy || SFT) per answer (the reference every method regularises
   toward). The table gives mean ± sd over seeds, with each method's optimizer steps and judge calls;
3. **matrix**: every player of ``tune_seed`` against every other on the test prompts.

    HYBRIDRL_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/nash_selfplay.py

Runs live under ``--runs`` and resume: a rerun skips finished trainings and evaluations. Writes
``benchmarks/results/nash_selfplay.json`` (config, tuning scores, per-seed scores, the table) and
``nash_selfplay_matrix.json`` (the heatmap format of ``preference.winrate``).
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

CONFIG = Path(__file__).parent / "configs" / "preference" / "nash_selfplay.yaml"
RESULTS = Path(__file__).parent / "results"
DISPLAY = {"sft": "SFT", "dpo": "DPO", "online_dpo": "online DPO", "inpo": "INPO", "sppo": "SPPO",
           "nash_mp": "Nash-MP", "egpo": "EGPO", "nash_md": "Nash-MD", "online_ipo": "online IPO"}
EVAL_SEED = 10_000


def ensure_task(path: Path, cfg: dict) -> None:
    if (path / "validation_prompts.jsonl").exists():
        return
    from hybridrl.preference.task import TaskConfig, make_task

    make_task(path, TaskConfig(seed=cfg["seed"], num_validation_prompts=cfg["validation_prompts"],
                               num_test_prompts=cfg["test_prompts"]))


def optimizer_steps(method: str, cfg: dict) -> int:
    """Optimizer steps of a run: extragradient methods take two per update, one-step methods one per iteration."""
    if method == "dpo":
        return cfg["iterations"] * cfg["steps_per_iteration"]
    from hybridrl.preference.selfplay import resolve_selfplay_method

    return resolve_selfplay_method(method).optimizer_steps(cfg["iterations"], cfg["steps_per_iteration"])


def train(task: Path, run_dir: Path, method: str, candidate: dict, cfg: dict, seed: int) -> dict[str, Any]:
    """Train one player (resuming a finished or interrupted run); its judge calls and wall time."""
    from hybridrl.core.logging import read_metrics
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.oracles import MajorityJudge
    from hybridrl.preference.task import read_jsonl

    params = {k: v for k, v in candidate.items() if k != "learning_rate"}
    learning_rate = candidate.get("learning_rate", cfg["learning_rate"])
    start = time.perf_counter()
    if method == "dpo":
        from hybridrl.preference.data import tokenize_pairs
        from hybridrl.preference.losses import PreferenceLossConfig
        from hybridrl.preference.oracles import relabel_pairs
        from hybridrl.preference.trainer import PairwiseTrainer, TrainConfig

        rows = read_jsonl(task / "pairs.jsonl")
        tokenizer = load_tokenizer(task / "sft_model")
        pairs, _ = tokenize_pairs(relabel_pairs(MajorityJudge(), rows), tokenizer)
        trainer = PairwiseTrainer(
            model=load_causal_lm(task / "sft_model"), tokenizer=tokenizer, pairs=pairs,
            loss_config=PreferenceLossConfig(**params),
            train_config=TrainConfig(steps=optimizer_steps("dpo", cfg), batch_size=cfg["batch_size"],
                                     learning_rate=learning_rate, seed=seed, progress=False, log_every=50,
                                     save_every=100, device="cpu"),
            out_dir=run_dir)
        trainer.train()
        judge_calls = len(rows)  # every pair of the dataset relabelled once
    else:
        from hybridrl.preference.prompts import unique_prompts
        from hybridrl.preference.selfplay import SelfPlayConfig, SelfPlayTrainer, resolve_selfplay_method
        from hybridrl.preference.selfplay_spec import method_config

        spec = resolve_selfplay_method(method)
        trainer = SelfPlayTrainer(
            spec=spec, method_config=method_config(spec, params),
            config=SelfPlayConfig(iterations=cfg["iterations"], samples_per_prompt=cfg["samples_per_prompt"],
                                  prompts_per_iteration=cfg["prompts_per_iteration"],
                                  steps_per_iteration=cfg["steps_per_iteration"], batch_size=cfg["batch_size"],
                                  learning_rate=learning_rate, max_new_tokens=cfg["max_new_tokens"], seed=seed,
                                  progress=False, device="cpu"),
            model=load_causal_lm(task / "sft_model"), ref_model=load_causal_lm(task / "sft_model"),
            tokenizer=load_tokenizer(task / "sft_model"),
            prompts=unique_prompts(read_jsonl(task / "pairs.jsonl")),  # the training prompts
            judge=MajorityJudge(), out_dir=run_dir)
        trainer.run()
        # every iteration's judgments, whether asked in this process or before an interruption
        judge_calls = int(sum(row["judge_calls"] for row in read_metrics(run_dir / "metrics.jsonl")))
    return {"judge_calls": judge_calls, "optimizer_steps": optimizer_steps(method, cfg),
            "train_s": time.perf_counter() - start}


def evaluate(task: Path, run_dir: Path, split: str, cfg: dict, seed: int) -> dict[str, Any]:
    """Win rate over SFT (bootstrap interval over prompts) and KL to SFT on a split; cached in the run."""
    cache = run_dir / f"eval-{split}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.oracles import MajorityJudge
    from hybridrl.preference.task import read_jsonl
    from hybridrl.preference.winrate import kl_to_reference, winrate_matrix

    prompts = [row["prompt"] for row in read_jsonl(task / f"{split}_prompts.jsonl")]
    tokenizer = load_tokenizer(task / "sft_model")
    policy, sft = load_causal_lm(run_dir / "model"), load_causal_lm(task / "sft_model")
    matrix = winrate_matrix({"policy": policy, "sft": sft}, tokenizer, prompts, MajorityJudge(),
                            judge_name="majority", seed=EVAL_SEED + seed,
                            samples_per_prompt=cfg["eval_samples_per_prompt"], max_new_tokens=cfg["max_new_tokens"])
    kl = kl_to_reference(policy, sft, tokenizer, prompts, seed=EVAL_SEED + seed,
                         samples_per_prompt=cfg["eval_samples_per_prompt"], max_new_tokens=cfg["max_new_tokens"])
    result = {"win_rate": matrix["win_rate"][0][1], "ci": [matrix["ci_low"][0][1], matrix["ci_high"][0][1]],
              "prompts": len(prompts), **kl}
    atomic_write_json(cache, result)
    return result


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--task", type=Path, default=Path("runs/bench/pref_task_split"))
    parser.add_argument("--runs", type=Path, default=Path("runs/bench/nash_selfplay"))
    parser.add_argument("--methods", nargs="*", default=None, help="a subset of the config's candidates")
    parser.add_argument("--out", type=Path, default=RESULTS / "nash_selfplay.json")
    cli = parser.parse_args()
    cfg = yaml.safe_load(cli.config.read_text())
    methods = cli.methods or list(cfg["candidates"])

    import torch

    from hybridrl.preference.models import quiet_hf_libraries

    torch.set_num_threads(num_threads_from_env() or 1)  # a shared 2-core CPU
    quiet_hf_libraries()
    began = time.perf_counter()
    ensure_task(cli.task, cfg["task"])

    def run_dir(method: str, index: int, seed: int) -> Path:
        return cli.runs / f"{method}-c{index}-seed{seed}"

    tuning: dict[str, list[dict]] = {}
    best: dict[str, int] = {}
    for method in methods:
        tuning[method] = []
        for index, candidate in enumerate(cfg["candidates"][method]):
            where = run_dir(method, index, cfg["tune_seed"])
            info = train(cli.task, where, method, candidate, cfg, cfg["tune_seed"])
            scores = evaluate(cli.task, where, "validation", cfg, cfg["tune_seed"])
            tuning[method].append({"candidate": candidate, **info, "validation": scores})
            print(f"tune {method} {candidate}: validation win rate {scores['win_rate']:.3f}, KL {scores['kl']:.2f}",
                  file=sys.stderr, flush=True)
        best[method] = max(range(len(tuning[method])), key=lambda i: tuning[method][i]["validation"]["win_rate"])

    final: dict[str, list[dict]] = {}
    for method in methods:
        candidate = cfg["candidates"][method][best[method]]
        final[method] = []
        for seed in cfg["seeds"]:
            where = run_dir(method, best[method], seed)
            info = train(cli.task, where, method, candidate, cfg, seed)
            final[method].append({"seed": seed, **info, "test": evaluate(cli.task, where, "test", cfg, seed)})
        print(f"{method}: test win rates {[round(r['test']['win_rate'], 3) for r in final[method]]}",
              file=sys.stderr, flush=True)

    table = []
    for method in methods:
        runs = final[method]
        win, win_sd = mean_sd([r["test"]["win_rate"] for r in runs])
        kl, kl_sd = mean_sd([r["test"]["kl"] for r in runs])
        table.append({"method": method, "setting": cfg["candidates"][method][best[method]],
                      "win_rate_mean": win, "win_rate_sd": win_sd, "kl_mean": kl, "kl_sd": kl_sd,
                      "judge_calls": runs[0]["judge_calls"], "optimizer_steps": runs[0]["optimizer_steps"],
                      "seeds": len(runs)})

    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.oracles import MajorityJudge
    from hybridrl.preference.task import read_jsonl
    from hybridrl.preference.winrate import format_matrix, winrate_matrix, write_matrix

    players = {"SFT": load_causal_lm(cli.task / "sft_model")}
    for method in methods:
        players[DISPLAY[method]] = load_causal_lm(run_dir(method, best[method], cfg["tune_seed"]) / "model")
    prompts = [row["prompt"] for row in read_jsonl(cli.task / "test_prompts.jsonl")]
    matrix = winrate_matrix(players, load_tokenizer(cli.task / "sft_model"), prompts, MajorityJudge(),
                            judge_name="majority", seed=EVAL_SEED + cfg["tune_seed"],
                            samples_per_prompt=cfg["eval_samples_per_prompt"], max_new_tokens=cfg["max_new_tokens"])
    write_matrix(matrix, cli.out.with_name("nash_selfplay_matrix.json"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    wall_s = time.perf_counter() - began
    atomic_write_json(cli.out, {"config": cfg, "commit": commit, "threads": torch.get_num_threads(),
                                "wall_s": wall_s, "tuning": tuning, "final": final, "table": table})

    print(f"\nwin rate over SFT on {len(prompts)} test prompts x {cfg['eval_samples_per_prompt']} answers, "
          f"MajorityJudge, mean ± sd over seeds {cfg['seeds']}; settings chosen on validation prompts\n")
    print("| method | setting | win rate vs SFT | KL to SFT (nats) | optimizer steps | judge calls |")
    print("|---|---|---|---|---|---|")
    for row in table:
        setting = ", ".join(f"{k} {v}" for k, v in row["setting"].items())
        print(f"| {DISPLAY[row['method']]} | {setting} | {row['win_rate_mean']:.3f} ± {row['win_rate_sd']:.3f} | "
              f"{row['kl_mean']:.3f} ± {row['kl_sd']:.3f} | {row['optimizer_steps']} | {row['judge_calls']} |")
    print(f"\nwin rate of row over column (seed {cfg['tune_seed']}, 95% bootstrap CI over prompts):\n")
    print(format_matrix(matrix))
    print(f"\nwall time {wall_s / 60:.1f} min; results in {cli.out}")


if __name__ == "__main__":
    main()
