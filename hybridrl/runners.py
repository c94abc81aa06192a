"""The one RL loop, driven by a method's data plan, on the one training session.

``run(method, dataset=..., env=..., run=RunConfig(...))`` is what ``hybridrl train`` calls:

1. the registry gives the method's family, config and data plan; the inputs decide what is used:
   an offline method takes a dataset; an online method takes an env, and becomes hybrid when a
   dataset is given too (symmetric sampling unless ``run.offline_fraction`` says otherwise); a
   hybrid method takes a dataset and trains in ``env`` (the sim) or, by default, in the env the
   dataset records;
2. a ``BuildContext`` (sizes, action bounds, device, seed, total steps, the dataset on the
   device) builds the method; it never sees a dataset file or an env;
3. ``train`` runs the plan's loop in a ``core.session.Session`` (resume, NaN guard, atomic
   checkpoints, metrics, lock), evaluates in the evaluation env (by default the env the dataset
   records, with its time limit; else ``env``) and writes ``results.json``.

A run directory holds config.json, metrics.jsonl, checkpoint.pt and results.json (see
``core.session``). Rerunning the same command resumes and ends with exactly the parameters of an
uninterrupted run; a finished run is not rerun.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridrl import registry
from hybridrl.control.conservatism import Conservatism
from hybridrl.control.datasets import OfflineData
from hybridrl.control.evaluate import EvalResult
from hybridrl.core.buffers import TransitionBuffer
from hybridrl.core.config import RunConfig, from_dict, to_dict, with_overrides
from hybridrl.core.context import BuildContext, OfflineView
from hybridrl.core.plan import DataPlan
from hybridrl.core.runtime import keep_freed_memory
from hybridrl.core.seeding import resolve_device, seed_everything
from hybridrl.core.session import CHECKPOINT, CONFIG, RESULTS, Session, interrupt_message

__all__ = ["CHECKPOINT", "CONFIG", "RESULTS", "LoopResources", "Prepared", "default_run_dir", "load_trained",
           "prepare", "run", "train"]

ActFn = Callable[[np.ndarray], np.ndarray]
EvaluateFn = Callable[[ActFn], EvalResult]
OnEval = Callable[[int, registry.Algorithm, TransitionBuffer], None]


def _act_fn(algo: registry.Algorithm, device: torch.device, *, deterministic: bool = True) -> ActFn:
    def act(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
        return algo.act(obs_t, deterministic=deterministic).cpu().numpy()

    return act


class _EnvStepper:
    """The training env side of online and hybrid runs: acting, storing, episode bookkeeping.

    The first ``learning_starts`` actions are uniform random. Episode i of the run is reset with
    seed ``seed * 1_000_000 + i``; checkpoints are taken at episode ends, so a resumed run replays
    exactly the steps an uninterrupted run takes.
    """

    def __init__(self, env_spec: Any, algo: registry.Algorithm, buffer: TransitionBuffer, run: RunConfig) -> None:
        from hybridrl.control.envs import make_env

        self.env = make_env(env_spec)
        self.low, self.high = self.env.action_space.low, self.env.action_space.high
        self.act_dim = self.env.action_space.shape[0]
        self.algo, self.buffer, self.run = algo, buffer, run
        self.act = _act_fn(algo, buffer.device, deterministic=False)
        self.explore = np.random.default_rng(run.seed)
        self.episode, self.episode_return = 0, 0.0
        self.returns: list[float] = []
        self.obs: np.ndarray | None = None
        self.episode_ended = False

    def reset(self) -> None:
        self.obs, _ = self.env.reset(seed=self.run.seed * 1_000_000 + self.episode)

    def step(self, step: int) -> None:
        if step <= self.run.learning_starts:
            action = self.explore.uniform(-1.0, 1.0, self.act_dim).astype(np.float32)
        else:
            action = self.act(self.obs[None])[0]
        env_action = self.low + (action + 1.0) * 0.5 * (self.high - self.low)
        next_obs, reward, terminated, truncated, _ = self.env.step(env_action)
        self.buffer.add(self.obs, action, reward, next_obs, float(terminated))
        self.obs = next_obs
        self.episode_return += float(reward)
        self.episode_ended = bool(terminated or truncated)
        if self.episode_ended:
            self.episode += 1
            self.returns = [*self.returns[-9:], self.episode_return]
            self.episode_return = 0.0
            self.reset()

    def recent(self) -> dict[str, float]:
        return {"train/episode_return": float(np.mean(self.returns))} if self.returns else {}

    def state_dict(self) -> dict[str, Any]:
        return {"explore": self.explore.bit_generator.state, "episode": self.episode,
                "episode_returns": list(self.returns)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.explore.bit_generator.state = state["explore"]
        self.episode = state["episode"]
        self.returns = list(state["episode_returns"])

    def close(self) -> None:
        self.env.close()


def _log_eval(session: Session, step: int, result: EvalResult, measured: dict[str, float]) -> None:
    session.log(step, {"eval/return": result.mean, "eval/return_std": result.std,
                       "eval/normalized_score": result.normalized_mean, **measured})


def _results(run: RunConfig, final_eval: EvalResult, **extra: Any) -> dict[str, Any]:
    return {"steps": run.steps, "eval": final_eval.to_dict(), "return_mean": final_eval.mean,
            "normalized_score": final_eval.normalized_mean, **extra}


def train(algo: registry.Algorithm, plan: DataPlan, run: RunConfig, session: Session, *,
          buffer: TransitionBuffer, batch_size: int, evaluate_fn: EvaluateFn, train_env: Any = None,
          on_eval: OnEval | None = None, conservatism: Conservatism | None = None) -> dict[str, Any]:
    """Train ``algo`` for ``run.steps`` steps as ``plan`` says, resuming from ``session``.

    Offline: a step is one update on a batch of the dataset. Online and hybrid: a step is one
    action in ``train_env`` stored in the buffer's ring, then (from ``run.learning_starts`` on)
    ``updates_per_step`` updates; hybrid batches take ``offline_fraction`` of their rows from the
    dataset (a ``MixedBatch``). ``on_eval(step, algo, buffer)`` is called at every evaluation
    (the dataset factory snapshots behaviour policies with it, and may stop the run by raising).
    With ``conservatism`` (a method with ``q_values``), each evaluation also logs the critic's
    estimates against the returns obtained (``control.conservatism``), and the final one goes into
    the results under ``conservatism``.

    The final checkpoint is written before the final evaluation, so a run killed between the two
    redoes only the evaluation. Returns the results dictionary also written to ``results.json``.
    Raises ``DivergenceError`` when a logged metric or the parameters become non-finite.
    """
    if session.finished is not None:
        session.release()
        return session.finished
    stepper = _EnvStepper(train_env, algo, buffer, run) if plan.uses_env else None
    state = session.resume_state
    if state is not None:
        algo.load_state_dict(state["algo"])
        buffer.load_state_dict(state["buffer"])
        if stepper is not None:
            stepper.load_state_dict(state["env"])
        session.restore_rng()
    fraction = plan.offline_fraction if plan.source == "hybrid" else None
    updates = plan.updates_per_step if plan.uses_env else 1

    def checkpoint(step: int) -> None:
        extra = {"env": stepper.state_dict()} if stepper is not None else {}
        session.save(step, {"algo": algo.state_dict(), "buffer": buffer.state_dict(), **extra})

    def evaluate(step: int) -> tuple[EvalResult, dict[str, float]]:
        result = evaluate_fn(_act_fn(algo, buffer.device))
        measured = conservatism.measure(algo, result) if conservatism is not None else {}
        _log_eval(session, step, result, measured)
        if on_eval is not None:
            on_eval(step, algo, buffer)
        return result, measured

    next_checkpoint = (session.start // run.checkpoint_every + 1) * run.checkpoint_every
    try:
        with session:
            if stepper is not None:
                stepper.reset()
            for step in range(session.start + 1, run.steps + 1):
                if stepper is not None:
                    stepper.step(step)
                if stepper is None or step >= run.learning_starts:
                    for _ in range(updates):
                        session.add(algo.update(buffer.sample(batch_size, offline_fraction=fraction)))
                session.advance()
                if step % run.log_every == 0 or step == run.steps:
                    session.flush(step, stepper.recent() if stepper is not None else None)
                if step < run.steps and run.eval_every and step % run.eval_every == 0:
                    evaluate(step)
                # online and hybrid runs save at episode ends only, where the env's state is a reset
                at_boundary = stepper is None or stepper.episode_ended
                if step < run.steps and step >= next_checkpoint and at_boundary:
                    checkpoint(step)
                    next_checkpoint = (step // run.checkpoint_every + 1) * run.checkpoint_every
            if session.start < run.steps:
                checkpoint(run.steps)
            final_eval, measured = evaluate(run.steps)
    finally:
        if stepper is not None:
            stepper.close()
    extra = {"train_episode_returns": stepper.returns} if stepper is not None else {}
    if measured:
        extra["conservatism"] = {key.removeprefix("eval/"): value for key, value in measured.items()}
    return session.finish(_results(run, final_eval, **extra))


@dataclass(frozen=True)
class LoopResources:
    """What a custom loop (a method whose plan is ``custom``) gets from the runner."""

    session: Session
    run: RunConfig
    ctx: BuildContext
    buffer: TransitionBuffer
    evaluate_fn: EvaluateFn
    train_env: Any
    """The training env's spec or id (make it with ``control.envs.make_env``), or None."""


