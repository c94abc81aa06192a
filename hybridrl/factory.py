"""D4RL-style dataset factory: behaviour policies trained with SAC, datasets written in Minari format.

Qualities, after D4RL (Fu et al. 2020, section 5):
- ``random``: a uniform random policy;
- ``medium``: a SAC policy stopped when its return first reaches a third of the expert's
  (D4RL's expert reference return for the task), rolled out with its own stochastic actions;
- ``medium-replay``: the replay buffer of that training run, up to the medium policy;
- ``expert``: the SAC policy at the end of training;
- ``medium-expert``: the medium and expert datasets concatenated.

One SAC run per (task, seed, recipe) serves medium, medium-replay and expert: when the medium
threshold is crossed its policy and replay buffer are saved (``medium.pt``), and training goes on to
the expert only when an expert dataset is asked for. Behaviour policies live under
``$HYBRIDRL_HOME/policies`` (default ``~/.hybridrl``) and are reused; an interrupted ``data make``
resumes from the SAC run's last checkpoint. Every dataset records its recipe, seed, preset, the
policy's training steps and the returns actually measured; normalization uses D4RL's published
random and expert returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridrl import runners
from hybridrl.control import datasets
from hybridrl.control.envs import env_id_for, make_env
from hybridrl.control.evaluate import evaluate
from hybridrl.control.scores import d4rl_reference
from hybridrl.core.checkpoint import atomic_save, load_checkpoint
from hybridrl.core.config import RunConfig
from hybridrl.online.sac import SACConfig
from hybridrl.runners import RESULTS, load_trained

QUALITIES = ("random", "medium", "medium-replay", "expert", "medium-expert")
FACTORY_TASKS = ("hopper", "halfcheetah", "walker2d")


@dataclass(frozen=True, kw_only=True)
class FactoryConfig:
    """How datasets are made; ``FULL`` is D4RL's size, ``SMALL`` fits a laptop."""

    transitions: int = 1_000_000
    """Transitions per rolled-out dataset (D4RL: 1M)."""
    sac_steps: int = 1_000_000
    """Environment steps of the SAC run whose final policy is the expert."""
    medium_fraction: float = 1 / 3
    """The medium policy is the first whose stochastic return reaches this fraction of the expert's."""
    eval_every: int = 5000
    """Steps between checks of the medium threshold."""
    threshold_episodes: int = 5
    """Episodes per threshold check."""
    checkpoint_every: int = 10_000
    """SAC checkpoint cadence (an interrupted make resumes from the last one)."""
    sac: SACConfig = field(default_factory=SACConfig)
    """The behaviour policies' SAC (D4RL: the paper's defaults, 2x256 networks)."""
    sac_learning_starts: int = 5000
    """Uniform-random steps before the SAC run's first update."""
    sac_buffer_size: int = 1_000_000
    """Replay capacity of the SAC run."""
    preset: str = "full"


FULL = FactoryConfig()
SMALL = FactoryConfig(transitions=100_000, sac_steps=300_000, preset="small")


class BehaviourPolicyError(RuntimeError):
    """The SAC run could not produce the behaviour policy a recipe needs."""


class MediumReached(Exception):
    """Raised inside the SAC run to stop it once the medium policy is saved."""


def hybridrl_home() -> Path:
    return Path(os.environ.get("HYBRIDRL_HOME") or Path.home() / ".hybridrl")


def dataset_id(task: str, quality: str) -> str:
    return f"hybridrl/{task}/{quality}-v0"


def _check(task: str, quality: str) -> None:
    if task not in FACTORY_TASKS:
        raise ValueError(f"unknown task {task!r}: the factory makes {', '.join(FACTORY_TASKS)}")
    if quality not in QUALITIES:
        raise ValueError(f"unknown quality {quality!r}: available: {', '.join(QUALITIES)}")


# The fields that decide what the behaviour policies are (the dataset size does not).
_POLICY_FIELDS = ("sac_steps", "medium_fraction", "eval_every", "threshold_episodes", "sac")


def policy_dir(task: str, seed: int, config: FactoryConfig) -> Path:
    """Where the SAC run for (task, seed, recipe) lives; another SAC config or step count gets its own."""
    recipe = {name: value for name, value in asdict(config).items() if name in _POLICY_FIELDS}
    # These two run settings were fields of SACConfig when the first policies were hashed: keeping
    # them inside "sac" keeps the directories of existing behaviour policies where they were.
    recipe["sac"] = {**recipe["sac"], "learning_starts": config.sac_learning_starts,
                     "buffer_size": config.sac_buffer_size}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    return hybridrl_home() / "policies" / f"{task}-s{seed}-{config.preset}-{digest}"


