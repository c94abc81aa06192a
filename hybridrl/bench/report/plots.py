"""Every figure of the report, and the writer that saves them (matplotlib, imported lazily).

Learning curves, the IQM aggregate, win-rate heatmaps, duality-gap curves and throughput bars.
:func:`plot_gap_curves` is also what ``hybridrl pref games`` draws, through :func:`write_gap_plot`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybridrl.bench.report.aggregates import CONFIDENCE, Aggregates
from hybridrl.bench.report.runs import RATE_KEYS, RunRecord, finite, is_int, is_number
from hybridrl.bench.report.tables import dataset_metrics, rl_runs
from hybridrl.core.checkpoint import atomic_write

GAP_FLOOR = 1e-12  # duality gaps can be exactly 0, which a log axis cannot show


def import_pyplot() -> Any:
    """Returns ``matplotlib.pyplot`` on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def slug(text: str) -> str:
    """A file-name-safe version of a run id or dataset id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unnamed"


class Figures:
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
    return {row["step"]: v for row in rows if is_int(row.get("step")) and (v := finite(row.get(key))) is not None}


def plot_learning_curves(figs: Figures, runs: Sequence[RunRecord]) -> list[tuple[str, str]]:
    """One figure per dataset: eval score vs step, mean over seeds ± std, one line per method.

    Returns ``(dataset, image stem)`` pairs, sorted by dataset.
    """
    rl = rl_runs(runs)
    metric = dataset_metrics(rl)
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
        images.append((dataset, figs.save(fig, f"curves_{slug(dataset)}")))
    return images


def plot_aggregate(figs: Figures, agg: Aggregates) -> str:
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


def plot_win_rates(figs: Figures, run: RunRecord) -> str:
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
    return figs.save(fig, f"win_rates_{slug(run.run_id)}")


X_AXES = {"iterations": "iteration", "queries": "oracle queries (preference comparisons used)"}
"""x axes of the gap plots -> their label."""


def plot_gap_curves(plt: Any, curves: Mapping[str, Mapping[str, Sequence[float]]], *, title: str, ylabel: str,
                    band: tuple[str, str] = ("q25", "q75"), floor: float = GAP_FLOOR,
                    labels: Mapping[str, str] | None = None, x: str = "iterations") -> Any:
    """Duality gap vs iteration (or oracle queries) on a log axis, one line per method in the order given;
    returns the figure.

    Args:
        curves: ``{method: {"iterations": [...], "median": [...], band[0]: [...], band[1]: [...]}}``,
            the layout of a games run's ``gap_curves``; the band is shaded where both keys are present.
        band: the keys of the band's lower and upper edges (quartiles in a games run).
        floor: gaps are drawn at least this large, as exact zeros have no place on a log axis.
        labels: legend labels of the methods that need another than their name.
        x: ``iterations``, or ``queries`` (the preference comparisons used, which every curve must have):
            extragradient methods query twice per iteration, so iterations flatter them.
    """
    if x not in X_AXES:
        raise ValueError(f"unknown x axis {x!r}: use {' or '.join(X_AXES)}")
    missing = [method for method, curve in curves.items() if x not in curve]
    if missing:
        raise ValueError(f"gap curves of {', '.join(missing)} have no {x!r}")
    labels = labels or {}
    low, high = band
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, curve in curves.items():
        its = np.asarray(curve[x], dtype=np.float64)
        (line,) = ax.plot(its, np.maximum(curve["median"], floor), label=labels.get(method, method))
        if low in curve and high in curve:
            ax.fill_between(its, np.maximum(curve[low], floor), np.maximum(curve[high], floor),
                            alpha=0.2, color=line.get_color(), linewidth=0)
    ax.set_yscale("log")
    if all(min(c[x], default=0) > 0 for c in curves.values()):
        ax.set_xscale("log")  # the points are log-spaced
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_run_gap_curves(figs: Figures, run: RunRecord, x: str = "iterations") -> str:
    """The gap curves of one games run against ``x`` (see :func:`plot_gap_curves`), methods sorted, median
    with its q25-q75 band; returns the image stem."""
    fig = plot_gap_curves(figs.plt, dict(sorted(run.scores["gap_curves"].items())),
                          title=f"{run.spec['dataset']}, seed {run.spec['seed']}",
                          ylabel=f"duality gap (median, q25-q75; floor {GAP_FLOOR:g})", x=x)
    return figs.save(fig, f"gaps_{slug(run.run_id)}" + ("" if x == "iterations" else f"_{x}"))


def write_gap_plot(curves: Mapping[str, Mapping[str, Sequence[float]]], out_path: str | Path, *, title: str,
                   ylabel: str, band: tuple[str, str] = ("q25", "q75"), floor: float = GAP_FLOOR,
                   labels: Mapping[str, str] | None = None, dpi: int = 120, x: str = "iterations") -> None:
    """Draw :func:`plot_gap_curves` into one image file, its format from ``out_path``'s suffix.

    Raises ``ModuleNotFoundError`` when matplotlib is not installed.
    """
    plt = import_pyplot()
    if plt is None:
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig = plot_gap_curves(plt, curves, title=title, ylabel=ylabel, band=band, floor=floor, labels=labels, x=x)
    fig.savefig(out_path, dpi=dpi)
    plt.close(fig)


def plot_throughput(figs: Figures, runs: Sequence[RunRecord]) -> str:
    """Grouped bars, ours vs the reference library, one panel per rate unit; returns the image stem."""
    units = [key for key in RATE_KEYS if any(is_number(r.scores.get(key)) for r in runs)]
    fig, axes = figs.plt.subplots(1, len(units), figsize=(6.4 * len(units), 4.2), squeeze=False)
    for ax, unit in zip(axes[0], units, strict=True):
        chosen = [r for r in runs if is_number(r.scores.get(unit))]
        labels = [f"{r.spec['method']}\n{r.spec['dataset']}\n{r.scores['device']}" for r in chosen]
        ours = [r.scores[unit] for r in chosen]
        refs = [finite((r.scores.get("reference") or {}).get(unit)) or 0.0 for r in chosen]
        x = np.arange(len(chosen))
        ax.bar(x - 0.2, ours, width=0.4, label="hybridrl")
        ax.bar(x + 0.2, refs, width=0.4, label="reference (d3rlpy / TRL)")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylabel(unit.replace("_per_s", " per second"))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return figs.save(fig, "throughput")


# The critic's estimates and what they estimate (logged by the RL loop for methods with q_values).
CONSERVATISM_PANELS = (("start states: Q(s0, pi(s0)) vs discounted return", "eval/q_start", "eval/discounted_return"),
                       ("dataset sample: Q(s, a) vs return-to-go", "eval/q_data", "eval/rtg_data"))


def plot_conservatism(figs: Figures, runs: Sequence[RunRecord]) -> list[tuple[str, str]]:
    """One figure per dataset with Q-method runs: estimate (solid) vs obtained (dashed) over the run,
    mean over seeds, one colour per method; a panel for the start states and one for the dataset sample.

    Returns ``(dataset, image stem)`` pairs, sorted by dataset; datasets without such runs get none.
    """
    rl = rl_runs(runs)
    images = []
    for dataset in sorted({r.spec["dataset"] for r in rl}):
        chosen = sorted((r for r in rl if r.spec["dataset"] == dataset),
                        key=lambda r: (r.spec["method"], r.spec["seed"]))
        panels = [(title, estimate, obtained) for title, estimate, obtained in CONSERVATISM_PANELS
                  if any(_curve(r.metrics, estimate) for r in chosen)]
        if not panels:
            continue
        fig, axes = figs.plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
        for ax, (title, estimate, obtained) in zip(axes[0], panels, strict=True):
            methods = sorted({r.spec["method"] for r in chosen if _curve(r.metrics, estimate)})
            for method in methods:
                color = None
                for key, style in ((estimate, "-"), (obtained, "--")):
                    curves = [c for r in chosen if r.spec["method"] == method and (c := _curve(r.metrics, key))]
                    steps = sorted(set().union(*curves))
                    # Seeds may log at different steps: each point averages the seeds that logged it.
                    mean = [np.mean([c[s] for c in curves if s in c]) for s in steps]
                    label = f"{method} {'estimate' if style == '-' else 'obtained'} (n={len(curves)})"
                    (line,) = ax.plot(steps, mean, style, color=color, label=label)
                    color = line.get_color()
            ax.set_xlabel("step")
            ax.set_ylabel("discounted value")
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=7)
        fig.suptitle(f"{dataset}: critic estimate vs return obtained (mean over seeds)", fontsize=10)
        fig.tight_layout()
        images.append((dataset, figs.save(fig, f"conservatism_{slug(dataset)}")))
    return images
