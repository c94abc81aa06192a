"""Reading run directories: one :class:`RunRecord` per directory, sorted into finished, partial or corrupted.

Each run directory written by ``hybridrl bench`` holds ``spec.json`` (written first),
``environment.json``, ``metrics.jsonl`` and ``scores.json`` (written last, atomically: its valid
presence means the run finished):

- finished: ``spec.json`` and ``scores.json`` parse and carry the keys their kind needs;
- partial: ``spec.json`` is valid and ``scores.json`` is absent (still running, or died);
- corrupted: ``spec.json`` or ``scores.json`` is unreadable, not JSON or lacks keys, or a line of
  ``metrics.jsonl`` is not JSON. A run whose only fault is such a line keeps its scores and its
  other metric lines in the tables and plots; the report says so.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hybridrl.bench.rundir import ENVIRONMENT, SCORES, SPEC
from hybridrl.bench.suites import KINDS
from hybridrl.core.logging import read_metrics_checked
from hybridrl.core.session import METRICS

# Files that only a run directory has: a directory with none of them (e.g. report/) is not a run.
RUN_FILES = (SPEC, SCORES, METRICS, ENVIRONMENT)

RL_KINDS = ("offline", "online", "hybrid")
MODEL_KINDS = ("preference", "selfplay")
"""Kinds whose run trains a language model and scores it against the task's SFT model."""
RATE_KEYS = ("updates_per_s", "tokens_per_s")

Status = Literal["finished", "partial", "corrupted"]


@dataclass
class RunRecord:
    """One run directory as read from disk.

    ``scores`` is set only when ``scores.json`` is valid; ``metrics`` holds every line of
    ``metrics.jsonl`` that parsed. ``reasons`` is empty for a finished run.
    """

    run_id: str
    path: Path
    status: Status
    reasons: list[str] = field(default_factory=list)
    spec: dict[str, Any] | None = None
    scores: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """The reasons joined into one line ("" for a finished run)."""
        return "; ".join(self.reasons)

    @property
    def last_step(self) -> int | None:
        """The largest integer ``step`` in the metrics, or None when there is none."""
        steps = [row["step"] for row in self.metrics if is_int(row.get("step"))]
        return max(steps) if steps else None

    @property
    def usable(self) -> bool:
        """Whether the run's scores enter the tables (finished, or corrupted only in its metrics)."""
        return self.scores is not None and self.spec is not None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (null, a string such as "nan", inf, anything else)."""
    if is_number(value) and math.isfinite(value):
        return float(value)
    return None


def read_json(path: Path) -> tuple[Any, str | None]:
    """Returns ``(object, None)``, or ``(None, reason)`` when the file is unreadable or not JSON."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{path.name} is unreadable ({type(err).__name__})"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as err:
        return None, f"{path.name} is not valid JSON (line {err.lineno})"


_SPEC_TYPES: dict[str, Callable[[Any], bool]] = {
    "run_id": lambda v: isinstance(v, str),
    "suite": lambda v: isinstance(v, str),
    "kind": lambda v: v in KINDS,
    "method": lambda v: isinstance(v, str) and v != "",
    "dataset": lambda v: isinstance(v, str) and v != "",
    "seed": is_int,
    "steps": is_int,
    "overrides": lambda v: isinstance(v, dict),
}

# The keys every scores.json carries, then the ones its kind adds.
_SCORE_KEYS = ("kind", "method", "dataset", "seed", "metric", "score", "wall_s")
_KIND_SCORE_KEYS: dict[str, tuple[str, ...]] = {
    "offline": ("return_mean", "return_std", "normalized_score", "normalized_std"),
    "online": ("return_mean", "return_std", "normalized_score", "normalized_std"),
    "hybrid": ("return_mean", "return_std", "normalized_score", "normalized_std"),
    "games": ("gap_curves", "final_gap"),
    "throughput": ("device",),
    "winrate": ("win_rate_matrix",),
}


def _check_spec(spec: Any) -> str | None:
    """Returns why ``spec`` is not a valid spec.json, or None when it is."""
    if not isinstance(spec, dict):
        return "spec.json is not a JSON object"
    missing = [key for key in _SPEC_TYPES if key not in spec]
    if missing:
        return f"spec.json lacks {', '.join(missing)}"
    bad = [key for key, ok in _SPEC_TYPES.items() if not ok(spec[key])]
    if bad:
        return f"spec.json has invalid {', '.join(bad)}"
    return None


def _is_matrix(value: Any, n: int) -> bool:
    return (isinstance(value, list) and len(value) == n
            and all(isinstance(row, list) and len(row) == n and all(map(is_number, row)) for row in value))


def _check_win_rate_matrix(matrix: Any) -> str | None:
    if not isinstance(matrix, dict):
        return "win_rate_matrix is not an object"
    players = matrix.get("players")
    if not (isinstance(players, list) and players and all(isinstance(p, str) for p in players)):
        return "win_rate_matrix.players is not a list of names"
    for key in ("win_rate", "ci_low", "ci_high", "num_comparisons"):
        # win_rate is required; the others are optional but must match when present.
        if (key == "win_rate" or key in matrix) and not _is_matrix(matrix.get(key), len(players)):
            return f"win_rate_matrix.{key} is not a {len(players)}x{len(players)} matrix"
    return None


