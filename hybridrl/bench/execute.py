"""What one run of a grid does, per kind: train (resuming), evaluate, return the scores.

Every executor takes ``(spec, run_dir, device, threads)`` and returns the kind's scores (the fields
``scores.json`` holds beside the common ones; see ``runner``); ``EXECUTORS`` keys them by run kind,
and the RL families share one executor, the RL loop of ``runners``. The training loops underneath
checkpoint into ``run_dir``, so a run killed midway resumes where it stopped.

A run's settings are typed (``SETTINGS``, by kind): the values come from the kind's preset file
(``presets/KIND.yaml``), and a run's overrides go through ``core.config``'s parser.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hybridrl.bench.rundir import SPEC, read_scores
from hybridrl.bench.settings import (
    PreferenceEval,
    SelfPlayRun,
    field_names,
    games_settings,
    pairwise_settings,
    rl_overrides,
    rl_settings,
    selfplay_settings,
    throughput_settings,
    winrate_settings,
)
from hybridrl.bench.suites import BUNDLED_PREF_TASK, RunSpec
from hybridrl.core.checkpoint import atomic_write_json
from hybridrl.core.config import RunConfig, to_dict, with_overrides
from hybridrl.registry import RL_FAMILIES


def _rl_scores(result: dict[str, Any]) -> dict[str, Any]:
    ev = result["eval"] or {}
    normalized = result["normalized_score"]
    return {"metric": "normalized_score" if normalized is not None else "return",
            "score": normalized if normalized is not None else result["return_mean"],
            "return_mean": result["return_mean"], "return_std": ev.get("std"),
            "normalized_score": normalized, "normalized_std": ev.get("normalized_std")}


def run_rl_spec(spec: RunSpec, run_dir: Path, device: str, threads: int | None) -> dict[str, Any]:
    """An offline, online or hybrid run: the one RL loop, on the spec's dataset and env."""
    from hybridrl.bench import bundled
    from hybridrl.runners import run

    if spec.dataset in bundled.DATASETS:
        bundled.install_datasets()
    run_config, _ = rl_settings(spec, device, threads)  # checks every override before training starts
    # the method's per-dataset preset, then the run's own overrides (they win)
    method_overrides = {k: v for k, v in rl_overrides(spec).items() if k not in field_names(RunConfig)}
    result = run(spec.method, run_config, dataset=spec.dataset, env=spec.env, out_dir=run_dir,
                 overrides=method_overrides)
    return _rl_scores(result)


