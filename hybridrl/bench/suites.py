"""Benchmark suites as data: a suite is a YAML file of runs, so adding a method is one line there.

A run is a ``RunSpec``: what to run (kind and method), on what (a Minari dataset, an env, or both for
a hybrid run; a preference task, a game label), with which seed, for how many steps, with which
overrides. ``hybridrl bench SUITE`` runs a suite's specs as a resumable grid (see ``runner``).

Files that ship with the package (``presets/``, keys sorted, each saying what it holds and where its
numbers come from):

- ``presets/suites/NAME.yaml``: the suite NAME, a list under ``runs``. An entry is a grid (the product
  of its ``methods`` x ``datasets`` x ``envs`` x ``seeds``, all with its ``steps``, ``eval_every``,
  ``eval_episodes`` and ``overrides``; ``group`` names its runs for a later entry), or a ``winrate``
  entry (``judge``, ``players``: groups, ``seeds``, ``overrides``): one matrix per seed over the
  groups' runs of that seed.
- ``presets/KIND.yaml``: the run settings of a kind (``settings``) and its bench labels (``labels``:
  a name such as ``fdpo-js`` that stands for a registered method with some settings); read by
  ``execute``.
- ``presets/methods/METHOD/TASK-QUALITY.yaml``: per-dataset hyperparameters of an RL method (CORL's
  habit), the defaults of every run of METHOD on ``hybridrl/TASK/QUALITY-vN`` or
  ``mujoco/TASK/QUALITY-vN``; a run's own overrides win (see ``method_preset``). This is their one
  home; ``benchmarks/configs/METHOD`` links here.

A method's kind is its registry family, unless it is a bench label (then it is the kind whose preset
file defines it).
"""

from __future__ import annotations

import copy
import functools
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hybridrl.registry import FAMILIES, RL_FAMILIES

KINDS: tuple[str, ...] = (*FAMILIES, "throughput", "winrate")
LATE_KINDS = ("winrate",)
"""Kinds that read other runs of the grid (their models), so they run after all the others."""
GRID_FAMILIES = tuple(family for family in FAMILIES if family != "games")
"""Families whose methods a grid runs one per run; a games run measures a set of tabular methods,
named by a bench label (presets/games.yaml)."""

BUNDLED_PREF_TASK = "bundled:pref-task"
"""The tiny SFT model, pairs and held-out prompts that ship with the package (see ``bundled``)."""

PRESETS = Path(__file__).parent / "presets"
SUITES: dict[str, Path] = {path.stem: path for path in sorted((PRESETS / "suites").glob("*.yaml"))}
"""Suite name -> its file."""


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None


@functools.cache
def _preset(name: str) -> dict[str, Any]:
    path = PRESETS / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"no preset file {path.name} in {PRESETS}")
    return _read_yaml(path)


def preset(name: str) -> dict[str, Any]:
    """The preset file ``presets/NAME.yaml`` (a copy: callers may change it)."""
    return copy.deepcopy(_preset(name))


METHOD_PRESETS = PRESETS / "methods"
"""Per-dataset presets of RL methods: ``METHOD/TASK-QUALITY.yaml``."""
_PRESET_DATASET = re.compile(r"(?:hybridrl|mujoco)/([A-Za-z0-9_]+)/([A-Za-z0-9_-]+)-v\d+")


def method_preset_path(method: str, dataset: str | None) -> Path | None:
    """``presets/methods/METHOD/TASK-QUALITY.yaml`` for a run of ``method`` on ``NAMESPACE/TASK/QUALITY-vN``
    (namespace hybridrl or mujoco), when that file exists; else None."""
    match = _PRESET_DATASET.fullmatch(dataset or "")
    if match is None:
        return None
    path = METHOD_PRESETS / method / f"{match[1]}-{match[2]}.yaml"
    return path if path.is_file() else None


@functools.cache
def _method_preset(path: Path) -> dict[str, Any]:
    values = _read_yaml(path)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds no mapping of hyperparameters: write KEY: VALUE lines")
    return values


def method_preset(method: str, dataset: str | None) -> dict[str, Any]:
    """The hyperparameters of ``method``'s preset for ``dataset`` (a copy; empty when it has none).

    The file for ``hybridrl/hopper/medium-replay-v0`` is ``presets/methods/METHOD/hopper-medium-replay.yaml``;
    a dataset of another namespace, or a quality with no file (``medium-quick``), gets none."""
    path = method_preset_path(method, dataset)
    return {} if path is None else copy.deepcopy(_method_preset(path))


