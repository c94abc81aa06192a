"""Score cells and the tables built from them: markdown for report.md, aligned text for a terminal, CSV."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridrl.bench.report.runs import MODEL_KINDS, RL_KINDS, RunRecord, finite, is_number


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


def rl_runs(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """The usable offline and online runs, in the order given."""
    return [r for r in runs if r.usable and r.spec["kind"] in RL_KINDS]


def dataset_metrics(runs: Sequence[RunRecord]) -> dict[str, str]:
    """Per dataset: "normalized_score" when every run on it has one, else "return"."""
    metric: dict[str, str] = {}
    for run in runs:
        dataset = run.spec["dataset"]
        has_normalized = finite(run.scores["normalized_score"]) is not None
        if not has_normalized or metric.get(dataset) == "return":
            metric[dataset] = "return"
        else:
            metric.setdefault(dataset, "normalized_score")
    return metric


def run_value(run: RunRecord, metric: str) -> float | None:
    """The run's final normalized score or return (per ``metric``), None when it is not finite."""
    key = "normalized_score" if metric == "normalized_score" else "return_mean"
    return finite(run.scores[key])


def score_cells(runs: Sequence[RunRecord]) -> list[ScoreCell]:
    """The offline/online scores per (method, dataset), sorted by method then dataset."""
    rl = rl_runs(runs)
    metric = dataset_metrics(rl)
    groups: dict[tuple[str, str, str], list[tuple[int, float]]] = defaultdict(list)
    for run in rl:
        value = run_value(run, metric[run.spec["dataset"]])
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


def fmt(value: float | None, digits: int = 1) -> str:
    """Fixed decimals, "—" for null, nan or inf."""
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_g(value: Any) -> str:
    """Three significant digits for rates and FLOP/s, "—" for null."""
    return f"{value:.3g}" if is_number(value) else "—"


def csv_number(value: Any) -> str:
    """Ten significant digits, "" for null: CSV keeps the precision the tables round away."""
    return format(float(value), ".10g") if is_number(value) else ""


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (pipes in cells escaped)."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, for a terminal."""
    table = [list(map(str, headers)), *[list(map(str, row)) for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def csv_text(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
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
            row.append(f"{fmt(c.mean)} ± {fmt(c.std)} (n={c.n})" if c else "—")
        rows.append(row)
    text = md_table(headers, rows)
    text += "\nMean ± standard deviation (ddof=0) over seeds of the final evaluation's normalized score"
    text += " (D4RL convention: 0 random, 100 expert); n is the number of seeds."
    fallback = [d for d in datasets if metric[d] == "return"]
    if fallback:
        text += f" Columns marked (return) show the undiscounted return: {', '.join(fallback)} has no reference"
        text += " scores."
    return text + "\n"


SCORE_CSV_HEADERS = ("method", "dataset", "kind", "metric", "mean", "std", "n", "seeds")


def score_rows(cells: Sequence[ScoreCell]) -> list[list[Any]]:
    """The rows of scores.csv, under :data:`SCORE_CSV_HEADERS`."""
    return [[c.method, c.dataset, c.kind, c.metric, csv_number(c.mean), csv_number(c.std), c.n,
             " ".join(map(str, c.seeds))] for c in cells]


def group_scores(runs: Sequence[RunRecord]) -> list[list[Any]]:
    """Rows (method, dataset, metric, mean ± std, n) of the ``score`` field, grouped over seeds."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for run in runs:
        value = finite(run.scores["score"])
        if value is not None:
            groups[run.spec["method"], run.spec["dataset"], str(run.scores["metric"])].append(value)
    return [[m, d, metric, mean_std(v), len(v)] for (m, d, metric), v in sorted(groups.items())]


MODEL_SCORE_HEADERS = ("method", "task", "win rate vs SFT", "KL to SFT", "optimizer steps", "judge calls", "seeds")


def model_scores(runs: Sequence[RunRecord]) -> list[list[Any]]:
    """Rows under :data:`MODEL_SCORE_HEADERS` for the language-model runs: win rate over the SFT model
    and KL(policy || SFT) per answer in nats, mean ± std over seeds, beside the training's optimizer
    steps and judge calls (a win rate alone hides how far a method drifted and how much it asked)."""
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for run in runs:
        if run.usable and run.spec["kind"] in MODEL_KINDS and finite(run.scores["score"]) is not None:
            groups[run.spec["method"], run.spec["dataset"]].append(run)
    rows = []
    for (method, dataset), group in sorted(groups.items()):
        kls = [finite(r.scores.get("kl_to_sft")) for r in group]
        rows.append([method, dataset, mean_std([r.scores["score"] for r in group]),
                     mean_std([v for v in kls if v is not None], digits=2) if None not in kls else "—",
                     _same_or_range([r.scores.get("optimizer_steps") for r in group]),
                     _same_or_range([r.scores.get("judge_calls") for r in group]), len(group)])
    return rows


def _same_or_range(values: Sequence[Any]) -> str:
    """One count when the seeds agree, "low-high" when not, "—" when a run lacks it."""
    if not values or not all(is_number(v) for v in values):
        return "—"
    low, high = int(min(values)), int(max(values))
    return f"{low}" if low == high else f"{low}-{high}"


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``digits`` decimals, or three significant digits when the mean is below 0.01 (duality gaps)."""
    mean, std = float(np.mean(values)), float(np.std(values))
    return f"{mean:.3g} ± {std:.2g}" if 0 < abs(mean) < 0.01 else f"{fmt(mean, digits)} ± {fmt(std, digits)}"