def transitions_to_episodes(obs, action, reward, next_obs, terminated) -> list[dict[str, np.ndarray]]:
    """Cut time-ordered transitions into Minari episodes.

    An episode ends at a termination or where the next row does not continue it
    (``next_obs[t] != obs[t + 1]``: a reset); a cut that is not a termination is a truncation.
    """
    n = len(reward)
    continues = np.zeros(n, dtype=bool)
    continues[:-1] = np.all(next_obs[:-1] == obs[1:], axis=1) & (terminated[:-1] == 0)
    ends = np.flatnonzero(~continues)
    episodes, start = [], 0
    for end in ends:
        steps = slice(start, end + 1)
        terms = terminated[steps].astype(bool)
        truncs = np.zeros_like(terms)
        truncs[-1] = not terms[-1]
        episodes.append({"observations": np.concatenate([obs[steps], next_obs[end:end + 1]]),
                         "actions": action[steps], "rewards": reward[steps],
                         "terminations": terms, "truncations": truncs})
        start = end + 1
    return episodes


def _threshold(task: str, config: FactoryConfig) -> float:
    _, expert = d4rl_reference(task)
    return config.medium_fraction * expert


def _stochastic(actor: torch.nn.Module, device: torch.device):
    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
            return actor.act(obs_t, deterministic=False).cpu().numpy()

    return act


def train_behaviour(task: str, *, seed: int, config: FactoryConfig, until: str, device: str = "auto",
                    progress: bool = True, threads: int | None = None) -> Path:
    """Run (or resume) the task's SAC run until the medium policy exists (``until='medium'``) or to the end."""
    home = policy_dir(task, seed, config)
    run_dir, medium_path = home / "sac", home / "medium.pt"
    if until == "medium" and medium_path.exists():
        return home
    if until == "expert" and (run_dir / RESULTS).exists() and medium_path.exists():
        return home
    threshold = _threshold(task, config)
    env_id = env_id_for(task)
    # Threshold checks use their own episode seeds, apart from training's and evaluation's.
    check_seed = 50_000 + seed

    def on_eval(step, algo, buffer):
        if medium_path.exists():
            return
        result = evaluate(_stochastic(algo.actor, buffer.device), env_id, episodes=config.threshold_episodes,
                          seed=check_seed)
        if result.mean < threshold:
            return
        size = buffer.online_size
        replay = {name: tensor[:size].cpu().numpy() for name, tensor in buffer.online.items()}
        atomic_save({"actor": algo.actor.state_dict(), "hidden": algo.config.hidden, "obs_dim": buffer.obs_dim,
                     "act_dim": buffer.act_dim, "step": step, "check_return": result.mean,
                     "threshold": threshold, "replay": replay}, medium_path)
        if until == "medium":
            raise MediumReached

    run = RunConfig(steps=config.sac_steps, seed=seed, device=device, eval_every=config.eval_every,
                    eval_episodes=10, log_every=1000, checkpoint_every=config.checkpoint_every, progress=progress,
                    threads=threads, learning_starts=config.sac_learning_starts, buffer_size=config.sac_buffer_size)
    try:
        runners.run("sac", run, env=task, out_dir=run_dir, overrides=asdict(config.sac), on_eval=on_eval)
    except MediumReached:
        return home
    if not medium_path.exists():
        raise BehaviourPolicyError(f"SAC on {task} never reached the medium threshold ({threshold:.0f}) in "
                           f"{config.sac_steps} steps: raise --sac-steps or lower the medium fraction")
    return home


def _rollout(task: str, actor: torch.nn.Module, device: torch.device, transitions: int, seed: int):
    act = _stochastic(actor, device)
    return datasets.collect_episodes(task, lambda obs: act(obs[None])[0], transitions=transitions, seed=seed)


def _expert_actor(home: Path, device: str):
    algo, config = load_trained(home / "sac", device)
    return algo.actor, config["run"]["steps"]


def _medium_actor(home: Path, device: torch.device):
    from hybridrl.core.nets import TanhGaussianActor

    snap = load_checkpoint(home / "medium.pt")
    actor = TanhGaussianActor(snap["obs_dim"], snap["act_dim"], snap["hidden"])
    actor.load_state_dict(snap["actor"])
    return actor.to(device), snap


