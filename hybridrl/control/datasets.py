"""Minari datasets: load, validate, convert to transitions with D4RL semantics, and write.

A Minari episode holds T+1 observations for T actions. A transition t is
(obs[t], action[t], reward[t], obs[t+1], terminated[t]), so observations and actions stay aligned
exactly and nothing is dropped: unlike D4RL's ``qlearning_dataset``, which had no next observation
for the last step of a time-limited episode, Minari keeps the final observation. Terminations stop
bootstrapping; truncations (time limits) do not, and are reported as ``timeouts``.

Actions: a dataset stores the env's own actions, inside the action space it records (Pendulum:
+-2, Humanoid: +-0.4). :func:`load` scales them into [-1, 1] with that space, so ``OfflineData.actions``
and ``OfflineData.as_d4rl()`` (what training sees) are the scaled view, and evaluation maps policy
outputs back with the same bounds (``control.evaluate``). :func:`qlearning_dataset`, D4RL's view for
scripts written against D4RL, returns the env's raw actions exactly as stored.

The env a dataset records (Gymnasium id, kwargs, time limit) is read into ``OfflineData.env_spec``
and ``eval_env_spec``; evaluation builds its env from the latter.

Every problem with a dataset raises :class:`DatasetError` with one line naming the problem and the fix.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridrl.control.envs import EnvSpec, from_env_action, is_registered, make_env, to_env_action

REQUIRED_FIELDS = ("observations", "actions", "rewards", "terminations", "truncations")


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the problem and the fix."""


@dataclass
class OfflineData:
    """Transitions of a whole dataset as float32 numpy arrays (N rows), plus what scoring needs."""

    observations: np.ndarray
    actions: np.ndarray
    """(N, act_dim) actions scaled into [-1, 1] with ``action_low`` / ``action_high``."""
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    """1.0 where the episode ended in a true terminal state."""
    timeouts: np.ndarray
    """1.0 on the last step of an episode cut by a time limit (bootstraps)."""
    episode_returns: np.ndarray
    episode_lengths: np.ndarray
    dataset_id: str = ""
    env_id: str | None = None
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    env_spec: EnvSpec | None = None
    """The env the data was collected in (Minari's ``env_spec``), None when the dataset records none."""
    eval_env_spec: EnvSpec | None = None
    """The env to evaluate in (Minari's ``eval_env_spec``, else ``env_spec``); pass it to ``evaluate``."""
    action_low: np.ndarray | None = None
    """(act_dim,) float32 lower bounds of the recorded action space (-1 when none was given)."""
    action_high: np.ndarray | None = None
    """(act_dim,) float32 upper bounds of the recorded action space (+1 when none was given)."""

    def __post_init__(self) -> None:
        ones = np.ones(self.actions.shape[1], dtype=np.float32)
        self.action_low = -ones if self.action_low is None else np.asarray(self.action_low, dtype=np.float32)
        self.action_high = ones if self.action_high is None else np.asarray(self.action_high, dtype=np.float32)
        if self.eval_env_spec is None:
            self.eval_env_spec = self.env_spec

    def __len__(self) -> int:
        return len(self.rewards)

    def to_env_action(self, action: np.ndarray) -> np.ndarray:
        """Policy actions in [-1, 1] (..., act_dim) -> the env's raw actions under the recorded bounds."""
        return to_env_action(action, self.action_low, self.action_high)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def ref_scores(self) -> tuple[float, float] | None:
        if self.ref_min_score is None or self.ref_max_score is None:
            return None
        return self.ref_min_score, self.ref_max_score

    def as_d4rl(self) -> dict[str, np.ndarray]:
        """D4RL's ``qlearning_dataset`` keys (plus ``timeouts``), actions scaled into [-1, 1]: the training view."""
        return {
            "observations": self.observations, "actions": self.actions, "rewards": self.rewards,
            "next_observations": self.next_observations, "terminals": self.terminals, "timeouts": self.timeouts,
        }


