"""Nash self-play (INPO, SPPO, Nash-MP, EGPO) vs DPO and SFT on the synthetic task with an intransitive judge.

Every method starts from the task's SFT model and trains on the same budget (``iterations x
steps_per_iteration`` optimizer steps of ``batch_size`` answer pairs): the self-play methods sample and
judge their own answers with the :class:`~hybridrl.preference.task.MajorityJudge` (a majority vote of
three criteria, which has Condorcet cycles); DPO trains on the task's pairs relabelled by the same judge
(ties dropped). Then every pair of players (SFT, DPO and the four) is compared on the held-out prompts,
giving the full win-rate matrix with bootstrap intervals over prompts.

    HYBRIDRL_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/nash_selfplay.py --seed 0

Writes ``benchmarks/results/nash_selfplay_matrix.json`` (the heatmap format of ``preference.winrate``)
and ``nash_selfplay_runs.json`` beside it (per-run times, judge calls, configs). The task is built into
``--task`` when it is not there (about a minute).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from hybridrl.core.checkpoint import atomic_write_text
from hybridrl.core.seeding import num_threads_from_env

CONFIG = Path(__file__).parent / "configs" / "preference" / "nash_selfplay.yaml"
RESULTS = Path(__file__).parent / "results"
DISPLAY = {"sft": "SFT", "dpo": "DPO", "inpo": "INPO", "sppo": "SPPO", "nash_mp": "Nash-MP", "egpo": "EGPO"}


def train_selfplay(task: Path, run_dir: Path, method: str, params: dict, cfg: dict, seed: int) -> dict:
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.oracles import MajorityJudge
    from hybridrl.preference.prompts import unique_prompts
    from hybridrl.preference.selfplay import SelfPlayConfig, SelfPlayTrainer, resolve_selfplay_method
    from hybridrl.preference.selfplay_spec import method_config
    from hybridrl.preference.task import read_jsonl

    spec = resolve_selfplay_method(method)
    trainer = SelfPlayTrainer(
        spec=spec,
        method_config=method_config(spec, params),
        config=SelfPlayConfig(
            iterations=cfg["iterations"],
            samples_per_prompt=cfg["samples_per_prompt"],
            prompts_per_iteration=cfg["prompts_per_iteration"],
            steps_per_iteration=cfg["steps_per_iteration"],
            batch_size=cfg["batch_size"],
            learning_rate=cfg["learning_rate"],
            max_new_tokens=cfg["max_new_tokens"],
            seed=seed,
            device="cpu",
        ),
        model=load_causal_lm(task / "sft_model"),
        ref_model=load_causal_lm(task / "sft_model"),
        tokenizer=load_tokenizer(task / "sft_model"),
        prompts=unique_prompts(read_jsonl(task / "pairs.jsonl")),  # the training prompts
        judge=MajorityJudge(),
        out_dir=run_dir,
    )
    start = time.perf_counter()
    last = trainer.run()
    return {"train_s": time.perf_counter() - start, "judge_calls": trainer.judge_calls, "last": last}


def train_dpo(task: Path, run_dir: Path, cfg: dict, seed: int) -> dict:
    from hybridrl.preference.data import tokenize_pairs
    from hybridrl.preference.losses import PreferenceLossConfig
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.oracles import MajorityJudge, relabel_pairs
    from hybridrl.preference.task import read_jsonl
    from hybridrl.preference.trainer import PairwiseTrainer, TrainConfig

    rows = read_jsonl(task / "pairs.jsonl")
    relabelled = relabel_pairs(MajorityJudge(), rows)
    tokenizer = load_tokenizer(task / "sft_model")
    pairs, _ = tokenize_pairs(relabelled, tokenizer)
    trainer = PairwiseTrainer(
        model=load_causal_lm(task / "sft_model"),
        tokenizer=tokenizer,
        pairs=pairs,
        loss_config=PreferenceLossConfig(beta=cfg["dpo"]["beta"]),
        train_config=TrainConfig(
            steps=cfg["iterations"] * cfg["steps_per_iteration"],
            batch_size=cfg["batch_size"],
            learning_rate=cfg["dpo"]["learning_rate"],
            seed=seed,
            progress=False,
            log_every=50,
            save_every=10**9,
            device="cpu",
        ),
        out_dir=run_dir,
    )
    start = time.perf_counter()
    last = trainer.train(resume=False)
    return {"train_s": time.perf_counter() - start, "judge_calls": len(rows), "pairs": len(relabelled), "last": last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--task", type=Path, default=Path("runs/bench/pref_task"))
    parser.add_argument("--runs", type=Path, default=Path("runs/bench/nash_selfplay"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "nash_selfplay_matrix.json")
    parser.add_argument("--eval-prompts", type=int, default=None, help="first N held-out prompts (default all)")
    cli = parser.parse_args()
    cfg = yaml.safe_load(cli.config.read_text())

    import torch
    import transformers

    torch.set_num_threads(num_threads_from_env() or 1)  # a shared 2-core CPU
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    began = time.perf_counter()
    if not (cli.task / "pairs.jsonl").exists():
        from hybridrl.preference.task import TaskConfig, make_task

        make_task(cli.task, TaskConfig(seed=cli.seed))

    runs: dict[str, dict] = {}
    runs["dpo"] = train_dpo(cli.task, cli.runs / f"dpo-seed{cli.seed}", cfg, cli.seed)
    print(f"dpo: {runs['dpo']['train_s']:.0f}s", file=sys.stderr)
    for method, params in cfg["methods"].items():
        run_dir = cli.runs / f"{method}-seed{cli.seed}"
        runs[method] = train_selfplay(cli.task, run_dir, method, params, cfg, cli.seed)
        print(f"{method}: {runs[method]['train_s']:.0f}s, {runs[method]['judge_calls']} judge calls", file=sys.stderr)

    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.oracles import MajorityJudge
    from hybridrl.preference.task import read_jsonl
    from hybridrl.preference.winrate import format_matrix, winrate_matrix, write_matrix

    players = {
        "SFT": load_causal_lm(cli.task / "sft_model"),
        "DPO": load_causal_lm(cli.runs / f"dpo-seed{cli.seed}" / "model"),
    }
    for method in cfg["methods"]:
        players[DISPLAY[method]] = load_causal_lm(cli.runs / f"{method}-seed{cli.seed}" / "model")
    prompts = [row["prompt"] for row in read_jsonl(cli.task / "test_prompts.jsonl")][: cli.eval_prompts]
    eval_start = time.perf_counter()
    matrix = winrate_matrix(
        players,
        load_tokenizer(cli.task / "sft_model"),
        prompts,
        MajorityJudge(),
        judge_name="majority",
        seed=cli.seed,
        samples_per_prompt=cfg["eval_samples_per_prompt"],
        max_new_tokens=cfg["max_new_tokens"],
    )
    eval_s = time.perf_counter() - eval_start
    write_matrix(matrix, cli.out)
    wall_s = time.perf_counter() - began
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    side = cli.out.with_name("nash_selfplay_runs.json")
    atomic_write_text(
        side,
        json.dumps(
            {
                "config": cfg,
                "seed": cli.seed,
                "commit": commit,
                "threads": torch.get_num_threads(),
                "num_eval_prompts": len(prompts),
                "eval_s": eval_s,
                "wall_s": wall_s,
                "runs": runs,
            },
            indent=2,
            sort_keys=True,
            default=float,
        )
        + "\n"
    )
    print(
        f"\nwin rate of row over column, MajorityJudge, {len(prompts)} held-out prompts x "
        f"{cfg['eval_samples_per_prompt']} answers, 95% bootstrap CI over prompts, seed {cli.seed}\n"
    )
    print(format_matrix(matrix))
    print(f"\nwall time {wall_s / 60:.1f} min (eval {eval_s:.0f}s); matrix in {cli.out}, runs in {side}")


if __name__ == "__main__":
    main()