def _require_lm() -> None:
    """Preference runs need the language-model extra: say so in one line, before any import fails."""
    import importlib.util

    missing = [name for name in ("transformers", "accelerate", "datasets") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(f"preference runs need {', '.join(missing)}: pip install 'hybridrl[lm]' "
                                  "(or leave them out with --methods)")


def _pref_task(dataset: str) -> Path:
    from hybridrl.bench import bundled

    if dataset == BUNDLED_PREF_TASK:
        return bundled.pref_task_dir()
    task = Path(dataset)
    missing = [name for name in ("sft_model", "pairs.jsonl", "test_prompts.jsonl") if not (task / name).exists()]
    if missing:
        raise FileNotFoundError(f"{task} is not a preference task (missing {', '.join(missing)}): make one with "
                                f"`hybridrl pref make-task {task}` or use {BUNDLED_PREF_TASK}")
    return task


def run_preference_spec(spec: RunSpec, run_dir: Path, device: str, threads: int | None) -> dict[str, Any]:
    """Pairwise training from the task's SFT model, then win rate against it on held-out prompts."""
    _require_lm()
    import torch

    from hybridrl.preference.data import load_preference_dataset, tokenize_pairs
    from hybridrl.preference.losses import resolve_method
    from hybridrl.preference.models import load_causal_lm, load_tokenizer, quiet_hf_libraries
    from hybridrl.preference.oracles import relabel_pairs, resolve_judge
    from hybridrl.preference.trainer import PairwiseTrainer, TrainConfig

    quiet_hf_libraries()
    if threads:
        torch.set_num_threads(threads)
    name, loss_overrides, settings = pairwise_settings(spec)
    loss_config = with_overrides(resolve_method(name), {**loss_overrides, "beta": settings.beta})
    task = _pref_task(spec.dataset)
    tokenizer = load_tokenizer(task / "sft_model")
    rows = load_preference_dataset(task / "pairs.jsonl")
    judge_calls = len(rows)  # every pair judged once, when the task was made or here (ties then dropped)
    if settings.labels != "task":
        rows = relabel_pairs(resolve_judge(settings.labels), rows)
    pairs, _ = tokenize_pairs(rows, tokenizer)
    trainer = PairwiseTrainer(
        model=load_causal_lm(task / "sft_model"), tokenizer=tokenizer, pairs=pairs, loss_config=loss_config,
        train_config=TrainConfig(steps=spec.steps, batch_size=settings.batch_size,
                                 learning_rate=settings.learning_rate, seed=spec.seed, progress=False,
                                 log_every=max(1, spec.steps // 10), save_every=max(1, spec.steps // 3),
                                 device=None if device == "auto" else device),
        out_dir=run_dir)
    last = trainer.train(resume=True)
    return {**_versus_sft(run_dir / "model", task, settings, spec.seed),
            "judge_calls": judge_calls,
            "optimizer_steps": spec.steps, "tokens_per_s": last.get("time/tokens_per_s"),
            "final_loss": last.get("loss"), "train_accuracy": last.get("rewards/accuracies")}


def _versus_sft(model_dir: Path, task: Path, settings: PreferenceEval, seed: int) -> dict[str, Any]:
    """Win rate of a trained model over the task's SFT model on held-out test prompts, its KL to the SFT
    model (the reference every method regularises toward: a win bought by drifting far shows here) and
    its diversity."""
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.oracles import resolve_judge
    from hybridrl.preference.task import evaluate_against, read_jsonl
    from hybridrl.preference.winrate import kl_to_reference

    prompts = [row["prompt"] for row in read_jsonl(task / "test_prompts.jsonl")][: settings.eval_prompts]
    policy, sft = load_causal_lm(model_dir), load_causal_lm(task / "sft_model")
    tokenizer = load_tokenizer(task / "sft_model")
    result = evaluate_against(policy, sft, tokenizer, prompts, seed=10_000 + seed,
                              judge=resolve_judge(settings.judge), samples_per_prompt=settings.eval_samples)
    kl = kl_to_reference(policy, sft, tokenizer, prompts, seed=10_000 + seed, samples_per_prompt=settings.eval_samples)
    p = result["win_rate"]
    return {"metric": "win_rate_vs_sft", "score": p, "win_rate_ci": list(_interval(p, len(prompts))),
            "judge": settings.judge, "num_comparisons": result["num_comparisons"],
            "kl_to_sft": kl["kl"], "kl_to_sft_stderr": kl["kl_stderr"],
            **{k: result[k] for k in ("distinct_1", "distinct_2", "entropy")}}


def run_selfplay_spec(spec: RunSpec, run_dir: Path, device: str, threads: int | None) -> dict[str, Any]:
    """Self-play Nash learning from the task's SFT model for ``spec.steps`` iterations, then its win rate."""
    _require_lm()
    import torch

    from hybridrl.core.logging import read_metrics
    from hybridrl.preference.models import load_causal_lm, load_tokenizer, quiet_hf_libraries
    from hybridrl.preference.oracles import resolve_judge
    from hybridrl.preference.prompts import unique_prompts
    from hybridrl.preference.selfplay import SelfPlayConfig, SelfPlayTrainer, resolve_selfplay_method
    from hybridrl.preference.task import read_jsonl

    quiet_hf_libraries()
    if threads:
        torch.set_num_threads(threads)
    settings, config = selfplay_settings(spec)
    method = resolve_selfplay_method(spec.method)
    task = _pref_task(spec.dataset)
    # the run's own settings; the evaluation settings never reach training
    run_settings = {k: getattr(settings, k) for k in field_names(SelfPlayRun) - field_names(PreferenceEval)}
    trainer = SelfPlayTrainer(
        spec=method, method_config=config,
        config=SelfPlayConfig(iterations=spec.steps, seed=spec.seed, progress=False,
                              device=None if device == "auto" else device, **run_settings),
        model=load_causal_lm(task / "sft_model"), ref_model=load_causal_lm(task / "sft_model"),
        tokenizer=load_tokenizer(task / "sft_model"), prompts=unique_prompts(read_jsonl(task / "pairs.jsonl")),
        judge=resolve_judge(settings.judge), out_dir=run_dir)
    trainer.run()
    # every iteration's judgments, whether asked in this process or before an interruption
    judge_calls = int(sum(row["judge_calls"] for row in read_metrics(run_dir / "metrics.jsonl")))
    return {**_versus_sft(run_dir / "model", task, settings, spec.seed), "judge_calls": judge_calls,
            "optimizer_steps": method.optimizer_steps(spec.steps, settings.steps_per_iteration)}


def _interval(p: float, prompts: int) -> tuple[float, float]:
    """95% normal-approximation interval of a win rate, counting prompts (answers to one prompt correlate)."""
    half = 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / prompts)
    return max(0.0, p - half), min(1.0, p + half)


def run_winrate_spec(spec: RunSpec, run_dir: Path, device: str, threads: int | None) -> dict[str, Any]:
    """Pairwise win rates of the models of other runs of the grid and the SFT model, on held-out prompts."""
    _require_lm()
    import json

    import torch

    from hybridrl.preference.models import load_causal_lm, load_tokenizer, quiet_hf_libraries
    from hybridrl.preference.oracles import resolve_judge
    from hybridrl.preference.task import read_jsonl
    from hybridrl.preference.winrate import winrate_matrix

    quiet_hf_libraries()
    if threads:
        torch.set_num_threads(threads)
    settings = winrate_settings(spec)
    atomic_write_json(run_dir / "config.json", {**to_dict(settings), "task": spec.dataset, "seed": spec.seed})
    task = _pref_task(spec.dataset)
    grid_dir = run_dir.parent
    unfinished = [r for r in settings.players if read_scores(grid_dir / r) is None]
    if unfinished:
        raise RuntimeError(f"the matrix needs runs that have not finished: {', '.join(unfinished)}; "
                           "rerun the grid to finish them")
    models = {json.loads((grid_dir / r / SPEC).read_text())["method"]: load_causal_lm(grid_dir / r / "model")
              for r in settings.players}
    models["sft"] = load_causal_lm(task / "sft_model")
    prompts = [row["prompt"] for row in read_jsonl(task / "test_prompts.jsonl")][: settings.eval_prompts]
    matrix = winrate_matrix(models, load_tokenizer(task / "sft_model"), prompts, resolve_judge(settings.judge),
                            judge_name=settings.judge, seed=20_000 + spec.seed,
                            samples_per_prompt=settings.eval_samples)
    win = np.asarray(matrix["win_rate"])
    mean_vs_others = (win.sum(1) - 0.5) / (len(win) - 1)
    return {"metric": "mean_win_rate", "score": float(mean_vs_others[0]),
            "mean_win_rate": dict(zip(matrix["players"], mean_vs_others.tolist(), strict=True)),
            "win_rate_matrix": matrix}


def parse_game_label(label: str) -> dict[str, Any]:
    """``games-n10-beta0.1[-samples100]`` -> {n, beta, samples}."""
    match = re.fullmatch(r"games-n(\d+)-beta([0-9.eE-]+?)(?:-samples(\d+))?", label)
    if match is None:
        raise ValueError(f"bad games label {label!r}: use games-nN-betaB or games-nN-betaB-samplesS, "
                         "e.g. games-n10-beta0.1")
    return {"n": int(match[1]), "beta": float(match[2]), "samples": int(match[3]) if match[3] else None}


def run_games_spec(spec: RunSpec, run_dir: Path, device: str, threads: int | None) -> dict[str, Any]:
    """Duality gap per iteration of every Nash method on random intransitive games."""
    import torch

    from hybridrl.preference.games import default_lr, gap_curves, queries_per_iteration

    if threads:
        torch.set_num_threads(threads)
    game = parse_game_label(spec.dataset)
    settings = games_settings(spec)
    methods, num_games, headline = list(settings.methods), settings.games, settings.score_method
    atomic_write_json(run_dir / "config.json", {
        **game, "methods": methods, "games": num_games, "iterations": spec.steps, "seed": spec.seed,
        "lr": {m: default_lr(m, game["beta"], game["n"]) for m in methods}})
    curves = gap_curves(methods, n=game["n"], beta=game["beta"], iterations=spec.steps, samples=game["samples"],
                        seed=spec.seed, num_games=num_games, device="cpu" if device == "auto" else device)
    points = np.unique(np.concatenate([[0], np.geomspace(1, spec.steps, 80).round().astype(int)]))
    summary = {m: {"iterations": points.tolist(), "median": np.median(c[points], 1).tolist(),
                   "q25": np.quantile(c[points], 0.25, 1).tolist(), "q75": np.quantile(c[points], 0.75, 1).tolist(),
                   "queries": (points * queries_per_iteration(m, game["n"], game["samples"])).tolist()}
               for m, c in curves.items()}
    final = {m: float(np.median(c[-1])) for m, c in curves.items()}
    reduction = {m: float(np.median(c[0] / np.maximum(c[-1], 1e-300))) for m, c in curves.items()}
    return {"metric": f"final_gap_{headline}", "score": final.get(headline), "final_gap": final,
            "gap_reduction": reduction, "gap_curves": summary, **game}


def run_throughput_spec(spec: RunSpec, run_dir: Path, device: str, threads: int | None) -> dict[str, Any]:
    from hybridrl.bench.throughput import measure

    return measure(spec.method, device=device, threads=threads, seconds=throughput_settings(spec).seconds)


EXECUTORS: dict[str, Callable[[RunSpec, Path, str, int | None], dict[str, Any]]] = {
    **dict.fromkeys(RL_FAMILIES, run_rl_spec),
    "preference": run_preference_spec,
    "selfplay": run_selfplay_spec,
    "games": run_games_spec,
    "throughput": run_throughput_spec,
    "winrate": run_winrate_spec,
}
"""Run kind -> what a run of that kind does; the RL families share the one RL loop."""
