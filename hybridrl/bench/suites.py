"""Benchmark suites as data: a suite is a list of runs, so adding a method is one line.

A run is a ``RunSpec``: what to run (kind and method), on what (a Minari dataset id, a task, a
preference task, a game label), with which seed, for how many steps, with which hyperparameter
overrides. ``hybridrl bench SUITE`` runs a suite's specs as a resumable grid (see ``runner``).

Step budgets: ``quick`` fits 15 minutes on two CPU cores, which is too short for CQL or SAC to reach
their published scores; it checks every method end to end on real data and prints honest numbers.
The other suites use the budgets of the papers (CORL's 1M updates for offline, 1M environment steps
for SAC) and are meant for a GPU or a cluster.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

KINDS = ("offline", "online", "preference", "selfplay", "games", "throughput", "winrate")
LATE_KINDS = ("winrate",)
"""Kinds that read other runs of the grid (their models), so they run after all the others."""

BUNDLED_PREF_TASK = "bundled:pref-task"
"""The tiny SFT model, pairs and held-out prompts that ship with the package (see ``bundled``)."""
QUICK_DATASET = "hybridrl/hopper/medium-quick-v0"
"""20k transitions of the factory's Hopper medium policy, shipped with the package."""

FACTORY_TASKS = ("hopper", "halfcheetah", "walker2d")
D4RL_QUALITIES = ("medium", "medium-replay", "expert", "medium-expert")
PREFERENCE_METHODS = ("dpo", "fdpo-js", "fdpo-fkl", "ipo")
"""Pairwise methods on the task's own labels (``dpo-majority`` also exists: DPO on relabelled pairs)."""
SELFPLAY_METHODS = ("inpo", "sppo", "nash_mp", "egpo")
GAME_METHODS = ("nash_mp", "egpo", "nash_md", "inpo", "online_ipo", "sppo")


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid; its ``run_id`` names its directory."""

    kind: str
    """offline, online, preference (pairwise), selfplay, games, throughput or winrate (a matrix over
    other runs' models)."""
    method: str
    """Registry name (bc, cql, sac), preference method (dpo, fdpo-js, ipo...) or games method set."""
    dataset: str
    """Minari id (offline), task (online), preference task (dir or bundled:...), game label, or device."""
    seed: int = 0
    steps: int = 1_000_000
    """Gradient updates (offline, preference), environment steps (online), iterations (selfplay, games)."""
    eval_every: int = 0
    """Steps between evaluations for learning curves (0: only at the end)."""
    eval_episodes: int = 10
    overrides: dict[str, Any] = field(default_factory=dict)
    """Hyperparameters that differ from the method's defaults (the paper's)."""
    suite: str = "custom"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown run kind {self.kind!r}: use one of {', '.join(KINDS)}")

    @property
    def run_id(self) -> str:
        target = re.sub(r"[^A-Za-z0-9.-]+", "_", self.dataset).strip("_")
        return f"{self.kind}-{self.method}-{target}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls(**{k: v for k, v in data.items() if k != "run_id"})


def grid(kind: str, methods: Iterable[str], datasets: Iterable[str], seeds: Iterable[int], steps: int,
         **settings: Any) -> list[RunSpec]:
    """The product methods x datasets x seeds, all with the same settings."""
    return [RunSpec(kind, m, d, seed=s, steps=steps, **settings)
            for m, d, s in itertools.product(methods, datasets, seeds)]


def win_rate_matrix(players: Sequence[RunSpec], judge: str = "weighted", **settings: Any) -> RunSpec:
    """A run that plays the models of ``players`` (and the SFT model) against each other."""
    task = players[0].dataset
    return RunSpec("winrate", f"matrix-{judge}", task, seed=players[0].seed, steps=0,
                   overrides={"players": [p.run_id for p in players], "judge": judge, **settings})


def nash_versus_dpo(seeds: Sequence[int], iterations: int) -> list[RunSpec]:
    """Self-play methods and DPO (on pairs relabelled by the same intransitive judge), same optimizer
    steps, and their win-rate matrix under that judge, per seed."""
    runs = [*grid("selfplay", SELFPLAY_METHODS, [BUNDLED_PREF_TASK], seeds, steps=iterations),
            # DPO with as many optimizer steps of 64 pairs as a self-play run (execute.SELFPLAY_RUN:
            # 30 steps of 64 pairs per iteration)
            *grid("preference", ["dpo-majority"], [BUNDLED_PREF_TASK], seeds, steps=iterations * 30,
                  overrides={"batch_size": 64})]
    return [*runs, *(win_rate_matrix([r for r in runs if r.seed == seed], "majority", eval_prompts=400,
                                     eval_samples=4) for seed in seeds)]


def _quick() -> list[RunSpec]:
    preference = grid("preference", PREFERENCE_METHODS, [BUNDLED_PREF_TASK], [0, 1], steps=150)
    # Longest runs first so that two workers finish together.
    return [
        *grid("offline", ["cql"], [QUICK_DATASET], [0, 1], steps=1000, eval_every=500),
        *grid("online", ["sac"], ["hopper"], [0], steps=15_000, eval_every=5000),
        *grid("offline", ["bc"], [QUICK_DATASET], [0, 1], steps=5000, eval_every=1000),
        *preference,
        *grid("games", ["nash"], ["games-n10-beta0.1"], [0], steps=1000),
        *grid("games", ["nash"], ["games-n10-beta0.1-samples100"], [0], steps=1000),
        win_rate_matrix([p for p in preference if p.seed == 0]),
        *nash_versus_dpo([0], iterations=10),
    ]


def _offline() -> list[RunSpec]:
    datasets = [f"hybridrl/{task}/{quality}-v0" for task in FACTORY_TASKS for quality in D4RL_QUALITIES]
    return grid("offline", ["bc", "cql"], datasets, [0, 1, 2], steps=1_000_000, eval_every=50_000)


def _online() -> list[RunSpec]:
    return grid("online", ["sac"], FACTORY_TASKS, [0, 1, 2], steps=1_000_000, eval_every=10_000)


def _preference() -> list[RunSpec]:
    runs = grid("preference", PREFERENCE_METHODS, [BUNDLED_PREF_TASK], [0, 1, 2], steps=300)
    return [*runs, *(win_rate_matrix([r for r in runs if r.seed == seed]) for seed in (0, 1, 2)),
            *nash_versus_dpo([0, 1, 2], iterations=10)]


def _nash_games() -> list[RunSpec]:
    return [*grid("games", ["nash"], ["games-n10-beta0.1"], [0, 1, 2], steps=3000),
            *grid("games", ["nash"], ["games-n10-beta0.1-samples100"], [0, 1, 2], steps=10_000)]


def _throughput() -> list[RunSpec]:
    return grid("throughput", ["bc", "cql", "sac", "dpo"], ["auto"], [0], steps=0)


SUITES = {
    "quick": _quick,
    "offline": _offline,
    "online": _online,
    "preference": _preference,
    "nash-games": _nash_games,
    "throughput": _throughput,
}


def suite(name: str) -> list[RunSpec]:
    """The runs of a named suite, each tagged with the suite's name."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}: use one of {', '.join(SUITES)} (or `custom` with --methods)")
    return [replace(spec, suite=name) for spec in SUITES[name]()]


def _kind_of(method: str) -> str:
    from hybridrl import registry

    if method in (*PREFERENCE_METHODS, "dpo-majority"):
        return "preference"
    if method in SELFPLAY_METHODS:
        return "selfplay"
    if method == "nash":
        return "games"
    algorithms = registry.of_family(*registry.RL_FAMILIES)
    if method not in algorithms:
        known = [*algorithms, *PREFERENCE_METHODS, "dpo-majority", *SELFPLAY_METHODS, "nash"]
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(known)}")
    spec = algorithms[method]
    if spec.family not in ("offline", "online"):
        raise ValueError(f"{method} is a {spec.family} method, which the runner cannot grid yet")
    return spec.family


def select(specs: Sequence[RunSpec], *, methods: Sequence[str] | None = None,
           datasets: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
           steps: int | None = None) -> list[RunSpec]:
    """Narrow a suite to some methods, datasets or seeds, or change its budget."""
    chosen = [s for s in specs if (not methods or s.method in methods) and (not datasets or s.dataset in datasets)
              and (seeds is None or s.seed in seeds)]
    if not chosen:
        raise ValueError("no run of the suite matches --methods/--datasets/--seeds: "
                         "check the names with `hybridrl bench SUITE --list`")
    return [replace(s, steps=steps) for s in chosen] if steps is not None else chosen


def custom(methods: Sequence[str], datasets: Sequence[str], seeds: Sequence[int], steps: int,
           eval_every: int = 0, eval_episodes: int = 10) -> list[RunSpec]:
    """A grid from the command line: each method's kind comes from the registry."""
    if not methods or not datasets:
        raise ValueError("a custom grid needs --methods and --datasets (tasks for online methods)")
    return [RunSpec(_kind_of(m), m, d, seed=s, steps=steps, eval_every=eval_every, eval_episodes=eval_episodes)
            for m, d, s in itertools.product(methods, datasets, seeds)]


def with_overrides(specs: Sequence[RunSpec], assignments: Sequence[str]) -> list[RunSpec]:
    """Add ``KEY=VALUE`` hyperparameters to every run; values stay text until the method's typed config
    parses them (as ``hybridrl train --set`` does)."""
    extra: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad --set {assignment!r}: use KEY=VALUE, e.g. --set batch_size=512")
        extra[key.strip()] = value.strip()
    return [replace(s, overrides={**s.overrides, **extra}) for s in specs]
