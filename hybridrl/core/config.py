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
    """Gradient updates (offline) or environment steps (online, hybrid)."""
    seed: int = 0
    """Seeds the networks, the batch sampler, exploration and the training env's episodes."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    eval_every: int = 5000
    """Evaluate every this many steps (0: only at the end)."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    log_every: int = 1000
    """Steps between metric lines."""
    checkpoint_every: int = 10_000
    """Steps between checkpoints (online and hybrid runs save at the first episode end after)."""
    learning_starts: int = 5000
    """Online and hybrid: environment steps of uniform-random actions before the first update."""
    buffer_size: int = 1_000_000
    """Online and hybrid: capacity of the replay ring (capped at ``steps``)."""
    offline_fraction: float | None = None
    """Hybrid: share of each batch from the dataset (None: the method's data plan; 0.5 for an online
    method given a dataset, i.e. symmetric sampling)."""
    updates_per_step: int | None = None
    """Online and hybrid: updates per environment step (None: the method's data plan)."""
    tensorboard: bool = False
    """Also write TensorBoard events (needs the tensorboard package)."""
    progress: bool = True
    """Show a progress bar."""
    threads: int | None = None
    """torch's intra-op CPU threads for the run (None: torch's default, one per core). One thread is
    often faster for small networks, and much faster when other processes share the cores."""

    def __post_init__(self) -> None:
        for name in ("steps", "eval_episodes", "log_every", "checkpoint_every", "buffer_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_every", "learning_starts"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.updates_per_step is not None and self.updates_per_step < 1:
            raise ValueError(f"updates-per-step must be at least 1, got {self.updates_per_step}")
        if self.offline_fraction is not None and not 0.0 <= self.offline_fraction <= 1.0:
            raise ValueError(f"offline-fraction must be in [0, 1], got {self.offline_fraction}")


def _option_name(name: str) -> str:
    return name.replace("_", "-")


def check_fields(config: Any) -> None:
    """Check a method config's hyperparameters by the fields' names; raise one ValueError line.

    Conventions every method shares, so a config's ``__post_init__`` calls this once instead of
    repeating the checks: ``lr`` and ``*_lr`` above 0; ``gamma`` and ``tau`` in [0, 1];
    ``batch_size`` at least 1; every width of ``hidden`` (and ``*_hidden``) at least 1. A field set
    to None (a default computed later) is not checked. The message names the option a CLI user
    sets (``--actor-lr``, or ``--set actor_lr=...``).
    """
    for f in dataclasses.fields(config):
        name, value = f.name, getattr(config, f.name)
        if value is None or isinstance(value, bool):
            continue
        if name == "lr" or name.endswith("_lr"):
            if not value > 0:  # also refuses NaN
                raise ValueError(f"{_option_name(name)} must be above 0, got {value}")
        elif name in ("gamma", "tau"):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        elif name == "batch_size":
            if value < 1:
                raise ValueError(f"batch-size must be at least 1, got {value}")
        elif name == "hidden" or name.endswith("_hidden"):
            widths = tuple(value) if isinstance(value, (tuple, list)) else (value,)
            if any(w < 1 for w in widths):
                shown = ",".join(map(str, widths))
                raise ValueError(f"{_option_name(name)} {shown}: every layer width must be at least 1 "
                                 "(e.g. 256,256)")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (its attribute docstrings), read from the source.

    These are the texts users read in ``--help`` and ``hybridrl algos NAME``; a field without one
    gets an empty string.
    """
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, [*body[1:], None], strict=True):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = " ".join(following.value.value.split())
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


def describe_fields(config: Any) -> list[tuple[str, str, str]]:
    """(name, default, docstring) of every field of a config instance, for help texts."""
    docs = field_docs(type(config))
    rows = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        rows.append((f.name, shown, docs[f.name]))
    return rows


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


def parse_assignments(items: list[str] | None, option: str = "--set") -> dict[str, str]:
    """``["key=value", ...]`` from the command line as ``{key: value}`` (text; dashes in keys become
    underscores). The values are converted later, by the config they override."""
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{option} takes KEY=VALUE (e.g. {option} batch_size=512), got {item!r}")
        pairs[key.strip().replace("-", "_")] = value.strip()
    return pairs


def with_overrides(config: T, overrides: list[str] | dict[str, Any]) -> T:
    """Return a copy of ``config`` with overrides applied and type-checked: the one override parser.

    ``overrides`` is a dict or a list of ``key=value`` texts; text values are converted to the
    field's type (``false`` is False, ``256,256`` a tuple), unknown keys are refused with the list
    of valid ones.
    """
    if isinstance(overrides, list):
        overrides = parse_assignments(overrides)
    values = to_dict(config)
    values.update(overrides)
    return from_dict(type(config), values)
