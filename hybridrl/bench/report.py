"""The benchmark report: reads a directory of run directories, writes tables, plots and one ``report.md``.

Each run directory written by ``hybridrl bench`` holds ``spec.json`` (written first),
``environment.json``, ``metrics.jsonl`` and ``scores.json`` (written last, atomically: its valid
presence means the run finished). :func:`build_report` sorts every run into one of three states:

- finished: ``spec.json`` and ``scores.json`` parse and carry the keys their kind needs;
- partial: ``spec.json`` is valid and ``scores.json`` is absent (still running, or died);
- corrupted: ``spec.json`` or ``scores.json`` is unreadable, not JSON or lacks keys, or a line of
  ``metrics.jsonl`` is not JSON. A run whose only fault is such a line keeps its scores and its
  other metric lines in the tables and plots; the report says so.

A bad run never stops the report: it is listed with its reason and the rest is built. Aggregates use
rliable (interquartile mean and probability of improvement with stratified bootstrap confidence
intervals); without rliable, or without matplotlib, the report says which section it skipped.
Every file is written atomically (temporary file beside it, then ``os.replace``), and two builds over
the same runs give byte-identical tables and ``report.md``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hybridrl.bench.runner import ENVIRONMENT, SCORES, SPEC
from hybridrl.bench.suites import KINDS
from hybridrl.core.checkpoint import atomic_write, atomic_write_text
from hybridrl.runners import METRICS

# Files that only a run directory has: a directory with none of them (e.g. report/) is not a run.
RUN_FILES = (SPEC, SCORES, METRICS, ENVIRONMENT)

RL_KINDS = ("offline", "online")
RATE_KEYS = ("updates_per_s", "tokens_per_s")

# The bootstrap is seeded so that a report built twice reads the same; 2000 resamples keep a report
# of a few dozen runs within seconds on a laptop (rliable's default of 50000 takes minutes).
BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
GAP_FLOOR = 1e-12  # duality gaps can be exactly 0, which a log axis cannot show

Status = Literal["finished", "partial", "corrupted"]


# --------------------------------------------------------------------------------------------------
# Reading runs


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
        steps = [row["step"] for row in self.metrics if _is_int(row.get("step"))]
        return max(steps) if steps else None

    @property
    def usable(self) -> bool:
        """Whether the run's scores enter the tables (finished, or corrupted only in its metrics)."""
        return self.scores is not None and self.spec is not None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (null, a string such as "nan", inf, anything else)."""
    if _is_number(value) and math.isfinite(value):
        return float(value)
    return None


def _read_json(path: Path) -> tuple[Any, str | None]:
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
    "seed": _is_int,
    "steps": _is_int,
    "overrides": lambda v: isinstance(v, dict),
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
            and all(isinstance(row, list) and len(row) == n and all(map(_is_number, row)) for row in value))


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
        for key in ("iterations", "median", "q25", "q75"):
            values = curve.get(key)
            if (key in ("iterations", "median") or key in curve) and not (
                    isinstance(values, list) and len(values) == length and all(map(_is_number, values))):
                return f"gap_curves.{method}.{key} is not a list of {length} numbers"
    if not (isinstance(final_gap, dict) and all(_is_number(v) for v in final_gap.values())):
        return "final_gap is not an object of numbers"
    return None


def _check_scores(scores: Any, spec: dict[str, Any] | None) -> str | None:
    """Returns why ``scores`` is not a valid scores.json for ``spec``, or None when it is."""
    if not isinstance(scores, dict):
        return "scores.json is not a JSON object"
    required = ["kind", "method", "dataset", "seed", "metric", "score", "wall_s"]
    kind = scores.get("kind")
    if kind in RL_KINDS:
        required += ["return_mean", "return_std", "normalized_score", "normalized_std"]
    elif kind == "games":
        required += ["gap_curves", "final_gap"]
    elif kind == "throughput":
        required += ["device"]
    elif kind == "winrate":
        required += ["win_rate_matrix"]
    missing = [key for key in required if key not in scores]
    if missing:
        return f"scores.json lacks {', '.join(missing)}"
    if kind not in KINDS:
        return f"scores.json has unknown kind {kind!r}"
    if not (scores["score"] is None or _is_number(scores["score"])):
        return "scores.json score is neither a number nor null"
    if kind in RL_KINDS:
        if not _is_number(scores["return_mean"]):
            return "scores.json return_mean is not a number"
        if not (scores["normalized_score"] is None or _is_number(scores["normalized_score"])):
            return "scores.json normalized_score is neither a number nor null"
    elif kind == "games":
        return _check_gap_curves(scores["gap_curves"], scores["final_gap"])
    elif kind == "throughput" and not any(_is_number(scores.get(key)) for key in RATE_KEYS):
        return f"scores.json has neither {' nor '.join(RATE_KEYS)}"
    elif kind in ("preference", "winrate") and "win_rate_matrix" in scores:
        return _check_win_rate_matrix(scores["win_rate_matrix"])
    if spec is not None:
        differ = [key for key in ("kind", "method", "dataset", "seed") if scores[key] != spec[key]]
        if differ:
            return f"scores.json and spec.json disagree on {', '.join(differ)}"
    return None


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Returns the rows that parse as JSON objects, and the (1-based) numbers of the lines that do not."""
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return rows, [0]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(number)
    return rows, bad


