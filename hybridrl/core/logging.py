"""Metrics logging: one JSON object per line, TensorBoard and Weights & Biases when asked and installed."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hybridrl.core.checkpoint import atomic_write_text


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class MetricsLogger:
    """Appends ``{step_key: ..., **metrics}`` lines to ``path`` (``step_key`` is "step" unless a loop
    counts something else, e.g. self-play's iterations).

    On resume, ``keep_lines`` keeps the first lines, the ones a checkpoint covers, and drops the rest
    (and any line torn by a kill), so a run that was killed and resumed has exactly the lines of an
    uninterrupted one. ``truncate_after`` does the same by step: it keeps the lines up to that step.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        tensorboard_dir: str | os.PathLike | None = None,
        truncate_after: int | None = None,
        keep_lines: int | None = None,
        step_key: str = "step",
        wandb_run: Any = None,
    ) -> None:
        self.path = Path(path)
        self._wandb = wandb_run
        self.step_key = step_key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        if (truncate_after is not None or keep_lines is not None) and self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    step = json.loads(line)[step_key]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by a kill
                if truncate_after is not None and step > truncate_after:
                    continue
                kept.append(line)
            if keep_lines is not None:
                kept = kept[:keep_lines]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
            self.rows = len(kept)
        elif self.path.exists():
            self.rows = sum(1 for _ in self.path.open())
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError("TensorBoard logging needs `pip install hybridrl[tensorboard]`") from err
            self._tb = SummaryWriter(str(tensorboard_dir))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {self.step_key: int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != self.step_key and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != self.step_key}, step=int(step))

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


WANDB_ID = "wandb_id"
"""The file in a run directory that keeps its W&B run id, so a resumed run continues the same W&B run."""


def start_wandb(out_dir: str | os.PathLike, config: dict[str, Any]) -> Any:
    """A W&B run for ``out_dir`` (project from ``WANDB_PROJECT``, as wandb reads it), resumed when the
    directory has one; its id lives in ``out_dir/wandb_id``."""
    try:
        import wandb
    except ImportError as err:
        raise RuntimeError("W&B reporting needs the wandb package: pip install wandb") from err
    out_dir = Path(out_dir)
    id_file = out_dir / WANDB_ID
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        import uuid

        run_id = uuid.uuid4().hex[:16]
        atomic_write_text(id_file, run_id + "\n")
    return wandb.init(id=run_id, resume="allow", name=out_dir.name, dir=str(out_dir), config=config)


_TORN = object()  # marks a line that is not JSON


def _metric_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """``(1-based line number, parsed value or _TORN)`` for every non-blank line of a metrics file."""
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError:
            yield number, _TORN


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a metrics file, skipping a last line torn by a kill."""
    return [row for _, row in _metric_lines(path) if row is not _TORN]


def read_metrics_checked(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[int]]:
    """Read a metrics file that may be damaged anywhere, not only in its last line.

    Returns the rows that parse as JSON objects, and the 1-based numbers of the non-blank lines that
    do not (torn lines, or JSON that is not an object), so a reader can say which lines it skipped.
    Raises ``OSError`` or ``UnicodeDecodeError`` when the file cannot be read.
    """
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    for number, row in _metric_lines(path):
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(number)
    return rows, bad
