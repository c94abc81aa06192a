"""Aggregates across datasets with rliable: IQM per method and probability of improvement per pair.

Both come with stratified bootstrap confidence intervals. Without rliable the aggregates say why they
are missing and the rest of the report is built.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hybridrl.bench.report.runs import RunRecord
from hybridrl.bench.report.tables import csv_number, csv_text, dataset_metrics, fmt, md_table, rl_runs, run_value

# The bootstrap is seeded so that a report built twice reads the same; 2000 resamples keep a report
# of a few dozen runs within seconds on a laptop (rliable's default of 50000 takes minutes).
BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


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
    rl = rl_runs(runs)
    result = Aggregates()
    metric = dataset_metrics(rl)
    raw = sorted(d for d, m in metric.items() if m == "return")
    if raw:
        result.notes.append(f"left out for lack of normalized scores: {', '.join(raw)}")
    scores: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for run in rl:
        value = run_value(run, "normalized_score")
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


def aggregate_markdown(agg: Aggregates, image: str | None) -> str:
    """The aggregate section of report.md; ``image`` is the stem of the IQM plot, if one was drawn."""
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
    rows = [[m, len(d), k, fmt(e.value), f"[{fmt(e.low)}, {fmt(e.high)}]"] for m, (d, k, e) in agg.iqm.items()]
    text += md_table(["method", "datasets", "runs per dataset", "IQM", f"{pct}% CI"], rows)
    if image:
        text += f"\n![aggregate IQM]({image}.png) ([SVG]({image}.svg))\n"
    if agg.improvement:
        text += "\nProbability of improvement P(X > Y), averaged over the datasets both methods ran.\n\n"
        rows = [[x, y, len(shared), fmt(e.value, 3), f"[{fmt(e.low, 3)}, {fmt(e.high, 3)}]"]
                for (x, y), (shared, e) in agg.improvement.items()]
        text += md_table(["X", "Y", "shared datasets", "P(X > Y)", f"{pct}% CI"], rows)
    if agg.notes:
        text += "\n" + "".join(f"- {note}\n" for note in agg.notes)
    return text


def aggregate_csvs(agg: Aggregates) -> dict[str, str]:
    """``{file name: CSV text}`` of the IQM and the probabilities of improvement."""
    iqm = csv_text(["method", "datasets", "runs_per_dataset", "iqm", "ci_low", "ci_high"],
                   [[m, " ".join(d), k, csv_number(e.value), csv_number(e.low), csv_number(e.high)]
                    for m, (d, k, e) in agg.iqm.items()])
    poi = csv_text(["x", "y", "shared_datasets", "probability_of_improvement", "ci_low", "ci_high"],
                   [[x, y, " ".join(s), csv_number(e.value), csv_number(e.low), csv_number(e.high)]
                    for (x, y), (s, e) in agg.improvement.items()])
    return {"aggregate_iqm.csv": iqm, "probability_of_improvement.csv": poi}
