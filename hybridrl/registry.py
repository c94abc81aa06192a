"""One registry for every family: name -> (family, config class, builder, tiny preset, data plan).

It drives the CLI (``hybridrl algos``, ``hybridrl train NAME``), the registry-wide tests and the
benchmarks. Every method file ends with one ``register(...)`` call; ``load_all`` imports the method
files listed in ``_MODULES`` (no package scanning: a new method adds its module there). Importing
this module imports no method, and no method module imports transformers or mujoco at import time.

Families:
- ``offline``, ``online``, ``hybrid``: RL methods built by ``build(config, ctx)`` and trained by
  the one RL loop (``hybridrl.runners``) according to their data plan;
- ``preference`` (pairwise losses on a fixed dataset), ``selfplay`` (Nash learning by self-play on a
  language model) and ``games`` (the same methods on exact tabular games): their entries carry
  the config and the summary; their own trainers build them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from hybridrl.core.buffers import Batch
from hybridrl.core.context import BuildContext
from hybridrl.core.plan import DataPlan

Family = Literal["offline", "online", "hybrid", "preference", "selfplay", "games"]
FAMILIES: tuple[Family, ...] = ("offline", "online", "hybrid", "preference", "selfplay", "games")
RL_FAMILIES: tuple[Family, ...] = ("offline", "online", "hybrid")


class Algorithm(Protocol):
    """What the RL loop and the registry-wide tests need from a method."""

    config: Any

    def param_groups(self) -> dict[str, list[torch.Tensor]]:
        """The trainable parameters, by the name of the loss term that trains them."""

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Named loss terms (each trains the parameter group of the same name) and detached metrics.

        Computed from the parameters as they are; it changes no parameter.
        """

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step built on ``losses``; returns detached scalar metrics (kept on device)."""

    def act(self, obs: torch.Tensor, *, deterministic: bool = True) -> torch.Tensor:
        """Actions in [-1, 1] for a (B, obs_dim) batch of observations."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class MethodSpec:
    """One registered method."""

    name: str
    family: Family
    config: type
    """The frozen dataclass of its hyperparameters (the paper's defaults, a docstring per field)."""
    summary: str
    """One line: what the method is and its paper."""
    build: Callable[[Any, BuildContext], Algorithm] | None = None
    """RL families: ``build(config, ctx)``."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """The method's own settings of a config class it shares (IPO is the pairwise config with
    another ``loss_type``); empty when the class's defaults are the method's."""
    tiny: Mapping[str, Any] = field(default_factory=dict)
    """Overrides of the defaults that make a tiny, fast instance (smoke and isolation tests)."""
    plan: Callable[[Any], DataPlan] | None = None
    """RL families: the data plan for a config (default: the family's: offline, online or hybrid)."""
    loop: Callable[..., Any] | None = None
    """Methods whose plan is ``custom``: ``loop(algo, resources)`` trains on the session the RL runner
    opened (see ``runners.LoopResources``) and returns the final evaluation."""

    def data_plan(self, config: Any) -> DataPlan:
        if self.plan is not None:
            return self.plan(config)
        if self.family not in RL_FAMILIES:
            raise ValueError(f"{self.name} is a {self.family} method: it has no RL data plan")
        return DataPlan(self.family)

    def default_config(self) -> Any:
        """The method's config with its defaults (the paper's)."""
        from hybridrl.core.config import with_overrides

        return with_overrides(self.config(), dict(self.defaults))

    def tiny_config(self) -> Any:
        from hybridrl.core.config import with_overrides

        return with_overrides(self.default_config(), dict(self.tiny))


METHODS: dict[tuple[Family, str], MethodSpec] = {}
"""(family, name) -> spec: a self-play method and its tabular-game form share a name."""

# Explicit list, no package scanning: a new method adds its module here.
_MODULES = (
    "hybridrl.offline.a2pr",
    "hybridrl.offline.bc",
    "hybridrl.offline.cql",
    "hybridrl.offline.iql",
    "hybridrl.offline.prdc",
    "hybridrl.offline.td3bc",
    "hybridrl.online.sac",
    "hybridrl.preference.losses",
    "hybridrl.preference.selfplay_methods",
    "hybridrl.preference.games_solvers",
)


def register(spec: MethodSpec) -> MethodSpec:
    if spec.family not in FAMILIES:
        raise ValueError(f"{spec.name}: unknown family {spec.family!r}; families: {', '.join(FAMILIES)}")
    if spec.family in RL_FAMILIES and spec.build is None:
        raise ValueError(f"{spec.name}: an {spec.family} method needs build(config, ctx)")
    key = (spec.family, spec.name)
    if key in METHODS and METHODS[key] is not spec:
        raise ValueError(f"{spec.family} method {spec.name!r} is registered twice")
    METHODS[key] = spec
    return spec


def load_all() -> list[MethodSpec]:
    """Every registered method, family by family in the order of ``FAMILIES``."""
    for module in _MODULES:
        importlib.import_module(module)
    return sorted(METHODS.values(), key=lambda spec: (FAMILIES.index(spec.family), spec.name))


def of_family(*families: Family) -> dict[str, MethodSpec]:
    """The registered methods of the given families, by name (names are unique within a family)."""
    return {spec.name: spec for spec in load_all() if spec.family in families}


def find(name: str) -> list[MethodSpec]:
    """Every method called ``name`` (dashes and case ignored), of any family."""
    key = name.lower().replace("-", "_")
    return [spec for spec in load_all() if spec.name == key]


def get(name: str, *, families: tuple[Family, ...] | None = None) -> MethodSpec:
    """The method called ``name`` (dashes and case ignored), optionally of one of ``families``.

    A name that two families share (a self-play method and its tabular form) needs ``families``.
    """
    import difflib

    matches = [spec for spec in find(name) if families is None or spec.family in families]
    if len(matches) == 1:
        return matches[0]
    if matches:
        kinds = " and ".join(spec.family for spec in matches)
        raise KeyError(f"{name!r} names a {kinds} method: say which family")
    names = sorted({spec.name for spec in load_all() if families is None or spec.family in families})
    close = difflib.get_close_matches(name.lower().replace("-", "_"), names, n=5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise KeyError(f"unknown method {name!r}: {hint}see `hybridrl algos` for the list")
