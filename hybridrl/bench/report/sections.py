"""The sections of report.md, and :data:`SECTIONS`, which says which section shows each kind of run.

A section is a function of the usable runs of its kinds and the :class:`Page` being built; it
returns its markdown ("" to leave itself out) and adds its tables to ``page.files``. The report
picks sections by a run's kind, never by its method: a section prints whatever methods its runs hold.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hybridrl.bench.report.aggregates import Aggregates, aggregate_csvs, aggregate_markdown
from hybridrl.bench.report.plots import (
    Figures,
    plot_aggregate,
    plot_conservatism,
    plot_learning_curves,
    plot_run_gap_curves,
    plot_throughput,
    plot_win_rates,
)
from hybridrl.bench.report.runs import RATE_KEYS, RunRecord, finite, is_number, read_json
from hybridrl.bench.report.tables import (
    MODEL_SCORE_HEADERS,
    SCORE_CSV_HEADERS,
    ScoreCell,
    csv_number,
    csv_text,
    fmt,
    fmt_g,
    md_table,
    model_scores,
    rl_runs,
    score_rows,
    scores_markdown,
)
from hybridrl.bench.rundir import ENVIRONMENT


@dataclass
class Page:
    """What the sections of one report share: the figure writer (None without matplotlib), the
    offline/online score cells and aggregates, and the files to write beside report.md."""

    figs: Figures | None
    cells: list[ScoreCell]
    aggregates: Aggregates
    files: dict[str, str] = field(default_factory=dict)


Section = Callable[[list[RunRecord], Page], str]


def _image(alt: str, stem: str) -> str:
    return f"![{alt}]({stem}.png) ([SVG]({stem}.svg))"


# (column, metric key) of the conservatism table: estimate, obtained and gap, at start states then on data.
CONSERVATISM_COLUMNS = (("Q(s0, pi(s0))", "eval/q_start"), ("discounted return", "eval/discounted_return"),
                        ("start gap", "eval/q_start_gap"), ("Q(s, a) data", "eval/q_data"),
                        ("return-to-go data", "eval/rtg_data"), ("data gap", "eval/q_data_gap"))


def conservatism_markdown(runs: list[RunRecord], page: Page) -> str:
    """Q-method runs: the critic's estimates against the returns obtained at the final evaluation
    (mean ± std over seeds), and per dataset a figure of both over the run ("" when no run has them)."""
    groups: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    keys = [key for _, key in CONSERVATISM_COLUMNS]
    for run in sorted(rl_runs(runs), key=lambda r: (r.spec["method"], r.spec["dataset"], r.spec["seed"])):
        final = next((row for row in reversed(run.metrics)
                      if finite(row.get("eval/q_start")) is not None or finite(row.get("eval/q_data")) is not None),
                     None)
        if final is not None:
            groups[run.spec["method"], run.spec["dataset"]].append(
                {key: v for key in keys if (v := finite(final.get(key))) is not None})
    if not groups:
        return ""
    rows, csv_rows = [], []
    for (method, dataset), finals in sorted(groups.items()):
        cells, numbers = [], []
        for key in keys:
            values = [f[key] for f in finals if key in f]
            mean, std = (float(np.mean(values)), float(np.std(values))) if values else (None, None)
            numbers += [mean, std]
            cells.append("—" if mean is None else f"{fmt_g(mean)} ± {fmt_g(std)}")
        rows.append([method, dataset, *cells, len(finals)])
        csv_rows.append([method, dataset, *map(csv_number, numbers), len(finals)])
    text = ("### Conservatism (methods with q_values)\n\nThe critic's estimate against the discounted return"
            " obtained, at the final evaluation (mean ± std over seeds; gap = estimate - obtained, negative is"
            " conservative): at the evaluation episodes' start states, and on a fixed sample of dataset states"
            " with their dataset actions and returns-to-go (see `hybridrl.control.conservatism`).\n\n")
    text += md_table(["method", "dataset", *(name for name, _ in CONSERVATISM_COLUMNS), "n"], rows)
    page.files["conservatism.csv"] = csv_text(
        ["method", "dataset", *(f"{key.removeprefix('eval/')}_{stat}" for key in keys for stat in ("mean", "std")),
         "n"], csv_rows)
    text += "\nAlso as [conservatism.csv](conservatism.csv).\n"
    if page.figs is not None:
        for dataset, stem in plot_conservatism(page.figs, runs):
            text += f"\n{_image(f'conservatism {dataset}', stem)}\n"
    return text


def rl_section(runs: list[RunRecord], page: Page) -> str:
    """Offline and online runs: the scores table, learning curves and the rliable aggregates.

    Always shown, so that a report without such runs says that none finished.
    """
    scores_md = scores_markdown(page.cells)
    page.files["scores.md"] = "# Scores\n\n" + scores_md
    page.files["scores.csv"] = csv_text(SCORE_CSV_HEADERS, score_rows(page.cells))
    parts = ["## Scores (offline and online)\n\n" + scores_md + "\nAlso as [scores.md](scores.md) and"
             " [scores.csv](scores.csv).\n"]
    if page.figs is not None:
        for dataset, stem in plot_learning_curves(page.figs, runs):
            parts.append(f"### Learning curves: {dataset}\n\n{_image(dataset, stem)}\n")
    conservatism = conservatism_markdown(runs, page)
    if conservatism:
        parts.append(conservatism)
    agg = page.aggregates
    image = plot_aggregate(page.figs, agg) if page.figs is not None and agg.iqm else None
    parts.append(aggregate_markdown(agg, image))
    if not agg.skipped:
        page.files.update(aggregate_csvs(agg))
    return "\n".join(parts)


def _win_rate_table(run: RunRecord, long_rows: list[list[str]]) -> str:
    """One run's win-rate matrix as markdown; its cells are also appended to ``long_rows`` (win_rates.csv)."""
    matrix = run.scores["win_rate_matrix"]
    players = matrix["players"]
    text = (f"\n### Win rates: {run.run_id}\n\nP(row beats column), judge {matrix.get('judge', '?')},"
            " 95% CI in brackets where given.\n\n")
    table = []
    for i, row_player in enumerate(players):
        cells = [row_player]
        for j in range(len(players)):
            cell = fmt(matrix["win_rate"][i][j], 3)
            if "ci_low" in matrix and "ci_high" in matrix and i != j:
                cell += f" [{fmt(matrix['ci_low'][i][j], 2)}, {fmt(matrix['ci_high'][i][j], 2)}]"
            cells.append(cell)
            long_rows.append([run.run_id, row_player, players[j], csv_number(matrix["win_rate"][i][j]),
                              *(csv_number(matrix[k][i][j]) if k in matrix else ""
                                for k in ("ci_low", "ci_high", "num_comparisons"))])
        table.append(cells)
    return text + md_table(["", *players], table)


