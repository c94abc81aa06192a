"""Typed configs: the run settings shared by every method, and helpers to dump, load and override.

A method's hyperparameters live in its own frozen ``Config`` dataclass (in its file, with the
paper's defaults); everything about *running* it (steps, seed, device, cadence) lives here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """How a training run is driven; the same for every RL method."""

    steps: int = 1_000_000
    """Gradient updates (offline) or environment steps (online)."""
    seed: int = 0
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    eval_every: int = 5000
    """Evaluate every this many steps (0: only at the end)."""
    eval_episodes: int = 10
    log_every: int = 1000
    checkpoint_every: int = 10_000
    tensorboard: bool = False
    progress: bool = True
    threads: int | None = None
    """torch's intra-op CPU threads for the run (None: torch's default, one per core). One thread is
    often faster for small networks, and much faster when other processes share the cores."""


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as plain JSON-ready values (tuples become lists)."""
    return {f.name: (list(v) if isinstance(v := getattr(config, f.name), tuple) else v)
            for f in dataclasses.fields(config)}


def _convert(value: Any, annotation: Any, name: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() == "none")
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, name)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise ValueError(f"{name}: cannot read {value!r} ({'; '.join(errors)})")
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        item_type = args[0] if args else str
        return tuple(_convert(v, item_type, name) for v in items if v != "")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if annotation in (int, float, str):
        try:
            return annotation(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be {annotation.__name__}, got {value!r}") from err
    return value


def from_dict(cls: type[T], values: dict[str, Any], *, strict: bool = True) -> T:
    """Build ``cls`` from plain values, converting each to its field's type.

    Unknown keys raise (``strict``) with the list of valid ones, so a typo never passes silently.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown and strict:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; valid: {sorted(names)}")
    return cls(**{k: _convert(v, hints[k], k) for k, v in values.items() if k in names})


def with_overrides(config: T, overrides: list[str] | dict[str, Any]) -> T:
    """Return a copy of ``config`` with ``key=value`` overrides applied and type-checked."""
    if isinstance(overrides, list):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. cql_alpha=5.0)")
            key, value = item.split("=", 1)
            pairs[key.strip().replace("-", "_")] = value.strip()
        overrides = pairs
    values = to_dict(config)
    values.update(overrides)
    return from_dict(type(config), values)