def load_run(path: str | os.PathLike) -> RunRecord | None:
    """Read one run directory; returns None when ``path`` holds none of a run's files."""
    path = Path(path)
    if not any((path / name).exists() for name in RUN_FILES):
        return None
    record = RunRecord(run_id=path.name, path=path, status="finished")
    if (path / SPEC).exists():
        spec, error = _read_json(path / SPEC)
        error = error or _check_spec(spec)
        if error:
            record.reasons.append(error)
        else:
            record.spec = spec
    else:
        record.reasons.append("spec.json is missing")

    if (path / SCORES).exists():
        scores, error = _read_json(path / SCORES)
        error = error or _check_scores(scores, record.spec)
        if error:
            record.reasons.append(error)
        elif record.spec is not None:
            record.scores = scores
    elif record.spec is not None:
        record.status = "partial"

    if (path / METRICS).exists():
        record.metrics, bad = _read_metrics(path / METRICS)
        if bad == [0]:
            record.reasons.append("metrics.jsonl is unreadable")
        elif bad:
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            record.reasons.append(f"metrics.jsonl line {shown} is not JSON (other lines used)")

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


# --------------------------------------------------------------------------------------------------
# Scores table


@dataclass(frozen=True)
class ScoreCell:
    """Mean and standard deviation over seeds of one method on one dataset.

    ``metric`` is "normalized_score", or "return" when the dataset has no reference scores.
    ``std`` is the population standard deviation (ddof=0), so one seed gives 0.
    """

    method: str
    dataset: str
    kind: str
    metric: str
    mean: float
    std: float
    seeds: tuple[int, ...]

    @property
    def n(self) -> int:
        """The number of runs averaged."""
        return len(self.seeds)


def _rl_runs(runs: Sequence[RunRecord]) -> list[RunRecord]:
    return [r for r in runs if r.usable and r.spec["kind"] in RL_KINDS]


def _dataset_metrics(runs: Sequence[RunRecord]) -> dict[str, str]:
    """Per dataset: "normalized_score" when every run on it has one, else "return"."""
    metric: dict[str, str] = {}
    for run in runs:
        dataset = run.spec["dataset"]
        has_normalized = _finite(run.scores["normalized_score"]) is not None
        if not has_normalized or metric.get(dataset) == "return":
            metric[dataset] = "return"
        else:
            metric.setdefault(dataset, "normalized_score")
    return metric


def _run_value(run: RunRecord, metric: str) -> float | None:
    key = "normalized_score" if metric == "normalized_score" else "return_mean"
    return _finite(run.scores[key])


def score_cells(runs: Sequence[RunRecord]) -> list[ScoreCell]:
    """The offline/online scores per (method, dataset), sorted by method then dataset."""
    rl = _rl_runs(runs)
    metric = _dataset_metrics(rl)
    groups: dict[tuple[str, str, str], list[tuple[int, float]]] = defaultdict(list)
    for run in rl:
        value = _run_value(run, metric[run.spec["dataset"]])
        if value is not None:
            groups[run.spec["method"], run.spec["dataset"], run.spec["kind"]].append((run.spec["seed"], value))
    cells = []
    for (method, dataset, kind), pairs in sorted(groups.items()):
        pairs.sort()
        values = np.array([v for _, v in pairs])
        cells.append(ScoreCell(method=method, dataset=dataset, kind=kind, metric=metric[dataset],
                               mean=float(values.mean()), std=float(values.std()),
                               seeds=tuple(s for s, _ in pairs)))
    return cells


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _fmt_g(value: Any) -> str:
    """Three significant digits for rates and FLOP/s, "—" for null."""
    return f"{value:.3g}" if _is_number(value) else "—"