def _check_gap_curves(curves: Any, final_gap: Any) -> str | None:
    if not (isinstance(curves, dict) and curves):
        return "gap_curves is not a non-empty object"
    for method, curve in curves.items():
        if not (isinstance(curve, dict) and isinstance(curve.get("iterations"), list)):
            return f"gap_curves.{method} has no iterations"
        length = len(curve["iterations"])
        for key in ("iterations", "median", "q25", "q75", "queries"):
            values = curve.get(key)
            if (key in ("iterations", "median") or key in curve) and not (
                    isinstance(values, list) and len(values) == length and all(map(is_number, values))):
                return f"gap_curves.{method}.{key} is not a list of {length} numbers"
    if not (isinstance(final_gap, dict) and all(is_number(v) for v in final_gap.values())):
        return "final_gap is not an object of numbers"
    return None


def _check_scores(scores: Any, spec: dict[str, Any] | None) -> str | None:
    """Returns why ``scores`` is not a valid scores.json for ``spec``, or None when it is."""
    if not isinstance(scores, dict):
        return "scores.json is not a JSON object"
    kind = scores.get("kind")
    required = [*_SCORE_KEYS, *_KIND_SCORE_KEYS.get(kind, ())] if isinstance(kind, str) else [*_SCORE_KEYS]
    missing = [key for key in required if key not in scores]
    if missing:
        return f"scores.json lacks {', '.join(missing)}"
    if kind not in KINDS:
        return f"scores.json has unknown kind {kind!r}"
    if not (scores["score"] is None or is_number(scores["score"])):
        return "scores.json score is neither a number nor null"
    if kind in RL_KINDS:
        if not is_number(scores["return_mean"]):
            return "scores.json return_mean is not a number"
        if not (scores["normalized_score"] is None or is_number(scores["normalized_score"])):
            return "scores.json normalized_score is neither a number nor null"
    elif kind == "games":
        return _check_gap_curves(scores["gap_curves"], scores["final_gap"])
    elif kind == "throughput" and not any(is_number(scores.get(key)) for key in RATE_KEYS):
        return f"scores.json has neither {' nor '.join(RATE_KEYS)}"
    elif kind in ("preference", "winrate") and "win_rate_matrix" in scores:
        return _check_win_rate_matrix(scores["win_rate_matrix"])
    if spec is not None:
        differ = [key for key in ("kind", "method", "dataset", "seed") if scores[key] != spec[key]]
        if differ:
            return f"scores.json and spec.json disagree on {', '.join(differ)}"
    return None


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The metric rows that parse, and why the file is corrupted (None when every line parses)."""
    try:
        rows, bad = read_metrics_checked(path)
    except (OSError, UnicodeDecodeError):
        return [], "metrics.jsonl is unreadable"
    if not bad:
        return rows, None
    shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
    return rows, f"metrics.jsonl line {shown} is not JSON (other lines used)"


def load_run(path: str | os.PathLike) -> RunRecord | None:
    """Read one run directory; returns None when ``path`` holds none of a run's files."""
    path = Path(path)
    if not any((path / name).exists() for name in RUN_FILES):
        return None
    record = RunRecord(run_id=path.name, path=path, status="finished")
    if (path / SPEC).exists():
        spec, error = read_json(path / SPEC)
        error = error or _check_spec(spec)
        if error:
            record.reasons.append(error)
        else:
            record.spec = spec
    else:
        record.reasons.append("spec.json is missing")

    if (path / SCORES).exists():
        scores, error = read_json(path / SCORES)
        error = error or _check_scores(scores, record.spec)
        if error:
            record.reasons.append(error)
        elif record.spec is not None:
            record.scores = scores
    elif record.spec is not None:
        record.status = "partial"

    if (path / METRICS).exists():
        record.metrics, error = _read_metrics(path / METRICS)
        if error:
            record.reasons.append(error)

    if record.status == "partial":
        last = record.last_step
        total = record.spec["steps"] if record.spec else None
        progress = f"last logged step {last} of {total}" if last is not None else "no metrics logged"
        record.reasons.insert(0, f"no scores.json ({progress})")
        if len(record.reasons) > 1:
            record.status = "corrupted"
    elif record.reasons:
        record.status = "corrupted"
        if record.usable:
            record.reasons.append("its scores are used")
    return record


def load_runs(runs_dir: str | os.PathLike, *, skip: Sequence[Path] = ()) -> list[RunRecord]:
    """Every run directory directly under ``runs_dir``, sorted by name; ``skip`` and hidden ones left out."""
    runs_dir = Path(runs_dir)
    skipped = {p.resolve() for p in skip}
    records = []
    for path in sorted(runs_dir.iterdir()):
        if not path.is_dir() or path.name.startswith(".") or path.resolve() in skipped:
            continue
        record = load_run(path)
        if record is not None:
            records.append(record)
    return records
