"""The training loops. Methods only see batches; the runner owns data, cadence, checkpoints.

A run lives in one directory:

    config.json      the resolved config (algorithm, its hyperparameters, data, run settings)
    metrics.jsonl    one line per log step and per evaluation
    checkpoint.pt    the last good checkpoint (algorithm, buffer sampler, every RNG), atomic
    results.json     final evaluation and scores, written last (its presence means "finished")

Running the same command again resumes from ``checkpoint.pt`` and ends with the same parameters
as an uninterrupted run; a finished run is not rerun.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hybridrl import registry
from hybridrl.control.evaluate import EvalResult
from hybridrl.core.buffers import TransitionBuffer
from hybridrl.core.checkpoint import atomic_save, atomic_write_json, load_checkpoint
from hybridrl.core.config import RunConfig, from_dict, to_dict, with_overrides
from hybridrl.core.logging import MetricsLogger
from hybridrl.core.seeding import resolve_device, rng_state, seed_everything, set_rng_state

CHECKPOINT = "checkpoint.pt"
RESULTS = "results.json"
CONFIG = "config.json"
METRICS = "metrics.jsonl"


class DivergenceError(RuntimeError):
    """Training produced NaN/inf; the last good checkpoint is kept."""


class RunDirectoryError(ValueError):
    """The run directory holds another run."""


def _finite(module_state: Any) -> bool:
    if isinstance(module_state, torch.Tensor):
        return bool(torch.isfinite(module_state).all()) if module_state.is_floating_point() else True
    if isinstance(module_state, dict):
        return all(_finite(v) for v in module_state.values())
    if isinstance(module_state, (list, tuple)):
        return all(_finite(v) for v in module_state)
    return True


def _claim_run_dir(out_dir: Path, config: dict[str, Any]) -> None:
    """Write config.json, or check that an existing one describes the same run."""
    path = out_dir / CONFIG
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = None
        if existing != json.loads(json.dumps(config, default=str)):
            differing = sorted(k for k in set(config) | set(existing or {})
                               if (existing or {}).get(k) != json.loads(json.dumps(config.get(k), default=str)))
            raise RunDirectoryError(f"run directory {out_dir} holds a different run (differs in {differing}): "
                                    "use another --out or delete that directory")
        return
    atomic_write_json(path, config)


def train_offline(algo: registry.Algorithm, buffer: TransitionBuffer, run: RunConfig, out_dir: Path, *,
                  batch_size: int, config: dict[str, Any],
                  evaluate_fn: Callable[[Callable[[np.ndarray], np.ndarray]], EvalResult] | None = None,
                  desc: str = "train") -> dict[str, Any]:
    """Train ``algo`` on batches from ``buffer`` for ``run.steps`` updates, resuming if possible.

    Returns the results dictionary also written to ``results.json``.
    Raises DivergenceError when a logged metric or the parameters become non-finite.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim_run_dir(out_dir, config)
    if (out_dir / RESULTS).exists():
        return json.loads((out_dir / RESULTS).read_text())

    start = 0
    if (out_dir / CHECKPOINT).exists():
        # RNG and generator states must stay CPU tensors; modules copy onto their device.
        state = load_checkpoint(out_dir / CHECKPOINT, map_location="cpu")
        algo.load_state_dict(state["algo"])
        buffer.load_state_dict(state["buffer"])
        set_rng_state(state["rng"])
        start = state["step"]
    last_good = start if start else None

    device = buffer.device

    def act(obs: np.ndarray) -> np.ndarray:
        return algo.act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()

    def save(step: int) -> None:
        nonlocal last_good
        algo_state = algo.state_dict()
        if not _finite(algo_state):
            raise DivergenceError(_diverged_message(step, "parameters", last_good, out_dir))
        atomic_save({"step": step, "algo": algo_state, "buffer": buffer.state_dict(), "rng": rng_state()},
                    out_dir / CHECKPOINT)
        last_good = step

    logger = MetricsLogger(out_dir / METRICS, tensorboard_dir=out_dir / "tb" if run.tensorboard else None,
                           truncate_after=start)
    final_eval: EvalResult | None = None
    window: list[dict[str, torch.Tensor]] = []
    bar = tqdm(total=run.steps, initial=start, desc=desc, unit="step", disable=not run.progress,
               dynamic_ncols=True, mininterval=1.0)
    tick = time.perf_counter()
    try:
        for step in range(start + 1, run.steps + 1):
            window.append(algo.update(buffer.sample(batch_size)))
            bar.update(1)
            if step % run.log_every == 0 or step == run.steps:
                means = {k: v.item() for k, v in
                         zip(window[0], torch.stack([torch.stack(list(m.values())) for m in window]).mean(0),
                             strict=True)}
                bad = [k for k, v in means.items() if not math.isfinite(v)]
                if bad:
                    raise DivergenceError(_diverged_message(step, bad[0], last_good, out_dir))
                now = time.perf_counter()
                means["time/updates_per_s"] = len(window) / max(now - tick, 1e-9)
                tick, window = now, []
                logger.log(step, means)
                bar.set_postfix({k: f"{means[k]:.3g}" for k in list(means)[:3]}, refresh=False)
            is_last = step == run.steps
            if evaluate_fn is not None and (is_last or (run.eval_every and step % run.eval_every == 0)):
                final_eval = evaluate_fn(act)
                logger.log(step, {"eval/return": final_eval.mean, "eval/return_std": final_eval.std,
                                  "eval/normalized_score": final_eval.normalized_mean})
                tick = time.perf_counter()
            if is_last or step % run.checkpoint_every == 0:
                save(step)
    finally:
        bar.close()
        logger.close()

    results = {
        "steps": run.steps,
        "eval": None if final_eval is None else final_eval.to_dict(),
        "return_mean": None if final_eval is None else final_eval.mean,
        "normalized_score": None if final_eval is None else final_eval.normalized_mean,
    }
    atomic_write_json(out_dir / RESULTS, results)
    return results