def preference_section(runs: list[RunRecord], page: Page) -> str:
    """Pairwise, self-play and win-rate runs: headline scores, then every win-rate matrix with its heatmap."""
    if not runs:
        return ""
    text = "## Preference\n\n"
    rows = model_scores(runs)
    if rows:
        text += ("Against the task's SFT model on its test prompts: win rate (ties count one half) and KL(policy"
                 " ‖ SFT) per answer in nats, mean ± std over seeds; the training's optimizer steps and judge"
                 " calls.\n\n" + md_table(MODEL_SCORE_HEADERS, rows))
    long_rows: list[list[str]] = []
    for run in runs:
        if run.scores.get("win_rate_matrix") is None:
            continue
        text += _win_rate_table(run, long_rows)
        if page.figs is not None:
            text += f"\n{_image(f'win rates {run.run_id}', plot_win_rates(page.figs, run))}\n"
    page.files["preference.csv"] = csv_text(MODEL_SCORE_HEADERS, rows)
    if long_rows:
        page.files["win_rates.csv"] = csv_text(
            ["run_id", "player", "opponent", "win_rate", "ci_low", "ci_high", "num_comparisons"], long_rows)
    return text


def games_section(runs: list[RunRecord], page: Page) -> str:
    """Nash-game runs: the final duality gap per game and solver, and each run's gap curves."""
    if not runs:
        return ""
    text = "## Nash games\n\nFinal duality gap per solver (mean ± std over seeds; lower is better).\n\n"
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in runs:
        for method, gap in run.scores["final_gap"].items():
            groups[run.spec["dataset"], method].append(float(gap))
    rows = [[label, method, f"{float(np.mean(v)):.3g} ± {float(np.std(v)):.2g}", len(v)]
            for (label, method), v in sorted(groups.items())]
    text += md_table(["game", "solver", "final gap", "n"], rows)
    page.files["games.csv"] = csv_text(
        ["game", "solver", "final_gap_mean", "final_gap_std", "n"],
        [[label, method, csv_number(np.mean(v)), csv_number(np.std(v)), len(v)]
         for (label, method), v in sorted(groups.items())])
    if page.figs is not None:
        for run in runs:
            text += f"\n{_image(f'duality gaps {run.run_id}', plot_run_gap_curves(page.figs, run))}\n"
            # against the preference comparisons used too: an extragradient iteration costs two evaluations
            if all("queries" in curve for curve in run.scores["gap_curves"].values()):
                stem = plot_run_gap_curves(page.figs, run, x="queries")
                text += f"\n{_image(f'duality gaps per oracle query {run.run_id}', stem)}\n"
    return text