@dataclass(frozen=True)
class Prepared:
    """Everything a run needs, resolved from the command: the method, its plan, data and envs."""

    spec: registry.MethodSpec
    algo_config: Any
    plan: DataPlan
    ctx: BuildContext
    buffer: TransitionBuffer
    train_env: Any
    eval_env: Any
    ref_scores: tuple[float, float] | None
    record: dict[str, Any]
    data: OfflineData | None = None
    """The loaded dataset (its episode boundaries serve the conservatism measurement), or None."""


def _run_record(run: RunConfig) -> dict[str, Any]:
    """The run settings that define a run; device, threads and progress bar may change on resume."""
    return {k: v for k, v in to_dict(run).items() if k not in ("device", "progress", "threads")}


def _plan_for(spec: registry.MethodSpec, algo_config: Any, run: RunConfig, *, dataset: str | None,
              env: str | None) -> DataPlan:
    """The method's data plan, checked against what the command gave, with the run's overrides."""
    plan = spec.data_plan(algo_config)
    if plan.source == "online" and dataset is not None:
        plan = DataPlan("hybrid", updates_per_step=plan.updates_per_step)  # an online method on data
    if plan.uses_dataset and dataset is None:
        raise ValueError(f"{spec.name} is {'a hybrid' if plan.source == 'hybrid' else 'an offline'} method: "
                         "give it a dataset with --dataset")
    if plan.source == "online" and env is None:
        raise ValueError(f"{spec.name} is an online method: give it a training env with --env "
                         "(and --dataset too for hybrid training on data)")
    if plan.source == "offline" and env is not None:
        raise ValueError(f"{spec.name} is an offline method: it takes no training env; use --eval-env to "
                         "evaluate it in another env than the dataset records")
    changes = {}
    if run.offline_fraction is not None:
        if plan.source != "hybrid":
            raise ValueError("--offline-fraction applies to hybrid runs (a dataset and an env) only")
        changes["offline_fraction"] = run.offline_fraction
    if run.updates_per_step is not None:
        if not plan.uses_env:
            raise ValueError("--updates-per-step applies to online and hybrid runs only")
        changes["updates_per_step"] = run.updates_per_step
    return DataPlan(**{**asdict(plan), **changes})


