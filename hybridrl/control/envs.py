"""Gymnasium MuJoCo v5 tasks by short name or full id."""

from __future__ import annotations

import gymnasium as gym

# Short task names -> Gymnasium ids; the project's datasets are made on these.
TASKS: dict[str, str] = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
}


def env_id_for(task: str) -> str:
    """'hopper' -> 'Hopper-v5'; a full Gymnasium id passes through once checked."""
    if task.lower() in TASKS:
        return TASKS[task.lower()]
    try:
        gym.spec(task)
    except gym.error.Error as err:
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)} or a registered Gymnasium id") from err
    return task


def make_env(task: str, *, seed: int | None = None, **kwargs) -> gym.Env:
    """A Gymnasium env for a short task name or id, reset once with ``seed`` when given."""
    env = gym.make(env_id_for(task), **kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