def make_dataset(task: str, quality: str, *, config: FactoryConfig = FULL, seed: int = 0, device: str = "auto",
                 overwrite: bool = False, progress: bool = True, threads: int | None = None,
                 out_id: str | None = None) -> str:
    """Make ``hybridrl/TASK/QUALITY-v0`` (or ``out_id``) in the local Minari store and return its id."""
    from hybridrl.core.seeding import resolve_device

    _check(task, quality)
    ds_id = out_id or dataset_id(task, quality)
    if not re.fullmatch(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*-v\d+", ds_id):
        raise ValueError(f"invalid dataset id {ds_id!r}: use Minari's form NAMESPACE/NAME-vN, "
                         "e.g. hybridrl/hopper/medium-v0")
    if ds_id in datasets.local_dataset_ids() and not overwrite:
        raise ValueError(f"dataset {ds_id!r} already exists: pass --overwrite to remake it")
    ref_min, ref_max = d4rl_reference(task)
    torch_device = resolve_device(device)
    meta: dict[str, Any] = {"hybridrl_recipe": quality, "hybridrl_seed": seed, "hybridrl_preset": config.preset,
                            "hybridrl_factory": asdict(config),
                            "hybridrl_reference": "D4RL random/expert returns for the task"}
    # Rollout seeds differ per quality so medium and expert data never share episode starts.
    rollout_seed = seed * 1_000_000 + 100_000 * (1 + QUALITIES.index(quality))
    if quality == "random":
        env = make_env(task)
        act_dim = env.action_space.shape[0]
        env.close()
        rng = np.random.default_rng(rollout_seed)
        episodes = datasets.collect_episodes(task, lambda obs: rng.uniform(-1.0, 1.0, act_dim),
                                             transitions=config.transitions, seed=rollout_seed)
        algorithm = "uniform-random"
    else:
        home = train_behaviour(task, seed=seed, config=config, until="medium" if "expert" not in quality else "expert",
                               device=device, progress=progress, threads=threads)
        episodes = []
        if quality in ("medium", "medium-expert"):
            actor, snap = _medium_actor(home, torch_device)
            episodes += _rollout(task, actor, torch_device, config.transitions, rollout_seed)
            meta.update(hybridrl_medium_policy_steps=snap["step"], hybridrl_medium_check_return=snap["check_return"])
        if quality == "medium-replay":
            snap = load_checkpoint(home / "medium.pt")
            replay = snap["replay"]
            episodes = transitions_to_episodes(replay["obs"], replay["action"], replay["reward"],
                                               replay["next_obs"], replay["terminated"])
            meta.update(hybridrl_medium_policy_steps=snap["step"])
        if quality in ("expert", "medium-expert"):
            actor, steps = _expert_actor(home, str(torch_device))
            episodes += _rollout(task, actor, torch_device, config.transitions, rollout_seed + 50_000)
            meta.update(hybridrl_expert_policy_steps=steps)
        meta["hybridrl_policy_dir"] = str(home)
        algorithm = "SAC"
    returns = np.array([float(np.sum(ep["rewards"])) for ep in episodes])
    meta.update(hybridrl_measured_return_mean=float(returns.mean()),
                hybridrl_measured_return_std=float(returns.std()),
                hybridrl_measured_normalized_mean=float(100 * (returns.mean() - ref_min) / (ref_max - ref_min)))
    steps = sum(len(ep["rewards"]) for ep in episodes)
    datasets.write(ds_id, episodes, env_id=env_id_for(task), ref_min_score=ref_min, ref_max_score=ref_max,
                   algorithm_name=algorithm, overwrite=overwrite, extra_metadata=meta,
                   description=f"{quality} data for {env_id_for(task)}: {len(episodes)} episodes, {steps} steps, "
                               f"D4RL recipe, hybridrl factory preset {config.preset}, seed {seed}.")
    return ds_id


def factory_config(small: bool, *, sac_hidden: tuple[int, ...] | None = None, **overrides: Any) -> FactoryConfig:
    """The preset with the given fields (and the SAC's hidden widths) replaced; None values are ignored."""
    base = SMALL if small else FULL
    config = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    return config if sac_hidden is None else replace(config, sac=replace(config.sac, hidden=sac_hidden))


