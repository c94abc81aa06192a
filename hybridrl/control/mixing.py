"""Mixed-quality datasets: the episodes of several Minari datasets of one env, concatenated.

D4RL's ``medium-expert`` is such a mix (medium and expert episodes side by side); :func:`mix` makes
any other (random + expert, medium + medium-replay...) from datasets already in the local store.

- Every episode is kept whole and as recorded: its T+1 observations, the env's raw actions, its
  rewards and its terminations and truncations; only the episode ids are renumbered, sources in
  the order given, each source's episodes in its own order. Episode infos are not copied.
- The sources must record the same env (Gymnasium id, kwargs, time limit; and evaluation env),
  the same action space and observation shape, and the same reference scores; anything else is
  refused in one line, before anything is written.
- The new dataset records its sources in ``hybridrl_mix_sources`` (a JSON list of
  ``{"id", "episodes", "transitions", "return_mean"}``), beside the returns measured over the mix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridrl.control.datasets import (
    REQUIRED_FIELDS,
    DatasetError,
    _action_bounds,
    _spec,
    local_dataset_ids,
    open_minari,
    write,
)
from hybridrl.control.envs import EnvSpec, make_env

ID_PATTERN = r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*-v\d+"
"""Minari's id form NAMESPACE/NAME-vN (the form ``data make`` accepts)."""


@dataclass
class _Source:
    """What a mix needs of one source dataset: its records and its episodes (raw, as stored)."""

    dataset_id: str
    env_spec: EnvSpec
    eval_env_spec: EnvSpec
    eval_env_json: Any
    """The evaluation env exactly as the source's metadata holds it (copied when it differs from the env)."""
    action_space: Any
    obs_shape: tuple[int, ...]
    ref_scores: tuple[float | None, float | None]
    algorithm: str
    episodes: list[dict[str, np.ndarray]]

    @property
    def transitions(self) -> int:
        return sum(len(ep["rewards"]) for ep in self.episodes)


def _read(dataset_id: str, download: bool) -> _Source:
    dataset = open_minari(dataset_id, download=download)
    metadata = dict(dataset.storage.metadata)
    env_spec = _spec(metadata.get("env_spec"))
    if env_spec is None:
        raise DatasetError(f"dataset {dataset_id!r} records no env: a mix is written for the env its sources "
                           "record, so mix only datasets that record one")
    _action_bounds(dataset.action_space)  # a flat, bounded Box, as training needs
    episodes = [{name: np.asarray(getattr(ep, name)) for name in REQUIRED_FIELDS}
                for ep in dataset.iterate_episodes()]
    if not episodes:
        raise DatasetError(f"dataset {dataset_id!r} holds no episodes: nothing to mix")
    refs = tuple(None if metadata.get(k) is None else float(metadata[k]) for k in ("ref_min_score", "ref_max_score"))
    return _Source(dataset_id=dataset_id, env_spec=env_spec,
                   eval_env_spec=_spec(metadata.get("eval_env_spec")) or env_spec,
                   eval_env_json=metadata.get("eval_env_spec"), action_space=dataset.action_space,
                   obs_shape=tuple(dataset.observation_space.shape or ()), ref_scores=refs,  # type: ignore[arg-type]
                   algorithm=str(metadata.get("algorithm_name") or "unknown"), episodes=episodes)


def _check_same(first: _Source, other: _Source) -> None:
    """One line naming what ``other`` records differently from ``first``."""
    a, b = first.dataset_id, other.dataset_id
    differs = [
        ("envs", first.env_spec, other.env_spec),
        ("evaluation envs", first.eval_env_spec, other.eval_env_spec),
        ("observation shapes", first.obs_shape, other.obs_shape),
        ("reference scores (random, expert)", first.ref_scores, other.ref_scores),
    ]
    for what, x, y in differs:
        if x != y:
            raise DatasetError(f"cannot mix {a!r} and {b!r}: their {what} differ ({x} vs {y}); "
                               "mix only datasets of the same env, action space and reference scores")
    if first.action_space != other.action_space:
        raise DatasetError(f"cannot mix {a!r} and {b!r}: their action spaces differ ({first.action_space} vs "
                           f"{other.action_space}); mix only datasets of the same env, action space and "
                           "reference scores")