def labels() -> dict[str, str]:
    """Bench label -> the kind whose preset file defines it."""
    found = {}
    for kind in KINDS:
        if (PRESETS / f"{kind}.yaml").exists():
            found.update(dict.fromkeys(_preset(kind).get("labels") or {}, kind))
    return found


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid; its ``run_id`` names its directory."""

    kind: str
    """A registry family (offline, online, hybrid, preference, selfplay, games), throughput, or winrate
    (a matrix over other runs' models)."""
    method: str
    """Registry name (bc, cql, sac, inpo...) or bench label (presets/KIND.yaml)."""
    dataset: str | None = None
    """Minari id (offline, hybrid; an online method given one trains hybrid), preference task (dir or
    bundled:...), game label, or the device of a throughput run."""
    env: str | None = None
    """RL runs: training env, a task (hopper) or Gymnasium id (online; hybrid: default the dataset's)."""
    seed: int = 0
    steps: int = 1_000_000
    """Gradient updates (offline, preference), environment steps (online, hybrid), iterations (selfplay,
    games)."""
    eval_every: int = 0
    """Steps between evaluations for learning curves (0: only at the end)."""
    eval_episodes: int = 10
    overrides: dict[str, Any] = field(default_factory=dict)
    """Hyperparameters that differ from the method's defaults (the paper's), and run settings."""
    suite: str = "custom"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown run kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.dataset is None and self.env is None:
            raise ValueError(f"{self.kind} run of {self.method} names neither a dataset nor an env")
        if self.env is not None and self.kind not in RL_FAMILIES:
            raise ValueError(f"a {self.kind} run takes no env (got {self.env!r}): only {', '.join(RL_FAMILIES)} "
                             "runs do")

    @property
    def target(self) -> str:
        """What the run trains on, in one label: its dataset, its env, or both (``dataset+env``)."""
        return "+".join(x for x in (self.dataset, self.env) if x is not None)

    @property
    def run_id(self) -> str:
        target = re.sub(r"[^A-Za-z0-9.-]+", "_", self.target).strip("_")
        return f"{self.kind}-{self.method}-{target}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """What spec.json holds. ``dataset`` keeps the meaning it had before runs named their env
        apart (what the run trains on: the report groups runs by it); ``inputs`` says which is which."""
        data = asdict(self)
        inputs = {"dataset": data.pop("dataset"), "env": data.pop("env")}
        return {"run_id": self.run_id, "kind": self.kind, "method": self.method, "dataset": self.target,
                "inputs": inputs, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        values = {k: v for k, v in data.items() if k not in ("run_id", "inputs")}
        if isinstance(data.get("inputs"), dict):
            values.update(dataset=data["inputs"].get("dataset"), env=data["inputs"].get("env"))
        elif values.get("kind") == "online":
            # a spec.json from before runs named their env apart: an online run's dataset was its env
            values["env"] = values.pop("dataset", None)
        return cls(**values)


def grid(kind: str, methods: Iterable[str], datasets: Iterable[str | None], seeds: Iterable[int], steps: int, *,
         envs: Iterable[str | None] = (None,), **settings: Any) -> list[RunSpec]:
    """The product methods x datasets x envs x seeds, all with the same settings."""
    return [RunSpec(kind, m, d, e, seed=s, steps=steps, **settings)
            for m, d, e, s in itertools.product(methods, datasets, envs, seeds)]


def win_rate_matrix(players: Sequence[RunSpec], judge: str | None = None, **settings: Any) -> RunSpec:
    """A run that plays the models of ``players`` (and the SFT model) against each other.

    ``judge`` defaults to the judge of the preference preset's evaluation."""
    judge = judge or _preset("preference")["eval"]["judge"]
    task = players[0].dataset
    return RunSpec("winrate", f"matrix-{judge}", task, seed=players[0].seed, steps=0,
                   overrides={"players": [p.run_id for p in players], "judge": judge, **settings})


_GRID_KEYS = {"kind", "methods", "datasets", "envs", "seeds", "steps", "eval_every", "eval_episodes", "overrides",
              "group"}
_WINRATE_KEYS = {"kind", "judge", "players", "seeds", "overrides", "group"}


def _entry_runs(entry: dict[str, Any], groups: dict[str, list[RunSpec]], where: str) -> list[RunSpec]:
    """The runs of one entry of a suite file (see the module docstring)."""
    if not isinstance(entry, dict) or "kind" not in entry:
        raise ValueError(f"{where}: an entry of `runs` is a mapping with a kind, got {entry!r}")
    allowed = _WINRATE_KEYS if entry["kind"] == "winrate" else _GRID_KEYS
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} in a {entry['kind']} entry; valid: {sorted(allowed)}")
    try:
        if entry["kind"] == "winrate":
            missing = [g for g in entry["players"] if g not in groups]
            if missing:
                raise ValueError(f"players name no earlier group: {missing}")
            players = [run for g in entry["players"] for run in groups[g]]
            runs = []
            for seed in entry["seeds"]:
                of_seed = [p for p in players if p.seed == seed]
                if not of_seed:
                    raise ValueError(f"no player has seed {seed}")
                runs.append(win_rate_matrix(of_seed, entry["judge"], **entry.get("overrides", {})))
        else:
            runs = grid(entry["kind"], entry["methods"], entry.get("datasets", [None]), entry["seeds"],
                        entry["steps"], envs=entry.get("envs", [None]),
                        **{k: entry[k] for k in ("eval_every", "eval_episodes", "overrides") if k in entry})
    except KeyError as err:
        raise ValueError(f"{where}: a {entry['kind']} entry needs {err.args[0]}") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None
    if "group" in entry:
        groups.setdefault(entry["group"], []).extend(runs)
    return runs