def _diverged_message(step: int, what: str, last_good: int | None, out_dir: Path) -> str:
    kept = (f"the last good checkpoint (step {last_good}) is kept in {out_dir / CHECKPOINT}"
            if last_good else "no checkpoint had been written yet")
    return (f"training diverged at step {step} ({what} is NaN/inf); {kept}; "
            "lower the learning rates or check the dataset for outliers")


def default_run_dir(algo: str, dataset_id: str, seed: int) -> Path:
    return Path("runs") / f"{algo}-{dataset_id.replace('/', '_')}-s{seed}"


def run_offline(algo_name: str, dataset_id: str, run: RunConfig, *, out_dir: Path | None = None,
                overrides: list[str] | dict[str, Any] | None = None, download: bool = False) -> dict[str, Any]:
    """Load a Minari dataset, build the method from the registry, train and evaluate it."""
    from hybridrl.control import datasets
    from hybridrl.control.evaluate import evaluate

    spec = registry.get(algo_name)
    if spec.family != "offline":
        raise ValueError(f"{spec.name} is an {spec.family} method: `hybridrl train` runs offline methods on a dataset")
    algo_config = with_overrides(spec.config(), overrides or [])
    data = datasets.load(dataset_id, download=download)
    if data.env_id is None:
        raise datasets.DatasetError(f"dataset {dataset_id!r} records no environment: cannot evaluate policies on it")
    device = resolve_device(run.device)
    out_dir = Path(out_dir) if out_dir is not None else default_run_dir(spec.name, dataset_id, run.seed)
    config = {"algo": spec.name, "algo_config": to_dict(algo_config), "dataset": dataset_id,
              "env_id": data.env_id, "obs_dim": data.obs_dim, "act_dim": data.act_dim, "run": {k: v for k, v in to_dict(run).items() if k not in ("device", "progress")}}

    seed_everything(run.seed)
    algo = spec.build(data.obs_dim, data.act_dim, algo_config, device)
    buffer = TransitionBuffer(data.obs_dim, data.act_dim, device=device, offline=data.as_d4rl(), seed=run.seed)

    def evaluate_fn(act):
        # Evaluation seeds are disjoint from training's and identical across methods.
        return evaluate(act, data.env_id, episodes=run.eval_episodes, seed=10_000 + run.seed,
                        ref_scores=data.ref_scores)

    results = train_offline(algo, buffer, run, out_dir, batch_size=algo_config.batch_size, config=config,
                            evaluate_fn=evaluate_fn, desc=f"{spec.name} {dataset_id}")
    return {**results, "out_dir": str(out_dir), "algo": spec.name, "dataset": dataset_id}


def load_trained(out_dir: Path, device: str | None = None):
    """Rebuild the method of a run directory from its config and checkpoint: (algo, config)."""
    out_dir = Path(out_dir)
    if not (out_dir / CONFIG).exists():
        raise FileNotFoundError(f"{out_dir} is not a run directory (no {CONFIG}): pass the --out of a training run")
    config = json.loads((out_dir / CONFIG).read_text())
    spec = registry.get(config["algo"])
    algo_config = from_dict(spec.config, config["algo_config"])
    state = load_checkpoint(out_dir / CHECKPOINT)
    algo = spec.build(config["obs_dim"], config["act_dim"], algo_config, resolve_device(device))
    algo.load_state_dict(state["algo"])
    return algo, config
