"""Atomic checkpoint and result writes: a crash mid-write never leaves a torn file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write`` on a temporary binary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename over it."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_save`, with a one-line error when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: check the run directory")
    try:
        # Checkpoints hold RNG states and numpy arrays next to tensors.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(
            f"checkpoint {path} is unreadable ({type(err).__name__}): delete it to start over"
        ) from err


def training_state(parts: Mapping[str, torch.nn.Module | torch.Tensor], optimizers: Mapping[str, Any],
                   steps: int) -> dict[str, Any]:
    """What an RL method saves: each named module's ``state_dict``, a copy of each named tensor
    (learned scalars such as SAC's log alpha), each optimizer's state under ``NAME_optim``, and its
    update count under ``steps``. A method lists its parts once and uses them to save and to load."""
    from hybridrl.core.optim import optimizer_states

    saved = {name: part.detach().clone() if isinstance(part, torch.Tensor) else part.state_dict()
             for name, part in parts.items()}
    return {**saved, **optimizer_states(dict(optimizers)), "steps": steps}


def load_training_state(state: Mapping[str, Any], parts: Mapping[str, torch.nn.Module | torch.Tensor],
                        optimizers: Mapping[str, Any]) -> int:
    """Load what ``training_state`` saved into the same parts (tensors in place) and optimizers;
    returns the update count."""
    from hybridrl.core.optim import load_optimizer_states

    for name, part in parts.items():
        if isinstance(part, torch.Tensor):
            with torch.no_grad():
                part.copy_(state[name])
        else:
            part.load_state_dict(state[name])
    load_optimizer_states(dict(optimizers), state)
    return int(state["steps"])
