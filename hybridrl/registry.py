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
    tiny: Mapping[str, Any] = field(default_factory=dict)
    """Overrides of ``config`` that make a tiny, fast instance (smoke and isolation tests)."""
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

    def tiny_config(self) -> Any:
        from hybridrl.core.config import with_overrides

        return with_overrides(self.config(), dict(self.tiny))


METHODS: dict[str, MethodSpec] = {}

# Explicit list, no package scanning: a new method adds its module here.
_MODULES = (
    "hybridrl.offline.bc",
    "hybridrl.offline.cql",
    "hybridrl.online.sac",
)


def register(spec: MethodSpec) -> MethodSpec:
    if spec.family not in FAMILIES:
        raise ValueError(f"{spec.name}: unknown family {spec.family!r}; families: {', '.join(FAMILIES)}")
    if spec.family in RL_FAMILIES and spec.build is None:
        raise ValueError(f"{spec.name}: an {spec.family} method needs build(config, ctx)")
    if spec.name in METHODS and METHODS[spec.name] is not spec:
        raise ValueError(f"method {spec.name!r} is registered twice")
    METHODS[spec.name] = spec
    return spec


def load_all() -> dict[str, MethodSpec]:
    for module in _MODULES:
        importlib.import_module(module)
    return METHODS


def of_family(*families: Family) -> dict[str, MethodSpec]:
    """The registered methods of the given families, by name."""
    return {name: spec for name, spec in load_all().items() if spec.family in families}


def get(name: str, *, families: tuple[Family, ...] | None = None) -> MethodSpec:
    """The method called ``name`` (dashes and case ignored), optionally of one of ``families``."""
    import difflib

    methods = load_all() if families is None else of_family(*families)
    key = name.lower().replace("-", "_")
    if key not in methods:
        close = difflib.get_close_matches(key, list(methods), n=5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise KeyError(f"unknown method {name!r}: {hint}see `hybridrl algos` for the list")
    return methods[key]
