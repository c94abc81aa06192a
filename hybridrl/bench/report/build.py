"""Building the report: read the runs, render each section, write every file atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hybridrl.bench.report.aggregates import Aggregates, compute_aggregates
from hybridrl.bench.report.plots import Figures, import_pyplot
from hybridrl.bench.report.runs import MODEL_KINDS, RL_KINDS, RunRecord, load_runs
from hybridrl.bench.report.sections import Page, provenance_section, runs_by_section, status_section
from hybridrl.bench.report.tables import (
    MODEL_SCORE_HEADERS,
    ScoreCell,
    fmt,
    group_scores,
    model_scores,
    score_cells,
    text_table,
)
from hybridrl.core.checkpoint import atomic_write_text


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
                     f"{fmt(c.mean)} ± {fmt(c.std)}", c.n] for c in self.cells]
            text = text_table(["method", "dataset", "metric", "mean ± std", "seeds"], rows)
        else:
            text = "No offline or online run finished.\n"
        models = model_scores(self.finished)
        if models:
            text += "\n" + text_table(MODEL_SCORE_HEADERS, models)
        # games and throughput runs: their headline score per method
        others = group_scores([r for r in self.finished
                               if r.spec["kind"] not in (*RL_KINDS, *MODEL_KINDS, "winrate")])
        if others:
            text += "\n" + text_table(["method", "dataset", "metric", "mean ± std", "n"], others)
        text += (f"{len(self.finished)} finished, {len(self.partial)} partial, {len(self.corrupted)} corrupted;"
                 f" report: {self.report_md}\n")
        return text


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

    plt = import_pyplot()
    page = Page(figs=Figures(plt, out_dir) if plt is not None else None, cells=score_cells(runs),
                aggregates=compute_aggregates(runs))
    parts = [f"# Benchmark report\n\n{len(runs)} run directories in `{runs_dir.name}/`. Tables as CSV beside"
             " this file; plots in `plots/` (PNG, and SVG for papers).\n", status_section(runs)]
    if plt is None:
        parts.append("Plots skipped: matplotlib is not installed (`pip install 'hybridrl[bench]'`).\n")
    for section, chosen in runs_by_section(runs).items():
        text = section(chosen, page)
        if text:
            parts.append(text)
    provenance = provenance_section([r for r in runs if r.usable])
    if provenance:
        parts.append(provenance)

    files = []
    for name, text in sorted(page.files.items()):
        atomic_write_text(out_dir / name, text)
        files.append(out_dir / name)
    atomic_write_text(out_dir / "report.md", "\n".join(parts))
    files.append(out_dir / "report.md")
    written = page.figs.written if page.figs is not None else []
    return Report(
        runs_dir=runs_dir, out_dir=out_dir, report_md=out_dir / "report.md", scores_md=out_dir / "scores.md",
        scores_csv=out_dir / "scores.csv",
        finished=[r for r in runs if r.status == "finished"],
        partial=[r for r in runs if r.status == "partial"],
        corrupted=[r for r in runs if r.status == "corrupted"],
        cells=page.cells, aggregates=page.aggregates, files=sorted(files + written),
        images=sorted(p for p in written if p.suffix == ".png"),
    )