def suite(name: str) -> list[RunSpec]:
    """The runs of a named suite (``presets/suites/NAME.yaml``), each tagged with the suite's name."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}: use one of {', '.join(SUITES)} (or `custom` with --methods)")
    data = _read_yaml(SUITES[name])
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{SUITES[name]} lists no runs: it needs a `runs:` list")
    groups: dict[str, list[RunSpec]] = {}
    specs = [spec for i, entry in enumerate(data["runs"])
             for spec in _entry_runs(entry, groups, f"{SUITES[name].name}, run entry {i + 1}")]
    return [replace(spec, suite=name) for spec in specs]


def resolve_method(method: str) -> tuple[str, str]:
    """(kind, name) of a method of a custom grid: a bench label's kind, else its registry family."""
    from hybridrl import registry

    label_kinds = labels()
    if method in label_kinds:
        return label_kinds[method], method
    try:
        spec = registry.get(method, families=GRID_FAMILIES)
    except KeyError:
        names = list(dict.fromkeys(s.name for s in registry.load_all() if s.family in GRID_FAMILIES))
        extra = sorted(set(label_kinds) - set(names))  # labels that are no method (dpo's label is DPO)
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(names)}, or a bench label "
                         f"({', '.join(extra)})") from None
    return spec.family, spec.name


def select(specs: Sequence[RunSpec], *, methods: Sequence[str] | None = None,
           datasets: Sequence[str] | None = None, envs: Sequence[str] | None = None,
           seeds: Sequence[int] | None = None, steps: int | None = None) -> list[RunSpec]:
    """Narrow a suite to some methods, datasets, envs or seeds, or change its budget.

    ``datasets`` also matches the env of a run without a dataset (an online run's task)."""
    chosen = [s for s in specs if (not methods or s.method in methods)
              and (not datasets or s.dataset in datasets or (s.dataset is None and s.env in datasets))
              and (not envs or s.env in envs) and (seeds is None or s.seed in seeds)]
    if not chosen:
        raise ValueError("no run of the suite matches --methods/--datasets/--envs/--seeds: "
                         "check the names with `hybridrl bench SUITE --list`")
    return [replace(s, steps=steps) for s in chosen] if steps is not None else chosen


def custom(methods: Sequence[str], datasets: Sequence[str], seeds: Sequence[int], steps: int,
           eval_every: int = 0, eval_episodes: int = 10, envs: Sequence[str] | None = None) -> list[RunSpec]:
    """A grid from the command line: methods x datasets x envs x seeds, each method's kind from the
    registry (or its bench label). An online method given datasets and envs trains hybrid."""
    if not methods or not (datasets or envs):
        raise ValueError("a custom grid needs --methods and --datasets or --envs (tasks for online methods)")
    resolved = [resolve_method(m) for m in methods]
    return [spec for kind, name in resolved
            for spec in grid(kind, [name], datasets or [None], seeds, steps, envs=envs or [None],
                             eval_every=eval_every, eval_episodes=eval_episodes)]
