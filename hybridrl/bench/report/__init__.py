"""The benchmark report: reads a directory of run directories, writes tables, plots and one ``report.md``.

:func:`build_report` sorts every run into finished, partial or corrupted (see :mod:`.runs`); a bad
run never stops the report: it is listed with its reason and the rest is built. Each section of
report.md shows the runs of some kinds (:data:`.sections.SECTIONS`). Aggregates use rliable
(interquartile mean and probability of improvement with stratified bootstrap confidence intervals);
without rliable, or without matplotlib, the report says which section it skipped. Every file is
written atomically (temporary file beside it, then ``os.replace``), and two builds over the same
runs give byte-identical tables and ``report.md``.

Modules: ``runs`` (reading run directories), ``tables`` (score cells and tables), ``aggregates``
(rliable), ``plots`` (every figure), ``sections`` (report.md's sections, by run kind), ``build``.
"""

from hybridrl.bench.report.aggregates import Aggregates, Estimate, compute_aggregates, probability_of_improvement
from hybridrl.bench.report.build import Report, build_report
from hybridrl.bench.report.runs import RunRecord, load_run, load_runs
from hybridrl.bench.report.sections import SECTIONS
from hybridrl.bench.report.tables import ScoreCell, score_cells, scores_markdown

__all__ = [
    "SECTIONS",
    "Aggregates",
    "Estimate",
    "Report",
    "RunRecord",
    "ScoreCell",
    "build_report",
    "compute_aggregates",
    "load_run",
    "load_runs",
    "probability_of_improvement",
    "score_cells",
    "scores_markdown",
]
