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
from hybridrl.core.runtime import keep_freed_memory
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


class _Run:
    """What every loop shares: the run directory, the metrics window, the guarded checkpoint."""

    def __init__(self, out_dir: Path, run: RunConfig, config: dict[str, Any], desc: str) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _claim_run_dir(self.out_dir, config)
        self.run = run
        self.desc = desc
        keep_freed_memory()
        if run.threads:
            torch.set_num_threads(run.threads)
        self.finished = (json.loads((self.out_dir / RESULTS).read_text())
                         if (self.out_dir / RESULTS).exists() else None)
        # RNG and generator states must stay CPU tensors; modules copy onto their device.
        self.resume_state = (load_checkpoint(self.out_dir / CHECKPOINT, map_location="cpu")
                             if self.finished is None and (self.out_dir / CHECKPOINT).exists() else None)
        self.start = self.resume_state["step"] if self.resume_state else 0
        self.last_good: int | None = self.start or None
        self.window: list[dict[str, torch.Tensor]] = []
        self.tick = time.perf_counter()
        self.logger: MetricsLogger | None = None
        self.bar = None

    def __enter__(self) -> _Run:
        self.logger = MetricsLogger(self.out_dir / METRICS, truncate_after=self.start,
                                    tensorboard_dir=self.out_dir / "tb" if self.run.tensorboard else None)
        self.bar = tqdm(total=self.run.steps, initial=self.start, desc=self.desc, unit="step",
                        disable=not self.run.progress, dynamic_ncols=True, mininterval=1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        self.logger.close()

    def add_metrics(self, metrics: dict[str, torch.Tensor]) -> None:
        self.window.append(metrics)

    def flush_metrics(self, step: int, extra: dict[str, float] | None = None) -> None:
        """Log the window's means (one device sync); stop on NaN/inf."""
        means: dict[str, float] = {}
        if self.window:
            stacked = torch.stack([torch.stack(list(m.values())) for m in self.window]).mean(0)
            means = dict(zip(self.window[0], stacked.tolist(), strict=True))
            bad = [k for k, v in means.items() if not math.isfinite(v)]
            if bad:
                raise DivergenceError(_diverged_message(step, bad[0], self.last_good, self.out_dir))
            now = time.perf_counter()
            means["time/updates_per_s"] = len(self.window) / max(now - self.tick, 1e-9)
            self.tick, self.window = now, []
            self.bar.set_postfix({k: f"{means[k]:.3g}" for k in list(means)[:3]}, refresh=False)
        means.update(extra or {})
        if means:
            self.logger.log(step, means)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.logger.log(step, metrics)
        self.tick = time.perf_counter()  # time spent outside updates does not count against them

    def save(self, step: int, algo: registry.Algorithm, **extra: Any) -> None:
        """Checkpoint atomically, unless the parameters are no longer finite."""
        algo_state = algo.state_dict()
        if not _finite(algo_state):
            raise DivergenceError(_diverged_message(step, "parameters", self.last_good, self.out_dir))
        atomic_save({"step": step, "algo": algo_state, "rng": rng_state(), **extra}, self.out_dir / CHECKPOINT)
        self.last_good = step

    def finish(self, final_eval: EvalResult | None, **extra: Any) -> dict[str, Any]:
        results = {
            "steps": self.run.steps,
            "eval": None if final_eval is None else final_eval.to_dict(),
            "return_mean": None if final_eval is None else final_eval.mean,
            "normalized_score": None if final_eval is None else final_eval.normalized_mean,
            **extra,
        }
        atomic_write_json(self.out_dir / RESULTS, results)
        return results


def _act_fn(algo: registry.Algorithm, device: torch.device, *, deterministic: bool = True):
    def act(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
        return algo.act(obs_t, deterministic=deterministic).cpu().numpy()

    return act


def _eval_due(run: RunConfig, step: int) -> bool:
    return step == run.steps or bool(run.eval_every and step % run.eval_every == 0)


def _log_eval(r: _Run, step: int, result: EvalResult) -> None:
    r.log(step, {"eval/return": result.mean, "eval/return_std": result.std,
                 "eval/normalized_score": result.normalized_mean})


def train_offline(algo: registry.Algorithm, buffer: TransitionBuffer, run: RunConfig, out_dir: Path, *,
                  batch_size: int, config: dict[str, Any],
                  evaluate_fn: Callable[[Callable[[np.ndarray], np.ndarray]], EvalResult] | None = None,
                  desc: str = "train") -> dict[str, Any]:
    """Train ``algo`` on batches from ``buffer`` for ``run.steps`` updates, resuming if possible.

    Returns the results dictionary also written to ``results.json``.
    Raises DivergenceError when a logged metric or the parameters become non-finite.
    """
    r = _Run(out_dir, run, config, desc)
    if r.finished is not None:
        return r.finished
    if r.resume_state is not None:
        algo.load_state_dict(r.resume_state["algo"])
        buffer.load_state_dict(r.resume_state["buffer"])
        set_rng_state(r.resume_state["rng"])
    act = _act_fn(algo, buffer.device)
    final_eval: EvalResult | None = None
    with r:
        for step in range(r.start + 1, run.steps + 1):
            r.add_metrics(algo.update(buffer.sample(batch_size)))
            r.bar.update(1)
            if step % run.log_every == 0 or step == run.steps:
                r.flush_metrics(step)
            if evaluate_fn is not None and _eval_due(run, step):
                final_eval = evaluate_fn(act)
                _log_eval(r, step, final_eval)
            if step == run.steps or step % run.checkpoint_every == 0:
                r.save(step, algo, buffer=buffer.state_dict())
    return r.finish(final_eval)


def train_online(algo: registry.Algorithm, task: str, run: RunConfig, out_dir: Path, *, batch_size: int,
                 learning_starts: int, buffer_size: int, config: dict[str, Any],
                 evaluate_fn: Callable[[Callable[[np.ndarray], np.ndarray]], EvalResult] | None = None,
                 device: torch.device | str = "cpu", desc: str = "train",
                 on_eval: Callable[[int, registry.Algorithm, TransitionBuffer], None] | None = None,
                 ) -> dict[str, Any]:
    """Online training: one environment step and (after ``learning_starts``) one update per step.

    The first ``learning_starts`` actions are uniform random. Episode i of the run is reset with
    seed ``run.seed * 1_000_000 + i``, and checkpoints are taken at the first episode end after each
    ``checkpoint_every`` steps, so a resumed run replays exactly the steps an uninterrupted run takes.
    ``on_eval(step, algo, buffer)`` is called at every evaluation step (the dataset factory snapshots
    behaviour policies with it, and may stop the run by raising an exception).
    """
    from hybridrl.control.envs import make_env

    device = torch.device(device)
    r = _Run(out_dir, run, config, desc)
    if r.finished is not None:
        return r.finished
    env = make_env(task)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    buffer = TransitionBuffer(obs_dim, act_dim, device=device, online_capacity=min(buffer_size, run.steps),
                              seed=run.seed)
    explore = np.random.default_rng(run.seed)
    episode, episode_return = 0, 0.0
    episode_returns: list[float] = []
    if r.resume_state is not None:
        algo.load_state_dict(r.resume_state["algo"])
        buffer.load_state_dict(r.resume_state["buffer"])
        set_rng_state(r.resume_state["rng"])
        explore.bit_generator.state = r.resume_state["explore"]
        episode = r.resume_state["episode"]
        episode_returns = list(r.resume_state["episode_returns"])
    obs, _ = env.reset(seed=run.seed * 1_000_000 + episode)
    act_stochastic = _act_fn(algo, device, deterministic=False)
    final_eval: EvalResult | None = None
    next_checkpoint = (r.start // run.checkpoint_every + 1) * run.checkpoint_every
    try:
        with r:
            for step in range(r.start + 1, run.steps + 1):
                if step <= learning_starts:
                    action = explore.uniform(-1.0, 1.0, act_dim).astype(np.float32)
                else:
                    action = act_stochastic(obs[None])[0]
                next_obs, reward, terminated, truncated, _ = env.step(low + (action + 1.0) * 0.5 * (high - low))
                buffer.add(obs, action, reward, next_obs, float(terminated))
                obs = next_obs
                episode_return += float(reward)
                if step >= learning_starts:
                    r.add_metrics(algo.update(buffer.sample(batch_size)))
                r.bar.update(1)
                if step % run.log_every == 0:
                    recent = {"train/episode_return": float(np.mean(episode_returns[-10:]))} if episode_returns else {}
                    r.flush_metrics(step, recent)
                if _eval_due(run, step):
                    if evaluate_fn is not None:
                        final_eval = evaluate_fn(_act_fn(algo, device))
                        _log_eval(r, step, final_eval)
                    if on_eval is not None:
                        on_eval(step, algo, buffer)
                if terminated or truncated:
                    episode += 1
                    episode_returns.append(episode_return)
                    episode_return = 0.0
                    obs, _ = env.reset(seed=run.seed * 1_000_000 + episode)
                    if step >= next_checkpoint and step < run.steps:
                        r.save(step, algo, buffer=buffer.state_dict(), explore=explore.bit_generator.state,
                               episode=episode, episode_returns=episode_returns[-10:])
                        next_checkpoint = (step // run.checkpoint_every + 1) * run.checkpoint_every
            r.save(run.steps, algo, buffer=buffer.state_dict(), explore=explore.bit_generator.state,
                   episode=episode, episode_returns=episode_returns[-10:])
    finally:
        env.close()
    return r.finish(final_eval, train_episode_returns=episode_returns[-10:])


def _diverged_message(step: int, what: str, last_good: int | None, out_dir: Path) -> str:
    kept = (f"the last good checkpoint (step {last_good}) is kept in {out_dir / CHECKPOINT}"
            if last_good else "no checkpoint had been written yet")
    return (f"training diverged at step {step} ({what} is NaN/inf); {kept}; "
            "lower the learning rates or check the dataset for outliers")


def _run_record(run: RunConfig) -> dict[str, Any]:
    """The run settings that define a run; device, threads and progress bar may change on resume."""
    return {k: v for k, v in to_dict(run).items() if k not in ("device", "progress", "threads")}


def default_run_dir(algo: str, dataset_id: str, seed: int) -> Path:
    return Path("runs") / f"{algo}-{dataset_id.replace('/', '_')}-s{seed}"


def run_offline(algo_name: str, dataset_id: str, run: RunConfig, *, out_dir: Path | None = None,
                overrides: list[str] | dict[str, Any] | None = None, download: bool = False) -> dict[str, Any]:
    """Load a Minari dataset, build the method from the registry, train and evaluate it."""
    from hybridrl.control import datasets
    from hybridrl.control.evaluate import evaluate

    spec = registry.get(algo_name)
    if spec.family != "offline":
        raise ValueError(f"{spec.name} is an {spec.family} method: train it with --env, not --dataset")
    algo_config = with_overrides(spec.config(), overrides or [])
    data = datasets.load(dataset_id, download=download)
    if data.env_id is None:
        raise datasets.DatasetError(f"dataset {dataset_id!r} records no environment: cannot evaluate policies on it")
    device = resolve_device(run.device)
    out_dir = Path(out_dir) if out_dir is not None else default_run_dir(spec.name, dataset_id, run.seed)
    config = {"algo": spec.name, "algo_config": to_dict(algo_config), "dataset": dataset_id, "env_id": data.env_id,
              "obs_dim": data.obs_dim, "act_dim": data.act_dim, "run": _run_record(run)}

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


def run_online(algo_name: str, task: str, run: RunConfig, *, out_dir: Path | None = None,
               overrides: list[str] | dict[str, Any] | None = None, on_eval=None) -> dict[str, Any]:
    """Build an online method from the registry and train it in a MuJoCo task."""
    from hybridrl.control.envs import env_id_for, make_env
    from hybridrl.control.evaluate import evaluate
    from hybridrl.control.scores import d4rl_reference

    spec = registry.get(algo_name)
    if spec.family != "online":
        raise ValueError(f"{spec.name} is an {spec.family} method: train it with --dataset, not --env")
    algo_config = with_overrides(spec.config(), overrides or [])
    env_id = env_id_for(task)
    env = make_env(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    device = resolve_device(run.device)
    out_dir = Path(out_dir) if out_dir is not None else default_run_dir(spec.name, env_id, run.seed)
    config = {"algo": spec.name, "algo_config": to_dict(algo_config), "env_id": env_id, "obs_dim": obs_dim,
              "act_dim": act_dim, "run": _run_record(run)}
    seed_everything(run.seed)
    algo = spec.build(obs_dim, act_dim, algo_config, device)
    ref = d4rl_reference(env_id)

    def evaluate_fn(act):
        return evaluate(act, env_id, episodes=run.eval_episodes, seed=10_000 + run.seed, ref_scores=ref)

    results = train_online(algo, env_id, run, out_dir, batch_size=algo_config.batch_size,
                           learning_starts=algo_config.learning_starts, buffer_size=algo_config.buffer_size,
                           config=config, evaluate_fn=evaluate_fn, device=device, desc=f"{spec.name} {env_id}",
                           on_eval=on_eval)
    return {**results, "out_dir": str(out_dir), "algo": spec.name, "env_id": env_id}


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