def throughput_section(runs: list[RunRecord], page: Page) -> str:
    """Throughput runs: ours against the reference library, and the fraction of the machine's matmul rate."""
    if not runs:
        return ""
    text = ("## Throughput\n\nOurs against the reference library measured in the same run; the fraction is"
            " achieved FLOP/s over the machine's measured matmul FLOP/s.\n\n")
    headers = ["method", "dataset", "device", "unit", "ours", "reference", "reference value", "ratio",
               "fraction of matmul", "peak memory (MB)"]
    rows, csv_rows = [], []
    for run in runs:
        s = run.scores
        unit = next(key for key in RATE_KEYS if is_number(s.get(key)))
        ref = s.get("reference") if isinstance(s.get("reference"), dict) else {}
        ref_value = finite(ref.get(unit))
        ratio = s[unit] / ref_value if ref_value else None
        fraction = finite(s.get("fraction_of_matmul"))
        values = [run.spec["method"], run.spec["dataset"], s["device"], unit]
        rows.append([*values, fmt_g(s[unit]), ref.get("library", "—"), fmt_g(ref_value),
                     fmt_g(ratio), fmt(fraction, 4), fmt_g(s.get("peak_memory_mb"))])
        csv_rows.append([*values, csv_number(s[unit]), ref.get("library", ""), csv_number(ref_value),
                         csv_number(ratio), csv_number(fraction), csv_number(s.get("peak_memory_mb")),
                         csv_number(s.get("achieved_flops_per_s")), csv_number(s.get("matmul_flops_per_s"))])
    text += md_table(headers, rows)
    page.files["throughput.csv"] = csv_text(
        ["method", "dataset", "device", "unit", "ours", "reference_library", "reference", "ratio",
         "fraction_of_matmul", "peak_memory_mb", "achieved_flops_per_s", "matmul_flops_per_s"], csv_rows)
    if page.figs is not None:
        text += f"\n{_image('throughput', plot_throughput(page.figs, runs))}\n"
    return text


# Run kind -> the section that shows it. Sections appear in report.md in the order of their first
# kind here, and a section shared by several kinds gets their runs in this order, each kind's by name.
SECTIONS: dict[str, Section] = {
    "offline": rl_section,
    "online": rl_section,
    "hybrid": rl_section,
    "preference": preference_section,
    "selfplay": preference_section,
    "winrate": preference_section,
    "games": games_section,
    "throughput": throughput_section,
}


def runs_by_section(runs: Sequence[RunRecord]) -> dict[Section, list[RunRecord]]:
    """Every section of :data:`SECTIONS` (each once, in order) with the usable runs it shows."""
    grouped: dict[Section, list[RunRecord]] = {section: [] for section in SECTIONS.values()}
    for kind, section in SECTIONS.items():
        grouped[section] += [run for run in runs if run.usable and run.spec["kind"] == kind]
    return grouped


def status_section(runs: Sequence[RunRecord]) -> str:
    """How many runs finished, are partial or corrupted, and why each unfinished one is so."""
    counts = {status: sum(r.status == status for r in runs) for status in ("finished", "partial", "corrupted")}
    text = "## Run status\n\n" + md_table(["finished", "partial", "corrupted"], [list(counts.values())])
    bad = [r for r in runs if r.status != "finished"]
    if bad:
        text += "\n" + md_table(["run", "status", "reason"], [[r.run_id, r.status, r.reason] for r in bad])
    return text


def provenance_section(runs: Sequence[RunRecord]) -> str:
    """The distinct git commits and devices recorded in the runs' environment.json ("" when none)."""
    commits: set[str] = set()
    devices: set[str] = set()
    for run in runs:
        env, error = read_json(run.path / ENVIRONMENT) if (run.path / ENVIRONMENT).exists() else (None, "")
        if error is None and isinstance(env, dict):
            commits.add(str(env.get("git_commit")))
            devices.add(str(env.get("device")))
    if not commits:
        return ""
    return (f"## Provenance\n\n- git commits: {', '.join(sorted(commits))}\n"
            f"- devices: {', '.join(sorted(devices))}\n")