def check_budget(method: str, run: RunConfig, *, dataset: str | None = None, env: str | None = None,
                 overrides: list[str] | dict[str, Any] | None = None) -> None:
    """Refuse a run whose budget cannot train: an online or hybrid run that ends before its first update.

    Such a run would act at random for all its steps and still report a score. Commands call this
    before anything is loaded or written; the library's loop itself allows it (the factory's tests
    use such runs to check checkpoints cheaply).
    """
    spec = registry.get(method, families=registry.RL_FAMILIES)
    plan = _plan_for(spec, with_overrides(spec.default_config(), overrides or []), run, dataset=dataset, env=env)
    if plan.uses_env and plan.source != "custom" and run.learning_starts >= run.steps:
        raise ValueError(f"learning-starts ({run.learning_starts}) must be below steps ({run.steps}): the run would "
                         "make no update; raise --steps or lower --learning-starts")


def prepare(method: str, run: RunConfig, *, dataset: str | None = None, env: str | None = None,
            eval_env: str | None = None, overrides: list[str] | dict[str, Any] | None = None,
            download: bool = False) -> Prepared:
    """Resolve a command into a method, its plan, its build context and buffer, and its envs."""
    from hybridrl.control import datasets
    from hybridrl.control.envs import env_id_for, make_env
    from hybridrl.control.scores import d4rl_reference

    spec = registry.get(method, families=registry.RL_FAMILIES)
    algo_config = with_overrides(spec.default_config(), overrides or [])
    plan = _plan_for(spec, algo_config, run, dataset=dataset, env=env)
    device = resolve_device(run.device)
    data = datasets.load(dataset, download=download) if dataset is not None else None
    # the env (with its kwargs and time limit) the dataset was collected in, and the one it names
    # for evaluation (Minari's env_spec and eval_env_spec; the same unless the dataset says otherwise)
    recorded = None if data is None else data.env_spec
    recorded_eval = None if data is None else data.eval_env_spec
    train_env = (env_id_for(env) if env is not None else recorded) if plan.uses_env else None
    if plan.uses_env and train_env is None:
        raise ValueError(f"dataset {dataset!r} records no environment: give the training env with --env")
    evaluation = env_id_for(eval_env) if eval_env is not None else (recorded_eval or train_env)
    if evaluation is None:
        raise datasets.DatasetError(f"dataset {dataset!r} records no environment: evaluate in one with --eval-env")
    probe = make_env(train_env if train_env is not None else evaluation)
    _check_spaces(probe, spec.name)
    obs_dim = probe.observation_space.shape[0]
    low = tuple(float(x) for x in probe.action_space.low)
    high = tuple(float(x) for x in probe.action_space.high)
    probe.close()
    view = None
    if data is not None:
        if data.obs_dim != obs_dim or data.act_dim != len(low):
            raise datasets.DatasetError(
                f"dataset {dataset!r} has observations of size {data.obs_dim} and actions of size {data.act_dim}, "
                f"but the env has {obs_dim} and {len(low)}: pick an env of the same task")
        view = OfflineView.from_arrays(data.as_d4rl(), data.episode_returns, device)
    ctx = BuildContext(obs_dim=obs_dim, action_low=low, action_high=high, device=device, seed=run.seed,
                       total_steps=run.steps, offline=view)
    buffer = TransitionBuffer(obs_dim, len(low), device=device, offline=view, seed=run.seed,
                              online_capacity=min(run.buffer_size, run.steps) if plan.uses_env else 0)
    ref_scores = data.ref_scores if data is not None and data.ref_scores else None
    if ref_scores is None:
        ref_scores = d4rl_reference(_env_name(evaluation))
    record = {"algo": spec.name, "family": spec.family, "algo_config": to_dict(algo_config), "plan": asdict(plan),
              "dataset": dataset, "env": _plain_env(train_env), "eval_env": _plain_env(evaluation),
              "obs_dim": obs_dim, "act_dim": len(low), "action_low": list(low), "action_high": list(high),
              "run": _run_record(run)}
    return Prepared(spec, algo_config, plan, ctx, buffer, train_env, evaluation, ref_scores, record, data=data)