def mix(sources: Sequence[str], out_id: str, *, overwrite: bool = False, download: bool = False) -> dict[str, Any]:
    """Write the episodes of ``sources`` (Minari ids, in order) as the dataset ``out_id``.

    Returns what the dataset records of its sources (``hybridrl_mix_sources``) under ``sources``,
    with ``episodes`` and ``transitions`` totals. Raises :class:`DatasetError` (one line) when the
    sources differ in env, action space, observation shape or reference scores, and ``ValueError``
    for a bad or taken ``out_id`` (pass ``overwrite`` to replace it).
    """
    sources = list(sources)
    if len(sources) < 2:
        raise ValueError(f"a mix needs two datasets or more, got {len(sources)}: "
                         "hybridrl data mix A B [C ...] --out ID")
    repeated = sorted({s for s in sources if sources.count(s) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} named twice: name each source once")
    if not re.fullmatch(ID_PATTERN, out_id):
        raise ValueError(f"invalid dataset id {out_id!r}: use Minari's form NAMESPACE/NAME-vN, "
                         "e.g. hybridrl/hopper/random-expert-v0")
    if out_id in sources:
        raise ValueError(f"--out {out_id!r} is one of the sources: write the mix under a new id")
    if out_id in local_dataset_ids() and not overwrite:
        raise ValueError(f"dataset {out_id!r} already exists: pass --overwrite to remake it")
    read = [_read(s, download) for s in sources]
    first = read[0]
    for other in read[1:]:
        _check_same(first, other)
    # The mix is written for the env its sources record; that env must still have their action space,
    # or their raw actions would be read in the wrong bounds.
    env = make_env(first.env_spec)
    try:
        if env.action_space != first.action_space:
            raise DatasetError(f"{first.env_spec.id} builds the action space {env.action_space} here, but the sources "
                               f"record {first.action_space}: mix them where their env matches their data")
    finally:
        env.close()

    episodes = [ep for source in read for ep in source.episodes]
    returns = np.array([float(np.sum(ep["rewards"])) for ep in episodes])
    records = [{"id": s.dataset_id, "episodes": len(s.episodes), "transitions": s.transitions,
                "return_mean": float(np.mean([np.sum(ep["rewards"]) for ep in s.episodes]))} for s in read]
    ref_min, ref_max = first.ref_scores
    meta: dict[str, Any] = {"hybridrl_recipe": "mix", "hybridrl_mix_sources": json.dumps(records),
                            "hybridrl_measured_return_mean": float(returns.mean()),
                            "hybridrl_measured_return_std": float(returns.std())}
    if ref_min is not None and ref_max is not None:
        meta["hybridrl_measured_normalized_mean"] = float(100 * (returns.mean() - ref_min) / (ref_max - ref_min))
    if first.eval_env_spec != first.env_spec:
        # write() records one env for both; keep the sources' own evaluation env.
        meta["eval_env_spec"] = first.eval_env_json
    total = sum(r["transitions"] for r in records)
    parts = ", ".join(f"{r['id']} ({r['episodes']} episodes)" for r in records)
    write(out_id, episodes, env_id=first.env_spec, ref_min_score=ref_min, ref_max_score=ref_max,  # type: ignore[arg-type]
          algorithm_name=" + ".join(dict.fromkeys(s.algorithm for s in read)), overwrite=overwrite,
          extra_metadata=meta,
          description=f"mix of {parts} for {first.env_spec.id}: {len(episodes)} episodes, {total} steps; "
                      "episodes whole and as recorded.")
    return {"sources": records, "episodes": len(episodes), "transitions": total}