def datasets_root() -> Path:
    """Minari's local store: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


def local_dataset_ids() -> list[str]:
    """Ids of the datasets in the local store (directories holding ``data/metadata.json``)."""
    root = datasets_root()
    if not root.is_dir():
        return []
    return sorted(str(p.parent.parent.relative_to(root)) for p in root.glob("**/data/metadata.json")
                  if ".staging" not in p.parts[len(root.parts)])


def _check_episode(index: int, episode: Mapping[str, Any], low: np.ndarray | None = None,
                   high: np.ndarray | None = None) -> dict[str, np.ndarray]:
    where = f"episode {index}"
    missing = [name for name in REQUIRED_FIELDS if episode.get(name) is None]
    if missing:
        raise DatasetError(f"{where} has no {', '.join(missing)}: every Minari episode needs "
                           f"{', '.join(REQUIRED_FIELDS)}")
    obs = episode["observations"]
    if isinstance(obs, Mapping):
        raise DatasetError(f"{where} has dictionary observations: flatten them to one array "
                           "(e.g. gymnasium.wrappers.FlattenObservation) before offline training")
    arrays = {name: np.asarray(episode[name]) for name in REQUIRED_FIELDS}
    for name, value in arrays.items():
        if value.ndim == 0 or value.dtype.kind not in "biuf":
            shown = f"a single value ({value.dtype})" if value.ndim == 0 else f"values of type {value.dtype}"
            raise DatasetError(f"{where}: {name} holds {shown}; it needs one row of numbers per step")
    obs, actions = arrays["observations"], arrays["actions"]
    steps = len(arrays["rewards"])
    if steps == 0:
        raise DatasetError(f"{where} is empty (0 steps): drop it from the dataset")
    if obs.ndim != 2 or actions.ndim != 2:
        raise DatasetError(f"{where}: observations {obs.shape} and actions {actions.shape} must be 2-D "
                           "(steps, dim): only flat Box spaces are supported")
    if obs.shape[0] != steps + 1:
        raise DatasetError(f"{where}: {obs.shape[0]} observations for {steps} steps; a Minari episode holds "
                           "T+1 observations (including the final one) for T actions")
    for name in ("actions", "rewards", "terminations", "truncations"):
        if len(arrays[name]) != steps:
            raise DatasetError(f"{where}: {len(arrays[name])} {name} for {steps} rewards; all per-step "
                               "fields need one row per step")
    for name in ("observations", "actions", "rewards"):
        values = arrays[name].astype(np.float64)
        if not np.isfinite(values).all():
            row = int(np.argwhere(~np.isfinite(values.reshape(len(values), -1)))[0, 0])
            raise DatasetError(f"{where}: {name} hold NaN or inf (first at step {row}): clean or drop the episode")
    if low is None or high is None:
        if np.abs(actions).max() > 1.0 + 1e-6:
            raise DatasetError(f"{where}: actions outside [-1, 1] (max |a| = {np.abs(actions).max():.3g}); "
                               "rescale the dataset's actions to [-1, 1]")
        return arrays
    if actions.shape[1] != len(low):
        raise DatasetError(f"{where}: actions have {actions.shape[1]} values but the recorded action space has "
                           f"{len(low)}: record the action space the actions were taken in")
    # float32 rounding of actions mapped into the bounds may step a hair past them.
    slack = 1e-5 * (high.astype(np.float64) - low) + 1e-6
    outside = (actions < low - slack) | (actions > high + slack)
    if outside.any():
        step, dim = (int(i) for i in np.argwhere(outside)[0])
        raise DatasetError(f"{where}: action {actions[step, dim]:.4g} (step {step}, dimension {dim}) is outside the "
                           f"recorded action space [{low[dim]:.4g}, {high[dim]:.4g}]: a dataset must store the env's "
                           "own actions inside the action space it records; remake it or record the right space")
    return arrays


def episodes_to_transitions(episodes: Iterable[Mapping[str, Any]], *, action_low: np.ndarray | None = None,
                            action_high: np.ndarray | None = None, scale_actions: bool = True,
                            **info: Any) -> OfflineData:
    """Validate episodes (mappings with Minari's fields) and flatten them into transitions.

    Without bounds the actions must already lie in [-1, 1]. With ``action_low`` / ``action_high``
    (act_dim,) they must lie in those bounds and are scaled into [-1, 1] (kept raw when
    ``scale_actions`` is False).
    """
    low = None if action_low is None else np.asarray(action_low, dtype=np.float32)
    high = None if action_high is None else np.asarray(action_high, dtype=np.float32)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "rew", "next", "term", "timeout")}
    returns, lengths = [], []
    obs_dim = act_dim = None
    for index, episode in enumerate(episodes):
        arrays = _check_episode(index, episode, low, high)
        obs, actions = arrays["observations"], arrays["actions"]
        if obs_dim is None:
            obs_dim, act_dim = obs.shape[1], actions.shape[1]
        elif (obs.shape[1], actions.shape[1]) != (obs_dim, act_dim):
            raise DatasetError(f"episode {index}: observation/action sizes {obs.shape[1]}/{actions.shape[1]} "
                               f"differ from the first episode's {obs_dim}/{act_dim}")
        parts["obs"].append(obs[:-1])
        parts["next"].append(obs[1:])
        parts["act"].append(actions)
        parts["rew"].append(arrays["rewards"])
        parts["term"].append(arrays["terminations"])
        # A step that is both terminal and truncated is a termination (no bootstrap).
        parts["timeout"].append(np.logical_and(arrays["truncations"], ~arrays["terminations"].astype(bool)))
        returns.append(float(np.sum(arrays["rewards"])))
        lengths.append(len(arrays["rewards"]))
    if not returns:
        raise DatasetError("the dataset holds no episodes: make or download a non-empty dataset")

    def cat(name: str) -> np.ndarray:
        return np.concatenate(parts[name]).astype(np.float32)

    actions = cat("act")
    if low is not None and high is not None and scale_actions:
        actions = from_env_action(actions, low, high)
    return OfflineData(
        observations=cat("obs"), actions=actions, rewards=cat("rew"), next_observations=cat("next"),
        terminals=cat("term"), timeouts=cat("timeout"), episode_returns=np.asarray(returns),
        episode_lengths=np.asarray(lengths), action_low=low, action_high=high, **info,
    )


def open_minari(dataset_id: str, *, download: bool = False):
    """``minari.load_dataset`` with one-line errors for unknown, missing or malformed datasets."""
    import minari

    if not dataset_id or dataset_id.strip() != dataset_id or dataset_id.startswith("/"):
        raise DatasetError(f"malformed dataset id {dataset_id!r}: use namespace/env/name-vN, "
                           "e.g. hybridrl/hopper/random-v0")
    path = datasets_root() / dataset_id
    if not (path / "data").exists() and not download:
        close = difflib.get_close_matches(dataset_id, local_dataset_ids(), n=5)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise DatasetError(f"unknown dataset {dataset_id!r}{hint}: make it with `hybridrl data make`, pass --download "
                           "to fetch it, or see `hybridrl data list`")
    try:
        return minari.load_dataset(dataset_id, download=download)
    except DatasetError:
        raise
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetError(f"dataset {dataset_id!r} could not be opened ({reason}): "
                           "remake it or check its files under the Minari store") from err


def _ref(metadata: Mapping[str, Any], key: str) -> float | None:
    value = metadata.get(key)
    return None if value is None else float(value)


def _spec(value: Any) -> EnvSpec | None:
    """Minari's recorded env spec (a Gymnasium ``EnvSpec`` JSON string or object) as an :class:`EnvSpec`."""
    if not value:
        return None
    if isinstance(value, str):
        return EnvSpec.from_dict(json.loads(value))
    return EnvSpec.from_gym(value)


def _action_bounds(space: Any) -> tuple[np.ndarray, np.ndarray]:
    import gymnasium as gym

    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise DatasetError(f"the recorded action space {space} is not a flat Box: only continuous "
                           "(act_dim,) actions are supported")
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise DatasetError(f"the recorded action space {space} is unbounded: record the bounds the actions "
                           "were taken in, so they can be scaled into [-1, 1]")
    return low, high


def check_env_shapes(data: OfflineData, env) -> None:
    """Raise when ``data``'s observation or action size differs from ``env``'s spaces (flat Boxes only)."""
    name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    for what, size, space in (("observations", data.obs_dim, env.observation_space),
                              ("actions", data.act_dim, env.action_space)):
        shape = getattr(space, "shape", None)
        if shape is not None and len(shape) == 1 and shape[0] != size:
            raise DatasetError(f"{what} have {size} values but {name}'s {what[:-1]} space has {shape[0]}: the data "
                               "does not come from its recorded env; remake it or record the env it came from")


def _check_recorded_env(data: OfflineData) -> None:
    """Compare the data with its evaluation env when Gymnasium can build it here; else skip."""
    spec = data.eval_env_spec
    if spec is None or not is_registered(spec.id):
        return
    try:
        env = make_env(spec)
    except Exception:
        # An env that cannot be built here (missing engine, kwargs of another version) is not checked.
        return
    try:
        check_env_shapes(data, env)
    finally:
        env.close()


def _load(dataset_id: str, *, download: bool, scale_actions: bool) -> OfflineData:
    dataset = open_minari(dataset_id, download=download)
    metadata = dict(dataset.storage.metadata)
    try:
        env_spec = _spec(metadata.get("env_spec"))
        eval_env_spec = _spec(metadata.get("eval_env_spec")) or env_spec
        low, high = _action_bounds(dataset.action_space)
        episodes = dataset.iterate_episodes()
        records = ({name: getattr(ep, name, None) for name in REQUIRED_FIELDS} for ep in episodes)
        data = episodes_to_transitions(
            records, action_low=low, action_high=high, scale_actions=scale_actions, dataset_id=dataset_id,
            env_id=None if env_spec is None else env_spec.id, env_spec=env_spec, eval_env_spec=eval_env_spec,
            ref_min_score=_ref(metadata, "ref_min_score"), ref_max_score=_ref(metadata, "ref_max_score"),
            metadata=metadata,
        )
        _check_recorded_env(data)
        return data
    except DatasetError as err:
        raise DatasetError(f"dataset {dataset_id!r}: {err}") from err
    except (KeyError, OSError, json.JSONDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else ""
        raise DatasetError(f"dataset {dataset_id!r} is malformed ({type(err).__name__}: {reason}): remake it") from err


def load(dataset_id: str, *, download: bool = False) -> OfflineData:
    """Load a Minari dataset by id as validated transitions with D4RL semantics.

    Actions are scaled into [-1, 1] with the recorded action space (``action_low`` /
    ``action_high``); ``env_spec`` / ``eval_env_spec`` hold the recorded env. A dataset whose
    observation or action size differs from that env's spaces is refused, when Gymnasium has the
    env registered here (otherwise that check is skipped).
    """
    return _load(dataset_id, download=download, scale_actions=True)


def qlearning_dataset(dataset_id: str, *, download: bool = False) -> dict[str, np.ndarray]:
    """D4RL's ``qlearning_dataset`` dictionary for a Minari dataset id.

    Keys: observations, actions, rewards, next_observations, terminals, timeouts (numpy arrays),
    so scripts written for D4RL run unchanged on Minari data. Actions are the env's raw actions
    exactly as stored (D4RL's convention), not the [-1, 1] view of ``load(...).as_d4rl()``.
    """
    return _load(dataset_id, download=download, scale_actions=False).as_d4rl()


def write(dataset_id: str, episodes: list[Mapping[str, np.ndarray]], *, env_id: str | EnvSpec,
          ref_min_score: float, ref_max_score: float, description: str, algorithm_name: str,
          extra_metadata: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write episodes as a Minari dataset, atomically.

    ``env_id`` is a task name, a Gymnasium id or an :class:`EnvSpec` (kwargs and time limit); the
    env it builds is recorded as the dataset's env and evaluation env, with its action space. The
    episodes hold that env's raw actions, inside its action space (``load`` scales them).

    The dataset is written under a staging directory of the same store and renamed into place when
    complete, so an interrupted write leaves no half dataset. ``extra_metadata`` (e.g. the recipe,
    the seed, measured returns) is stored in the dataset's metadata beside Minari's fields.
    """
    import minari
    from minari.data_collector import EpisodeBuffer

    root = datasets_root()
    final = root / dataset_id
    if (final / "data").exists() and not overwrite:
        raise DatasetError(f"dataset {dataset_id!r} already exists in {root}: delete it or pass overwrite")
    env = make_env(env_id)
    try:
        # Validate before writing anything.
        low, high = _action_bounds(env.action_space)
        check_env_shapes(episodes_to_transitions(episodes, action_low=low, action_high=high), env)
    except DatasetError:
        env.close()
        raise
    buffers = [
        EpisodeBuffer(id=i, seed=None, observations=np.asarray(ep["observations"], dtype=np.float64),
                      actions=np.asarray(ep["actions"], dtype=np.float32),
                      rewards=list(np.asarray(ep["rewards"], dtype=np.float64)),
                      terminations=list(np.asarray(ep["terminations"], dtype=bool)),
                      truncations=list(np.asarray(ep["truncations"], dtype=bool)), infos={})
        for i, ep in enumerate(episodes)
    ]
    staging_root = root / f".staging-{uuid.uuid4().hex[:8]}"
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(staging_root)
    try:
        dataset = minari.create_dataset_from_buffers(
            dataset_id=dataset_id, buffer=buffers, env=env, eval_env=env, algorithm_name=algorithm_name,
            author="hybridrl", author_email="hybridrl@users.noreply.github.com",
            code_permalink="https://github.com/hybridrl/hybridrl", ref_min_score=ref_min_score,
            ref_max_score=ref_max_score, description=description, data_format="hdf5",
            observation_space=env.observation_space, action_space=env.action_space,
        )
        if extra_metadata:
            dataset.storage.update_metadata(dict(extra_metadata))
        os.environ["MINARI_DATASETS_PATH"] = str(root)
        namespace = dataset_id.split("/")[0] if "/" in dataset_id else None
        if namespace and namespace not in minari.namespace.list_local_namespaces():
            minari.namespace.create_namespace(namespace)
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging_root / dataset_id, final)
    finally:
        env.close()
        shutil.rmtree(staging_root, ignore_errors=True)
        with contextlib.suppress(KeyError):
            del os.environ["MINARI_DATASETS_PATH"]
        if previous is not None:
            os.environ["MINARI_DATASETS_PATH"] = previous
    return final


def collect_episodes(task: str | EnvSpec, act, *, transitions: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Roll out ``act`` (obs (obs_dim,) -> action in [-1, 1]) in a real env (task name, id or spec).

    Whole episodes are collected until at least ``transitions`` steps; episode i is reset with
    seed ``seed + i``. Returns Minari-style episodes (T+1 observations) holding the env's raw
    actions (the policy's mapped to the action space), as :func:`write` expects.
    """
    env = make_env(task)
    low, high = env.action_space.low, env.action_space.high
    episodes, total = [], 0
    while total < transitions:
        obs, _ = env.reset(seed=seed + len(episodes))
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        done = False
        while not done:
            action = to_env_action(np.clip(np.asarray(act(obs), dtype=np.float32), -1.0, 1.0), low, high)
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terms.append(terminated)
            truncs.append(truncated)
            done = terminated or truncated
        episodes.append({"observations": np.asarray(observations), "actions": np.asarray(actions),
                         "rewards": np.asarray(rewards), "terminations": np.asarray(terms),
                         "truncations": np.asarray(truncs)})
        total += len(rewards)
    env.close()
    return episodes