def _check_spaces(env: Any, method: str) -> None:
    """Refuse (and close) an env whose spaces the methods cannot use: they act in flat Boxes."""
    import gymnasium as gym

    name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    for what, space in (("action", env.action_space), ("observation", env.observation_space)):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            env.close()
            kind = "discrete" if isinstance(space, gym.spaces.Discrete) else type(space).__name__
            raise ValueError(f"{name} has a {kind} {what} space ({space}), but {method} needs a flat continuous "
                             f"(Box) {what} space: pick a continuous-control env, e.g. Pendulum-v1 or hopper")


def _env_name(env: Any) -> str:
    return env if isinstance(env, str) else env.id


def _plain_env(env: Any) -> Any:
    """An env id or spec as JSON-ready data (for config.json)."""
    if env is None or isinstance(env, str):
        return env
    return env.to_dict()


def _env_from_record(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    from hybridrl.control.envs import EnvSpec

    return EnvSpec.from_dict(value)


def default_run_dir(method: str, target: str, seed: int) -> Path:
    return Path("runs") / f"{method}-{target.replace('/', '_')}-s{seed}"


def run(method: str, run: RunConfig, *, dataset: str | None = None, env: str | None = None,
        eval_env: str | None = None, out_dir: Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
        download: bool = False, on_eval: OnEval | None = None) -> dict[str, Any]:
    """Train a registered RL method as its data plan says; evaluate it; return (and write) its results."""
    from hybridrl.control.evaluate import evaluate

    keep_freed_memory()
    if run.threads:
        torch.set_num_threads(run.threads)
    prepared = prepare(method, run, dataset=dataset, env=env, eval_env=eval_env, overrides=overrides,
                       download=download)
    spec, target = prepared.spec, dataset or _env_name(prepared.train_env)
    out_dir = Path(out_dir) if out_dir is not None else default_run_dir(spec.name, target, run.seed)
    session = Session(out_dir, prepared.record, total=run.steps, desc=f"{spec.name} {target}",
                      progress=run.progress, tensorboard=run.tensorboard)

    def evaluate_fn(act: ActFn) -> EvalResult:
        # Evaluation seeds are disjoint from training's and identical across methods; the discount
        # (set for measured methods only) adds the discounted returns the critic is compared with.
        return evaluate(act, prepared.eval_env, episodes=run.eval_episodes, seed=10_000 + run.seed,
                        ref_scores=prepared.ref_scores, gamma=None if conservatism is None else conservatism.gamma)

    seed_everything(run.seed)
    algo = spec.build(prepared.algo_config, prepared.ctx)
    # Once per run: the dataset sample and its returns-to-go (None for methods without q_values).
    conservatism = Conservatism.for_run(algo, prepared.algo_config, prepared.data, prepared.ctx.device)
    if prepared.plan.source == "custom":
        if session.finished is not None:
            session.release()
            results = session.finished
        else:
            resources = LoopResources(session, run, prepared.ctx, prepared.buffer, evaluate_fn, prepared.train_env)
            with interrupt_message(out_dir):
                final_eval = spec.loop(algo, resources)
            results = session.finish(_results(run, final_eval))
    else:
        results = train(algo, prepared.plan, run, session, buffer=prepared.buffer,
                        batch_size=prepared.algo_config.batch_size, evaluate_fn=evaluate_fn,
                        train_env=prepared.train_env, on_eval=on_eval, conservatism=conservatism)
    return {**results, "out_dir": str(out_dir), "algo": spec.name, "dataset": dataset,
            "env": _env_name(prepared.train_env) if prepared.train_env is not None else None,
            "eval_env": _env_name(prepared.eval_env)}


def load_trained(out_dir: Path, device: str | None = None) -> tuple[registry.Algorithm, dict[str, Any]]:
    """Rebuild the method of a run directory from its config and last checkpoint: (algo, record).

    Methods built from their dataset (an offline or hybrid plan) get it again, as in training.
    """
    from hybridrl.control import datasets
    from hybridrl.core.checkpoint import load_checkpoint

    out_dir = Path(out_dir)
    if not (out_dir / CONFIG).exists():
        raise FileNotFoundError(f"{out_dir} is not a run directory (no {CONFIG}): pass the --out of a training run")
    try:
        record = json.loads((out_dir / CONFIG).read_text())
        spec = registry.get(record["algo"], families=registry.RL_FAMILIES)
        algo_config = from_dict(spec.config, record["algo_config"])
        low, high = tuple(record["action_low"]), tuple(record["action_high"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{out_dir / CONFIG} is corrupt or from an older version ({err}): retrain the run") from None
    dev = resolve_device(device)
    view = None
    if record.get("dataset") and DataPlan(**record["plan"]).uses_dataset:
        data = datasets.load(record["dataset"])
        view = OfflineView.from_arrays(data.as_d4rl(), data.episode_returns, dev)
    ctx = BuildContext(obs_dim=record["obs_dim"], action_low=low, action_high=high, device=dev,
                       seed=record["run"]["seed"], total_steps=record["run"]["steps"], offline=view)
    algo = spec.build(algo_config, ctx)
    algo.load_state_dict(load_checkpoint(out_dir / CHECKPOINT)["algo"])
    record["eval_env"] = _env_from_record(record.get("eval_env"))
    record["env"] = _env_from_record(record.get("env"))
    return algo, record
