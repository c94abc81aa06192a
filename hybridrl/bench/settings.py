"""The typed settings of a grid's runs, by kind.

A run's settings come from its kind's preset file (``presets/KIND.yaml``: ``settings``, then a bench
label's), then the run's overrides, all through the one override parser (``core.config``), which
converts text to each field's type and rejects unknown keys. RL runs split their overrides between
the run config and the method's config; an RL method's per-dataset preset
(``presets/methods/METHOD/TASK-QUALITY.yaml``) comes first, below the run's overrides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from hybridrl.bench.suites import RunSpec, method_preset, method_preset_path, preset
from hybridrl.core.config import RunConfig, from_dict, parse_assignments, with_overrides
from hybridrl.registry import RL_FAMILIES

T = TypeVar("T")

# Run settings per kind: typed, with a docstring per field. Their values come from the kind's preset
# (presets/KIND.yaml: ``settings``, then a bench label's), then the run's overrides, all through the one
# override parser (core.config), which converts text to each field's type and rejects unknown keys.


@dataclass(frozen=True, kw_only=True)
class PreferenceEval:
    """How a trained language model is judged: against the task's SFT model, and in win-rate matrices."""

    eval_prompts: int
    """Held-out prompts (the first ones of the task's test prompts)."""
    eval_samples: int
    """Answers sampled per prompt and model."""
    judge: str
    """Judge of the comparisons (a name ``preference.oracles.resolve_judge`` knows)."""


@dataclass(frozen=True, kw_only=True)
class PairwiseRun(PreferenceEval):
    """A pairwise preference run: training from the SFT model on the task's pairs, then its evaluation."""

    batch_size: int
    """Pairs per optimizer step."""
    learning_rate: float
    """Optimizer learning rate."""
    beta: float
    """Strength of the reference term of the loss (replaces the method's own)."""
    labels: str
    """``task``: train on the task's pairs as labelled; a judge name relabels them first (ties dropped)."""


@dataclass(frozen=True, kw_only=True)
class SelfPlayRun(PreferenceEval):
    """A self-play run: iterations of sampling, judging and updating, then its evaluation (``judge``
    judges both)."""

    samples_per_prompt: int
    """Answers sampled per prompt per iteration."""
    prompts_per_iteration: int
    """Prompts sampled per iteration."""
    steps_per_iteration: int
    """Optimizer steps per iteration."""
    batch_size: int
    """Pairs per optimizer step."""
    learning_rate: float
    """Optimizer learning rate."""
    max_new_tokens: int
    """Longest sampled answer, in tokens."""


@dataclass(frozen=True, kw_only=True)
class WinRateRun(PreferenceEval):
    """A win-rate matrix over the models of other runs of the grid and the SFT model."""

    players: tuple[str, ...]
    """Run ids of the players, in the matrix's order (the SFT model comes last)."""


@dataclass(frozen=True, kw_only=True)
class GamesRun:
    """Duality gaps of tabular Nash methods on random games."""

    methods: tuple[str, ...]
    """Tabular methods (registry family games), measured side by side."""
    games: int
    """Random games per method (medians and quartiles are over them)."""
    score_method: str
    """The method whose final gap is the run's score."""


@dataclass(frozen=True, kw_only=True)
class ThroughputRun:
    """A throughput measurement of one method."""

    seconds: float
    """Wall time of the timed updates of each measurement."""


def _settings(cls: type[T], *layers: Mapping[str, Any]) -> T:
    """``cls`` built from ``layers`` (later ones win) through the one override parser."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update(layer)
    names = {f.name for f in fields(cls)}
    missing = sorted(names - set(values))
    if missing:
        raise ValueError(f"{cls.__name__} lacks {missing}: the kind's preset file must set them")
    return from_dict(cls, values)


def field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _run_config(spec: RunSpec, overrides: dict[str, Any], device: str, threads: int | None) -> RunConfig:
    """The RL run's config: budget, seed and evaluation from the spec, cadence from the budget, and any
    override of a run setting (learning_starts, buffer_size, offline_fraction, updates_per_step...)."""
    steps = spec.steps
    base = RunConfig(steps=steps, seed=spec.seed, device=device, eval_every=spec.eval_every,
                     eval_episodes=spec.eval_episodes, log_every=max(1, min(1000, steps // 10)),
                     checkpoint_every=max(1, min(10_000, steps // 5)), progress=False, threads=threads)
    return with_overrides(base, {k: v for k, v in overrides.items() if k in field_names(RunConfig)})


_SPEC_OWNED = ("steps", "seed", "eval_every", "eval_episodes", "device", "threads")
"""Run settings that the spec or the grid sets (--steps, --seeds, eval settings, --device, --threads)."""


def rl_overrides(spec: RunSpec) -> dict[str, Any]:
    """What an RL run changes from its method's defaults: the method's preset for the run's dataset
    (``presets/methods/METHOD/TASK-QUALITY.yaml``), then the run's own overrides, which win."""
    values = method_preset(spec.method, spec.dataset)
    owned = sorted(set(values) & set(_SPEC_OWNED))
    if owned:
        raise ValueError(f"{method_preset_path(spec.method, spec.dataset)} sets {', '.join(owned)}, which come from "
                         "the suite or the grid options: remove them from the preset")
    return {**values, **spec.overrides}


