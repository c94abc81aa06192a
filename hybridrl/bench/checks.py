"""What a grid is checked for before any of its runs starts, and what ``--steps`` means per kind.

A grid that cannot run (an unknown dataset, an offline method without one, a budget that makes no
update, a bad setting) is refused at the start with one line naming the run, instead of failing run
by run after the others have trained. Checks read files and the registry only: nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from hybridrl.bench.suites import BUNDLED_PREF_TASK, RunSpec
from hybridrl.registry import RL_FAMILIES

STEP_UNITS: dict[str, str] = {
    "offline": "gradient updates",
    "online": "environment steps",
    "hybrid": "environment steps",
    "preference": "optimizer steps",
    "selfplay": "iterations",
    "games": "iterations",
}
"""Run kind -> what its ``steps`` count. Win-rate matrices and throughput runs have no step budget."""

STEPS_HELP = ("Budget of every run, in its kind's unit: " + "; ".join(
    f"{kind} {unit}" for kind, unit in STEP_UNITS.items()) + " (win-rate matrices and throughput runs have "
    "none). A plain N needs runs of one unit; KIND=N[,KIND=N] sets each kind's.")


def _positive(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{what} must be a whole number of steps, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {value}")
    return value


def with_budget(specs: Sequence[RunSpec], steps: str) -> list[RunSpec]:
    """Give runs the budget ``steps``: ``N`` (every run with a budget, when they share one unit) or
    ``KIND=N[,KIND=N]`` (the runs of each kind named)."""
    steps = steps.strip()
    budgeted = [s for s in specs if s.kind in STEP_UNITS]
    if "=" not in steps:
        value = _positive(steps, "--steps")
        units = sorted({(STEP_UNITS[s.kind], s.kind) for s in budgeted})
        if len({unit for unit, _ in units}) > 1:
            kinds = sorted({kind for _, kind in units})
            meanings = ", ".join(f"{unit} for {kind} runs" for unit, kind in units)
            raise ValueError(f"--steps {value} would mean {meanings}: narrow the grid with --methods, or give "
                             f"each kind its budget, e.g. --steps {','.join(f'{k}={value}' for k in kinds)}")
        return [replace(s, steps=value) if s.kind in STEP_UNITS else s for s in specs]
    budgets: dict[str, int] = {}
    for item in steps.split(","):
        kind, sep, text = item.partition("=")
        kind = kind.strip()
        if not sep or kind not in STEP_UNITS:
            raise ValueError(f"--steps {steps!r}: use N or KIND=N with KIND one of {', '.join(STEP_UNITS)}")
        budgets[kind] = _positive(text.strip(), f"--steps {kind}")
    absent = sorted(set(budgets) - {s.kind for s in specs})
    if absent:
        raise ValueError(f"--steps names {', '.join(absent)}, but the grid has no such run: "
                         "see the runs with --list")
    return [replace(s, steps=budgets[s.kind]) if s.kind in budgets else s for s in specs]


def drop_orphan_matrices(specs: Sequence[RunSpec]) -> tuple[list[RunSpec], list[str]]:
    """The grid without win-rate matrices whose players are not all in it (filtered out by --methods,
    --seeds...), and a note for each one dropped: such a matrix could only fail at the end."""
    ids = {s.run_id for s in specs}
    kept, notes = [], []
    for spec in specs:
        players = spec.overrides.get("players", []) if spec.kind == "winrate" else []
        missing = [p for p in players if p not in ids]
        if missing:
            notes.append(f"note: left out {spec.run_id}: {len(missing)} of its {len(players)} players are not "
                         "in the selected runs")
        else:
            kept.append(spec)
    return kept, notes


def _check_dataset(spec: RunSpec) -> None:
    from hybridrl.bench import bundled
    from hybridrl.control.datasets import local_dataset_ids

    if spec.kind in RL_FAMILIES and spec.dataset is not None:
        if spec.dataset not in bundled.DATASETS and spec.dataset not in local_dataset_ids():
            raise ValueError(f"unknown dataset {spec.dataset!r}: make it with `hybridrl data make`, or see "
                             "`hybridrl data list`")
    elif spec.kind in ("preference", "selfplay", "winrate") and spec.dataset != BUNDLED_PREF_TASK:
        task = Path(str(spec.dataset))
        missing = [n for n in ("sft_model", "pairs.jsonl", "test_prompts.jsonl") if not (task / n).exists()]
        if missing:
            raise ValueError(f"{task} is not a preference task (missing {', '.join(missing)}): make one with "
                             f"`hybridrl pref make-task {task}` or use {BUNDLED_PREF_TASK}")
    elif spec.kind == "games":
        from hybridrl.bench.execute import parse_game_label

        parse_game_label(str(spec.dataset))


def check_grid(specs: Sequence[RunSpec], device: str = "auto") -> None:
    """Raise one ValueError line, naming the first run that cannot run: an unknown dataset or task, a
    method given data it cannot train on, a bad setting, a budget that makes no update."""
    from hybridrl.bench.settings import field_names, resolved_settings
    from hybridrl.core.config import RunConfig
    from hybridrl.runners import check_budget

    for spec in specs:
        try:
            _check_dataset(spec)
            settings = resolved_settings(spec)
            if spec.kind in RL_FAMILIES:
                run_config, _ = settings
                method_overrides = {k: v for k, v in spec.overrides.items() if k not in field_names(RunConfig)}
                check_budget(spec.method, run_config, dataset=spec.dataset, env=spec.env, overrides=method_overrides)
        except (KeyError, ValueError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            prefix = "" if message.startswith(spec.run_id) else f"{spec.run_id}: "
            raise ValueError(f"{prefix}{message}") from None
