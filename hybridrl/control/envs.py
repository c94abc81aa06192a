"""Gymnasium tasks by short name, full id or recorded spec; the map between policy and env actions.

Policies act in [-1, 1] on every action dimension; an env's own action space may be any bounded
Box (Pendulum: +-2, Humanoid: +-0.4). :func:`to_env_action` and :func:`from_env_action` convert
between the two with the bounds of that space, and are exact (bit for bit) on dimensions whose
bounds already are [-1, 1].
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

# Short task names -> Gymnasium ids; the project's datasets are made on these.
TASKS: dict[str, str] = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
}


@dataclass(frozen=True)
class EnvSpec:
    """What builds the env a dataset was collected in: Gymnasium id, constructor kwargs, time limit.

    ``max_episode_steps`` None means the id's registered default. ``kwargs`` must be JSON values
    (they come from, and go back to, a dataset's JSON metadata).
    """

    id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_episode_steps: int | None = None

    def __hash__(self) -> int:
        # kwargs is a dict, so hash the canonical JSON form instead of the fields.
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kwargs": dict(self.kwargs), "max_episode_steps": self.max_episode_steps}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EnvSpec:
        """Inverse of :meth:`to_dict`; also reads Gymnasium's ``EnvSpec.to_json`` dictionary (other keys ignored)."""
        steps = values.get("max_episode_steps")
        return cls(id=str(values["id"]), kwargs=dict(values.get("kwargs") or {}),
                   max_episode_steps=None if steps is None else int(steps))

    @classmethod
    def from_gym(cls, spec: gym.envs.registration.EnvSpec) -> EnvSpec:
        return cls(id=spec.id, kwargs=dict(spec.kwargs or {}), max_episode_steps=spec.max_episode_steps)


def env_id_for(task: str | EnvSpec) -> str:
    """'hopper' -> 'Hopper-v5'; a full Gymnasium id passes through once checked; a spec gives its id."""
    if isinstance(task, EnvSpec):
        return task.id
    if task.lower() in TASKS:
        return TASKS[task.lower()]
    try:
        gym.spec(task)
    except gym.error.Error as err:
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)} or a registered Gymnasium id") from err
    return task


def is_registered(env_id: str) -> bool:
    """Whether Gymnasium knows ``env_id`` without importing any other module."""
    return env_id in gym.registry


def make_env(task: str | EnvSpec, *, seed: int | None = None, **kwargs) -> gym.Env:
    """A Gymnasium env for a short task name, an id or a recorded :class:`EnvSpec`.

    A spec's kwargs and time limit are applied; ``kwargs`` given here (``max_episode_steps``
    included) override them. The env is reset once with ``seed`` when given.
    """
    if isinstance(task, EnvSpec):
        merged: dict[str, Any] = {**task.kwargs, **kwargs}
        if task.max_episode_steps is not None:
            merged.setdefault("max_episode_steps", task.max_episode_steps)
        env = gym.make(env_id_for(task.id), **merged)
    else:
        env = gym.make(env_id_for(task), **kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def _unit(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return (low == -1.0) & (high == 1.0)


def to_env_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Policy actions in [-1, 1] (..., act_dim) -> the env's bounds: low + (a + 1) / 2 * (high - low)."""
    action = np.asarray(action)
    # float64 arithmetic, so float32 actions lose nothing but their final rounding.
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    mapped = low + (action + 1.0) * 0.5 * (high - low)
    return np.where(_unit(low, high), action, mapped).astype(action.dtype, copy=False)


def from_env_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The env's actions in [low, high] (..., act_dim) -> [-1, 1]; inverse of :func:`to_env_action`.

    A dimension with low == high (a fixed action) maps to 0.
    """
    action = np.asarray(action)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    span = high - low
    with np.errstate(divide="ignore", invalid="ignore"):
        mapped = np.where(span > 0, 2.0 * (action - low) / np.where(span > 0, span, 1.0) - 1.0, 0.0)
    mapped = np.clip(mapped, -1.0, 1.0)
    return np.where(_unit(low, high), action, mapped).astype(action.dtype, copy=False)