def rl_settings(spec: RunSpec, device: str = "auto", threads: int | None = None) -> tuple[RunConfig, Any]:
    """(run config, method config) of an RL run: each override (the method's per-dataset preset, then
    the run's own) goes to the one that has the field."""
    from hybridrl import registry

    owned = sorted(set(spec.overrides) & set(_SPEC_OWNED))
    if owned:
        raise ValueError(f"{', '.join(owned)} of a run come from the suite or the grid options "
                         "(--steps, --seeds, --eval-every, --eval-episodes, --device, --threads), not --set")
    method = registry.get(spec.method, families=RL_FAMILIES)
    config = method.default_config()
    run_fields, method_fields = field_names(RunConfig), field_names(type(config))
    overrides = rl_overrides(spec)
    unknown = sorted(set(overrides) - run_fields - method_fields)
    if unknown:
        from_preset = set(unknown) - set(spec.overrides)
        where = f" (preset {method_preset_path(spec.method, spec.dataset)})" if from_preset else ""
        raise ValueError(f"unknown setting(s) {unknown} for {spec.method}{where}: its hyperparameters are "
                         f"{sorted(method_fields)}; run settings {sorted(run_fields - set(_SPEC_OWNED))}")
    return (_run_config(spec, overrides, device, threads),
            with_overrides(config, {k: v for k, v in overrides.items() if k in method_fields}))


def pairwise_settings(spec: RunSpec) -> tuple[str, dict[str, Any], PairwiseRun]:
    """(registered preference method, its loss overrides, run settings) of a pairwise run: a bench
    label's (presets/preference.yaml) or a registered method's own."""
    from hybridrl import registry

    presets = preset("preference")
    recipe = presets.get("labels", {}).get(spec.method)
    if recipe is None:
        recipe = {"method": registry.get(spec.method, families=("preference",)).name}
    settings = _settings(PairwiseRun, presets["eval"], presets["settings"], recipe.get("settings", {}),
                         spec.overrides)
    return recipe["method"], recipe.get("loss", {}), settings


def selfplay_settings(spec: RunSpec) -> tuple[SelfPlayRun, Any]:
    """(run settings, method config) of a self-play run: an override that is no run setting is a
    hyperparameter of the method (presets/selfplay.yaml sizes some for the tiny model)."""
    from hybridrl import registry

    presets = preset("selfplay")
    run_keys = field_names(SelfPlayRun)
    settings = _settings(SelfPlayRun, preset("preference")["eval"], presets["settings"],
                         {k: v for k, v in spec.overrides.items() if k in run_keys})
    method = registry.get(spec.method, families=("selfplay",))
    config = with_overrides(method.config(), {**presets.get("methods", {}).get(method.name, {}),
                                              **{k: v for k, v in spec.overrides.items() if k not in run_keys}})
    return settings, config


def winrate_settings(spec: RunSpec) -> WinRateRun:
    return _settings(WinRateRun, preset("preference")["eval"], spec.overrides)


def games_settings(spec: RunSpec) -> GamesRun:
    """A games run's settings; its method is a bench label (presets/games.yaml) or one tabular method."""
    from hybridrl import registry

    presets = preset("games")
    label = presets.get("labels", {}).get(spec.method)
    if label is None:
        label = {"methods": [registry.get(spec.method, families=("games",)).name]}
    return _settings(GamesRun, presets["settings"], label, spec.overrides)


def throughput_settings(spec: RunSpec) -> ThroughputRun:
    return _settings(ThroughputRun, preset("throughput")["settings"], spec.overrides)


SETTINGS: dict[str, Callable[[RunSpec], Any]] = {
    **dict.fromkeys(RL_FAMILIES, rl_settings),
    "preference": pairwise_settings,
    "selfplay": selfplay_settings,
    "games": games_settings,
    "throughput": throughput_settings,
    "winrate": winrate_settings,
}
"""Run kind -> the typed settings of a run of that kind (raises on an unknown key or a bad value)."""


def resolved_settings(spec: RunSpec) -> Any:
    """The typed settings of ``spec``; a ValueError names the run when its overrides do not fit."""
    try:
        return SETTINGS[spec.kind](spec)
    except (KeyError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise ValueError(f"{spec.run_id}: {message}") from None


def with_settings(specs: Sequence[RunSpec], assignments: Sequence[str]) -> list[RunSpec]:
    """Add ``KEY=VALUE`` settings to every run. Each run's settings are checked at once by the parser its
    run uses (``core.config.with_overrides``: unknown keys and bad values fail here, not midway through a
    grid); the values stay text in the spec, as typed."""
    extra = parse_assignments(list(assignments))
    changed = [replace(s, overrides={**s.overrides, **extra}) for s in specs]
    for spec in changed:
        resolved_settings(spec)
    return changed