def _csv_number(value: Any) -> str:
    return format(float(value), ".10g") if _is_number(value) else ""


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (pipes in cells escaped)."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, for a terminal."""
    table = [list(map(str, headers)), *[list(map(str, row)) for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _csv_text(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    return buffer.getvalue()


def scores_markdown(cells: Sequence[ScoreCell]) -> str:
    """Methods as rows, datasets as columns, cells "mean ± std (n)"; the metric of each column below."""
    if not cells:
        return "No offline or online run finished.\n"
    methods = sorted({c.method for c in cells})
    datasets = sorted({c.dataset for c in cells})
    by_key = {(c.method, c.dataset): c for c in cells}
    metric = {c.dataset: c.metric for c in cells}
    headers = ["method", *[d if metric[d] == "normalized_score" else f"{d} (return)" for d in datasets]]
    rows = []
    for method in methods:
        row = [method]
        for dataset in datasets:
            c = by_key.get((method, dataset))
            row.append(f"{_fmt(c.mean)} ± {_fmt(c.std)} (n={c.n})" if c else "—")
        rows.append(row)
    text = _md_table(headers, rows)
    text += "\nMean ± standard deviation (ddof=0) over seeds of the final evaluation's normalized score"
    text += " (D4RL convention: 0 random, 100 expert); n is the number of seeds."
    fallback = [d for d in datasets if metric[d] == "return"]
    if fallback:
        text += f" Columns marked (return) show the undiscounted return: {', '.join(fallback)} has no reference"
        text += " scores."
    return text + "\n"


_SCORE_CSV_HEADERS = ("method", "dataset", "kind", "metric", "mean", "std", "n", "seeds")


def _score_rows(cells: Sequence[ScoreCell]) -> list[list[Any]]:
    return [[c.method, c.dataset, c.kind, c.metric, _csv_number(c.mean), _csv_number(c.std), c.n,
             " ".join(map(str, c.seeds))] for c in cells]


# --------------------------------------------------------------------------------------------------
# Aggregates (rliable)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap confidence interval."""

    value: float
    low: float
    high: float


@dataclass
class Aggregates:
    """IQM per method and probability of improvement per pair, or why they are missing.

    ``iqm`` maps a method to ``(tasks, runs per task, estimate)``; ``improvement`` maps
    ``(x, y)`` to ``(shared datasets, estimate of P(x > y))``.
    """

    skipped: str | None = None
    iqm: dict[str, tuple[list[str], int, Estimate]] = field(default_factory=dict)
    improvement: dict[tuple[str, str], tuple[list[str], Estimate]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _import_rliable() -> tuple[Any, Any] | str:
    """Returns ``(library, metrics)`` from rliable, or why they cannot be imported."""
    try:
        from rliable import library, metrics
    # Not only ImportError: rliable 1.2 with arch 7 under pandas 3 fails with a TypeError on import.
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return library, metrics


@contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global generator for the block, then restore it.

    rliable's stratified bootstrap draws its indices from ``np.random`` directly, not from the
    ``random_state`` it is given, so only the global seed makes its intervals reproducible.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _score_matrix(per_dataset: dict[str, list[tuple[int, float]]], datasets: Sequence[str],
                  label: str, notes: list[str]) -> np.ndarray:
    """A (runs, tasks) matrix: the lowest ``k`` seeds of each dataset, ``k`` the smallest seed count.

    The dropped runs are named in ``notes``.
    """
    k = min(len(per_dataset[d]) for d in datasets)
    for dataset in datasets:
        dropped = [seed for seed, _ in per_dataset[dataset][k:]]
        if dropped:
            notes.append(f"{label}: seed(s) {', '.join(map(str, dropped))} on {dataset} left out so every"
                         f" dataset has {k} run(s)")
    return np.array([[per_dataset[d][i][1] for d in datasets] for i in range(k)], dtype=np.float64)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) + P(X = Y) / 2 over all pairs of runs, averaged over tasks; x, y: (runs, tasks).

    The same number as rliable's ``metrics.probability_of_improvement`` (the Mann-Whitney U statistic
    divided by the number of pairs, per task), computed in one numpy expression: rliable's calls
    scipy once per task and resample, which makes a 2000-resample interval take seconds per pair.
    """
    wins = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    ties = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return float(np.mean(wins + 0.5 * ties))


def _estimate(library: Any, func: Callable[..., float], data: np.ndarray | list[np.ndarray]) -> Estimate:
    with _seeded_numpy(BOOTSTRAP_SEED):
        points, intervals = library.get_interval_estimates(
            {"x": data}, lambda *xs: np.array([func(*xs)]), reps=BOOTSTRAP_REPS,
            confidence_interval_size=CONFIDENCE)
    interval = np.asarray(intervals["x"], dtype=np.float64).reshape(2, -1)[:, 0]
    return Estimate(float(np.asarray(points["x"]).reshape(-1)[0]), float(interval[0]), float(interval[1]))


def compute_aggregates(runs: Sequence[RunRecord]) -> Aggregates:
    """IQM with CIs per method and probability of improvement per pair of methods sharing datasets.

    Uses normalized scores only: a dataset without reference scores has returns on its own scale,
    which would swamp an aggregate across datasets, so it is left out (and named in the notes).
    """
    rl = _rl_runs(runs)
    result = Aggregates()
    metric = _dataset_metrics(rl)
    raw = sorted(d for d, m in metric.items() if m == "return")
    if raw:
        result.notes.append(f"left out for lack of normalized scores: {', '.join(raw)}")
    scores: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for run in rl:
        value = _run_value(run, "normalized_score")
        if metric[run.spec["dataset"]] == "normalized_score" and value is not None:
            scores[run.spec["method"]][run.spec["dataset"]].append((run.spec["seed"], value))
    if not scores:
        result.skipped = "no finished offline or online run has a normalized score"
        return result
    imported = _import_rliable()
    if isinstance(imported, str):
        result.skipped = f"rliable is not available ({imported}); install `hybridrl[bench]`"
        return result
    library, rl_metrics = imported
    for per_dataset in scores.values():
        for pairs in per_dataset.values():
            pairs.sort()

    for method in sorted(scores):
        datasets = sorted(scores[method])
        matrix = _score_matrix(scores[method], datasets, method, result.notes)
        result.iqm[method] = (datasets, matrix.shape[0], _estimate(library, rl_metrics.aggregate_iqm, matrix))

    methods = sorted(scores)
    for i, x in enumerate(methods):
        for y in methods[i + 1:]:
            shared = sorted(set(scores[x]) & set(scores[y]))
            if not shared:
                continue
            # Each pair uses only the datasets both ran, so its runs may differ from the IQM's.
            pair_notes: list[str] = []
            mx = _score_matrix(scores[x], shared, f"{x} vs {y}", pair_notes)
            my = _score_matrix(scores[y], shared, f"{x} vs {y}", pair_notes)
            result.notes += [n for n in pair_notes if n not in result.notes]
            poi = _estimate(library, probability_of_improvement, [mx, my])
            result.improvement[x, y] = (shared, poi)
    return result


def _aggregate_markdown(agg: Aggregates, image: str | None) -> str:
    text = "## Aggregate (rliable)\n\n"
    if agg.skipped:
        text += f"Skipped: {agg.skipped}.\n"
        if agg.notes:
            text += "".join(f"\n- {note}" for note in agg.notes) + "\n"
        return text
    pct = round(CONFIDENCE * 100)
    text += (f"Interquartile mean (IQM) of normalized scores over all (dataset, seed) runs of each method,"
             f" with {pct}% stratified bootstrap confidence intervals ({BOOTSTRAP_REPS} resamples, seed"
             f" {BOOTSTRAP_SEED}).\n\n")
    rows = [[m, len(d), k, _fmt(e.value), f"[{_fmt(e.low)}, {_fmt(e.high)}]"] for m, (d, k, e) in agg.iqm.items()]
    text += _md_table(["method", "datasets", "runs per dataset", "IQM", f"{pct}% CI"], rows)
    if image:
        text += f"\n![aggregate IQM]({image}.png) ([SVG]({image}.svg))\n"
    if agg.improvement:
        text += "\nProbability of improvement P(X > Y), averaged over the datasets both methods ran.\n\n"
        rows = [[x, y, len(shared), _fmt(e.value, 3), f"[{_fmt(e.low, 3)}, {_fmt(e.high, 3)}]"]
                for (x, y), (shared, e) in agg.improvement.items()]
        text += _md_table(["X", "Y", "shared datasets", "P(X > Y)", f"{pct}% CI"], rows)
    if agg.notes:
        text += "\n" + "".join(f"- {note}\n" for note in agg.notes)
    return text


def _aggregate_csvs(agg: Aggregates) -> dict[str, str]:
    iqm = _csv_text(["method", "datasets", "runs_per_dataset", "iqm", "ci_low", "ci_high"],
                    [[m, " ".join(d), k, _csv_number(e.value), _csv_number(e.low), _csv_number(e.high)]
                     for m, (d, k, e) in agg.iqm.items()])
    poi = _csv_text(["x", "y", "shared_datasets", "probability_of_improvement", "ci_low", "ci_high"],
                    [[x, y, " ".join(s), _csv_number(e.value), _csv_number(e.low), _csv_number(e.high)]
                     for (x, y), (s, e) in agg.improvement.items()])
    return {"aggregate_iqm.csv": iqm, "probability_of_improvement.csv": poi}


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib, imported lazily)


def _import_pyplot() -> Any:
    """Returns ``matplotlib.pyplot`` on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    """A file-name-safe version of a run id or dataset id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unnamed"


class _Figures:
    """Saves figures as PNG and SVG under ``out_dir/plots``, atomically, with reproducible bytes."""

    def __init__(self, plt: Any, out_dir: Path) -> None:
        self.plt = plt
        self.out_dir = out_dir
        self.dir = out_dir / "plots"
        self.written: list[Path] = []

    def save(self, fig: Any, name: str) -> str:
        """Write ``plots/<name>.png`` and ``.svg``; returns the stem relative to the report directory."""
        self.dir.mkdir(parents=True, exist_ok=True)
        # No creation date in the SVG and fixed element ids, so rebuilding changes no byte.
        with self.plt.rc_context({"svg.hashsalt": "hybridrl-report"}):
            for suffix, metadata in ((".png", {"Software": None}), (".svg", {"Date": None})):
                final = self.dir / f"{name}{suffix}"
                atomic_write(final, lambda f, fmt=suffix[1:], meta=metadata: fig.savefig(f, format=fmt, dpi=110,
                                                                                         metadata=meta))
                self.written.append(final)
        self.plt.close(fig)
        return f"plots/{name}"


def _curve(rows: Sequence[dict[str, Any]], key: str) -> dict[int, float]:
    """``{step: value}`` for the metric rows that carry a finite ``key``."""
    return {row["step"]: v for row in rows if _is_int(row.get("step")) and (v := _finite(row.get(key))) is not None}


def _plot_learning_curves(figs: _Figures, runs: Sequence[RunRecord]) -> list[tuple[str, str]]:
    """One figure per dataset: eval score vs step, mean over seeds ± std, one line per method.

    Returns ``(dataset, image stem)`` pairs, sorted by dataset.
    """
    rl = _rl_runs(runs)
    metric = _dataset_metrics(rl)
    images = []
    for dataset in sorted(metric):
        key = "eval/normalized_score" if metric[dataset] == "normalized_score" else "eval/return"
        by_method: dict[str, list[dict[int, float]]] = defaultdict(list)
        for run in sorted(rl, key=lambda r: (r.spec["method"], r.spec["seed"])):
            curve = _curve(run.metrics, key)
            if run.spec["dataset"] == dataset and curve:
                by_method[run.spec["method"]].append(curve)
        if not by_method:
            continue
        fig, ax = figs.plt.subplots(figsize=(6.4, 4.2))
        for method, curves in sorted(by_method.items()):
            steps = sorted(set().union(*curves))
            # Seeds may log at different steps: each point averages the seeds that logged it.
            values = [[c[s] for c in curves if s in c] for s in steps]
            mean = np.array([np.mean(v) for v in values])
            std = np.array([np.std(v) for v in values])
            (line,) = ax.plot(steps, mean, label=f"{method} (n={len(curves)})")
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=line.get_color(), linewidth=0)
        ax.set_xlabel("step")
        ax.set_ylabel("normalized score" if metric[dataset] == "normalized_score" else "return")
        ax.set_title(f"{dataset}: mean ± std over seeds")
        ax.legend(fontsize=8)
        fig.tight_layout()
        images.append((dataset, figs.save(fig, f"curves_{_slug(dataset)}")))
    return images


def _plot_aggregate(figs: _Figures, agg: Aggregates) -> str:
    """IQM per method as points with CI bars; returns the image stem."""
    methods = list(agg.iqm)
    estimates = [agg.iqm[m][2] for m in methods]
    values = np.array([e.value for e in estimates])
    errors = np.array([[e.value - e.low for e in estimates], [e.high - e.value for e in estimates]])
    fig, ax = figs.plt.subplots(figsize=(6.4, 0.5 * len(methods) + 1.6))
    positions = np.arange(len(methods))
    ax.errorbar(values, positions, xerr=np.maximum(errors, 0), fmt="o", capsize=4)
    ax.set_yticks(positions, methods)
    ax.set_ylim(len(methods) - 0.5, -0.5)  # first method on top, half a row of margin around
    ax.set_xlabel(f"IQM normalized score ({round(CONFIDENCE * 100)}% bootstrap CI)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return figs.save(fig, "aggregate_iqm")


def _plot_win_rates(figs: _Figures, run: RunRecord) -> str:
    """An annotated heatmap of P(row beats column); returns the image stem."""
    matrix = run.scores["win_rate_matrix"]
    players = matrix["players"]
    rates = np.array(matrix["win_rate"], dtype=np.float64)
    size = 1.0 + 0.9 * len(players)
    fig, ax = figs.plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates, vmin=0.0, vmax=1.0, cmap="RdBu")
    fig.colorbar(image, ax=ax, label="P(row beats column)")
    ax.set_xticks(range(len(players)), players, rotation=30, ha="right")
    ax.set_yticks(range(len(players)), players)
    has_ci = "ci_low" in matrix and "ci_high" in matrix
    for i in range(len(players)):
        for j in range(len(players)):
            label = f"{rates[i, j]:.2f}"
            if has_ci and i != j:
                label += f"\n[{matrix['ci_low'][i][j]:.2f}, {matrix['ci_high'][i][j]:.2f}]"
            color = "white" if abs(rates[i, j] - 0.5) > 0.3 else "black"
            ax.text(j, i, label, ha="center", va="center", fontsize=7, color=color)
    judge = matrix.get("judge", "?")
    ax.set_title(f"{run.spec['method']} on {run.spec['dataset']}, seed {run.spec['seed']}, judge {judge}",
                 fontsize=9)
    fig.tight_layout()
    return figs.save(fig, f"win_rates_{_slug(run.run_id)}")


def _plot_gap_curves(figs: _Figures, run: RunRecord) -> str:
    """Duality gap vs iteration on a log axis, median with its q25-q75 band; returns the image stem."""
    fig, ax = figs.plt.subplots(figsize=(6.4, 4.2))
    for method, curve in sorted(run.scores["gap_curves"].items()):
        its = np.asarray(curve["iterations"], dtype=np.float64)
        (line,) = ax.plot(its, np.maximum(curve["median"], GAP_FLOOR), label=method)
        if "q25" in curve and "q75" in curve:
            ax.fill_between(its, np.maximum(curve["q25"], GAP_FLOOR), np.maximum(curve["q75"], GAP_FLOOR),
                            alpha=0.2, color=line.get_color(), linewidth=0)
    ax.set_yscale("log")
    if all(min(c["iterations"], default=0) > 0 for c in run.scores["gap_curves"].values()):
        ax.set_xscale("log")  # the points are log-spaced
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"duality gap (median, q25-q75; floor {GAP_FLOOR:g})")
    ax.set_title(f"{run.spec['dataset']}, seed {run.spec['seed']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figs.save(fig, f"gaps_{_slug(run.run_id)}")


def _plot_throughput(figs: _Figures, runs: Sequence[RunRecord]) -> str:
    """Grouped bars, ours vs the reference library, one panel per rate unit; returns the image stem."""
    units = [key for key in RATE_KEYS if any(_is_number(r.scores.get(key)) for r in runs)]
    fig, axes = figs.plt.subplots(1, len(units), figsize=(6.4 * len(units), 4.2), squeeze=False)
    for ax, unit in zip(axes[0], units, strict=True):
        chosen = [r for r in runs if _is_number(r.scores.get(unit))]
        labels = [f"{r.spec['method']}\n{r.spec['dataset']}\n{r.scores['device']}" for r in chosen]
        ours = [r.scores[unit] for r in chosen]
        refs = [_finite((r.scores.get("reference") or {}).get(unit)) or 0.0 for r in chosen]
        x = np.arange(len(chosen))
        ax.bar(x - 0.2, ours, width=0.4, label="hybridrl")
        ax.bar(x + 0.2, refs, width=0.4, label="reference (d3rlpy / TRL)")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylabel(unit.replace("_per_s", " per second"))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return figs.save(fig, "throughput")


# --------------------------------------------------------------------------------------------------
# Preference, games and throughput sections


def _group_scores(runs: Sequence[RunRecord]) -> list[list[Any]]:
    """Rows (method, dataset, metric, mean ± std, n) of the ``score`` field, grouped over seeds."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for run in runs:
        value = _finite(run.scores["score"])
        if value is not None:
            groups[run.spec["method"], run.spec["dataset"], str(run.scores["metric"])].append(value)
    return [[m, d, metric, _mean_std(v), len(v)] for (m, d, metric), v in sorted(groups.items())]


def _mean_std(values: Sequence[float]) -> str:
    """Three decimals, or three significant digits when the mean is below 0.01 (duality gaps)."""
    mean, std = float(np.mean(values)), float(np.std(values))
    return f"{mean:.3g} ± {std:.2g}" if 0 < abs(mean) < 0.01 else f"{_fmt(mean, 3)} ± {_fmt(std, 3)}"


def _preference_section(runs: Sequence[RunRecord], figs: _Figures | None,
                        csvs: dict[str, str]) -> str:
    text = "## Preference\n\n"
    rows = _group_scores([run for run in runs if run.spec["kind"] in ("preference", "selfplay")])
    if rows:
        text += _md_table(["method", "task", "metric", "mean ± std", "n"], rows)
    long_rows = []
    for run in runs:
        matrix = run.scores.get("win_rate_matrix")
        if matrix is None:
            continue
        players = matrix["players"]
        text += (f"\n### Win rates: {run.run_id}\n\nP(row beats column), judge {matrix.get('judge', '?')},"
                 " 95% CI in brackets where given.\n\n")
        table = []
        for i, row_player in enumerate(players):
            cells = [row_player]
            for j in range(len(players)):
                cell = _fmt(matrix["win_rate"][i][j], 3)
                if "ci_low" in matrix and "ci_high" in matrix and i != j:
                    cell += f" [{_fmt(matrix['ci_low'][i][j], 2)}, {_fmt(matrix['ci_high'][i][j], 2)}]"
                cells.append(cell)
                long_rows.append([run.run_id, row_player, players[j], _csv_number(matrix["win_rate"][i][j]),
                                  *(_csv_number(matrix[k][i][j]) if k in matrix else ""
                                    for k in ("ci_low", "ci_high", "num_comparisons"))])
            table.append(cells)
        text += _md_table(["", *players], table)
        if figs is not None:
            stem = _plot_win_rates(figs, run)
            text += f"\n![win rates {run.run_id}]({stem}.png) ([SVG]({stem}.svg))\n"
    csvs["preference.csv"] = _csv_text(["method", "task", "metric", "mean ± std", "n"], rows)
    if long_rows:
        csvs["win_rates.csv"] = _csv_text(
            ["run_id", "player", "opponent", "win_rate", "ci_low", "ci_high", "num_comparisons"], long_rows)
    return text


def _games_section(runs: Sequence[RunRecord], figs: _Figures | None, csvs: dict[str, str]) -> str:
    text = "## Nash games\n\nFinal duality gap per solver (mean ± std over seeds; lower is better).\n\n"
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in runs:
        for method, gap in run.scores["final_gap"].items():
            groups[run.spec["dataset"], method].append(float(gap))
    rows = [[label, method, f"{float(np.mean(v)):.3g} ± {float(np.std(v)):.2g}", len(v)]
            for (label, method), v in sorted(groups.items())]
    text += _md_table(["game", "solver", "final gap", "n"], rows)
    csvs["games.csv"] = _csv_text(
        ["game", "solver", "final_gap_mean", "final_gap_std", "n"],
        [[label, method, _csv_number(np.mean(v)), _csv_number(np.std(v)), len(v)]
         for (label, method), v in sorted(groups.items())])
    if figs is not None:
        for run in runs:
            stem = _plot_gap_curves(figs, run)
            text += f"\n![duality gaps {run.run_id}]({stem}.png) ([SVG]({stem}.svg))\n"
    return text


def _throughput_section(runs: Sequence[RunRecord], figs: _Figures | None, csvs: dict[str, str]) -> str:
    text = ("## Throughput\n\nOurs against the reference library measured in the same run; the fraction is"
            " achieved FLOP/s over the machine's measured matmul FLOP/s.\n\n")
    headers = ["method", "dataset", "device", "unit", "ours", "reference", "reference value", "ratio",
               "fraction of matmul", "peak memory (MB)"]
    rows, csv_rows = [], []
    for run in runs:
        s = run.scores
        unit = next(key for key in RATE_KEYS if _is_number(s.get(key)))
        ref = s.get("reference") if isinstance(s.get("reference"), dict) else {}
        ref_value = _finite(ref.get(unit))
        ratio = s[unit] / ref_value if ref_value else None
        fraction = _finite(s.get("fraction_of_matmul"))
        values = [run.spec["method"], run.spec["dataset"], s["device"], unit]
        rows.append([*values, _fmt_g(s[unit]), ref.get("library", "—"), _fmt_g(ref_value),
                     _fmt_g(ratio), _fmt(fraction, 4), _fmt_g(s.get("peak_memory_mb"))])
        csv_rows.append([*values, _csv_number(s[unit]), ref.get("library", ""), _csv_number(ref_value),
                         _csv_number(ratio), _csv_number(fraction), _csv_number(s.get("peak_memory_mb")),
                         _csv_number(s.get("achieved_flops_per_s")), _csv_number(s.get("matmul_flops_per_s"))])
    text += _md_table(headers, rows)
    csvs["throughput.csv"] = _csv_text(
        ["method", "dataset", "device", "unit", "ours", "reference_library", "reference", "ratio",
         "fraction_of_matmul", "peak_memory_mb", "achieved_flops_per_s", "matmul_flops_per_s"], csv_rows)
    if figs is not None:
        stem = _plot_throughput(figs, runs)
        text += f"\n![throughput]({stem}.png) ([SVG]({stem}.svg))\n"
    return text


# --------------------------------------------------------------------------------------------------
# The report


@dataclass
class Report:
    """What :func:`build_report` wrote and read.

    ``files`` lists every file written (tables, CSVs, plots), ``images`` the PNGs among them.
    """

    runs_dir: Path
    out_dir: Path
    report_md: Path
    scores_md: Path
    scores_csv: Path
    finished: list[RunRecord]
    partial: list[RunRecord]
    corrupted: list[RunRecord]
    cells: list[ScoreCell]
    aggregates: Aggregates
    files: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)

    def table_text(self) -> str:
        """The offline/online scores as an aligned plain-text table, then a one-line run summary."""
        if self.cells:
            rows = [[c.method, c.dataset, "normalized" if c.metric == "normalized_score" else "return",
                     f"{_fmt(c.mean)} ± {_fmt(c.std)}", c.n] for c in self.cells]
            text = _text_table(["method", "dataset", "metric", "mean ± std", "seeds"], rows)
        else:
            text = "No offline or online run finished.\n"
        # preference, self-play, games and throughput runs: their headline score per method
        others = _group_scores([r for r in self.finished if r.spec["kind"] not in (*RL_KINDS, "winrate")])
        if others:
            text += "\n" + _text_table(["method", "dataset", "metric", "mean ± std", "n"], others)
        text += (f"{len(self.finished)} finished, {len(self.partial)} partial, {len(self.corrupted)} corrupted;"
                 f" report: {self.report_md}\n")
        return text


def _status_section(runs: Sequence[RunRecord]) -> str:
    counts = {status: sum(r.status == status for r in runs) for status in ("finished", "partial", "corrupted")}
    text = "## Run status\n\n" + _md_table(["finished", "partial", "corrupted"], [list(counts.values())])
    bad = [r for r in runs if r.status != "finished"]
    if bad:
        text += "\n" + _md_table(["run", "status", "reason"], [[r.run_id, r.status, r.reason] for r in bad])
    return text


def _provenance_section(runs: Sequence[RunRecord]) -> str:
    """The distinct git commits and devices recorded in the runs' environment.json."""
    commits: set[str] = set()
    devices: set[str] = set()
    for run in runs:
        env, error = _read_json(run.path / ENVIRONMENT) if (run.path / ENVIRONMENT).exists() else (None, "")
        if error is None and isinstance(env, dict):
            commits.add(str(env.get("git_commit")))
            devices.add(str(env.get("device")))
    if not commits:
        return ""
    return (f"## Provenance\n\n- git commits: {', '.join(sorted(commits))}\n"
            f"- devices: {', '.join(sorted(devices))}\n")


def build_report(runs_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Report:
    """Read every run under ``runs_dir`` and write the report into ``out_dir`` (default ``runs_dir/report``).

    Writes ``report.md``, ``scores.md``, ``scores.csv``, the aggregate, preference, games and
    throughput CSVs when there is data for them, and PNG+SVG plots under ``plots/``. Bad runs are
    listed with their reasons, never raised. Returns the :class:`Report`.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs directory {runs_dir} does not exist")
    out_dir = Path(out_dir) if out_dir is not None else runs_dir / "report"
    runs = load_runs(runs_dir, skip=[out_dir])
    usable = [r for r in runs if r.usable]

    def of_kind(*kinds: str) -> list[RunRecord]:
        return [r for r in usable if r.spec["kind"] in kinds]

    plt = _import_pyplot()
    figs = _Figures(plt, out_dir) if plt is not None else None
    csvs: dict[str, str] = {}
    cells = score_cells(runs)
    scores_md = scores_markdown(cells)
    csvs["scores.csv"] = _csv_text(_SCORE_CSV_HEADERS, _score_rows(cells))

    sections = [f"# Benchmark report\n\n{len(runs)} run directories in `{runs_dir.name}/`. Tables as CSV beside"
                " this file; plots in `plots/` (PNG, and SVG for papers).\n", _status_section(runs)]
    if plt is None:
        sections.append("Plots skipped: matplotlib is not installed (`pip install 'hybridrl[bench]'`).\n")
    sections.append("## Scores (offline and online)\n\n" + scores_md + "\nAlso as [scores.md](scores.md) and"
                    " [scores.csv](scores.csv).\n")
    if figs is not None:
        for dataset, stem in _plot_learning_curves(figs, runs):
            sections.append(f"### Learning curves: {dataset}\n\n![{dataset}]({stem}.png) ([SVG]({stem}.svg))\n")

    aggregates = compute_aggregates(runs)
    image = _plot_aggregate(figs, aggregates) if figs is not None and aggregates.iqm else None
    sections.append(_aggregate_markdown(aggregates, image))
    if not aggregates.skipped:
        csvs.update(_aggregate_csvs(aggregates))
    language_model_runs = of_kind("preference") + of_kind("selfplay") + of_kind("winrate")
    if language_model_runs:
        sections.append(_preference_section(language_model_runs, figs, csvs))
    if of_kind("games"):
        sections.append(_games_section(of_kind("games"), figs, csvs))
    if of_kind("throughput"):
        sections.append(_throughput_section(of_kind("throughput"), figs, csvs))
    provenance = _provenance_section(usable)
    if provenance:
        sections.append(provenance)

    files = []
    for name, text in sorted(csvs.items()):
        atomic_write_text(out_dir / name, text)
        files.append(out_dir / name)
    atomic_write_text(out_dir / "scores.md", "# Scores\n\n" + scores_md)
    atomic_write_text(out_dir / "report.md", "\n".join(sections))
    files += [out_dir / "scores.md", out_dir / "report.md"]
    written = figs.written if figs is not None else []
    return Report(
        runs_dir=runs_dir, out_dir=out_dir, report_md=out_dir / "report.md", scores_md=out_dir / "scores.md",
        scores_csv=out_dir / "scores.csv",
        finished=[r for r in runs if r.status == "finished"],
        partial=[r for r in runs if r.status == "partial"],
        corrupted=[r for r in runs if r.status == "corrupted"],
        cells=cells, aggregates=aggregates, files=sorted(files + written),
        images=sorted(p for p in written if p.suffix == ".png"),
    )
