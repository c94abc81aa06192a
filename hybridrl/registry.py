"""Algorithm registry: name -> (family, config class, builder).

It drives the CLI, the smoke tests (parametrized over every entry) and the benchmarks. Each method
file ends with one ``register(...)`` call; ``load_all`` imports the method files explicitly.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from hybridrl.core.buffers import Batch

Family = Literal["offline", "online", "hybrid"]


class Algorithm(Protocol):
    """What the runners need from a method."""

    config: Any

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step; returns detached scalar metrics (kept on device until logged)."""

    def act(self, obs: torch.Tensor, *, deterministic: bool = True) -> torch.Tensor:
        """Actions in [-1, 1] for a (B, obs_dim) batch of observations."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class AlgoSpec:
    name: str
    family: Family
    config: type
    build: Callable[..., Algorithm]
    """build(obs_dim, act_dim, config, device) -> Algorithm"""
    summary: str


ALGORITHMS: dict[str, AlgoSpec] = {}

# Explicit list, no package scanning: a new method adds its module here.
_MODULES = (
    "hybridrl.offline.bc",
    "hybridrl.offline.cql",
    "hybridrl.online.sac",
)


def register(spec: AlgoSpec) -> AlgoSpec:
    if spec.name in ALGORITHMS and ALGORITHMS[spec.name] is not spec:
        raise ValueError(f"algorithm {spec.name!r} is registered twice")
    ALGORITHMS[spec.name] = spec
    return spec


def load_all() -> dict[str, AlgoSpec]:
    for module in _MODULES:
        importlib.import_module(module)
    return ALGORITHMS


def get(name: str) -> AlgoSpec:
    load_all()
    key = name.lower().replace("-", "_")
    if key not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {name!r}; available: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[key]
