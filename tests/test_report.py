"""The benchmark report on synthetic run directories: numbers, bad runs, optional rliable, plots, determinism."""

from __future__ import annotations

import builtins
import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybridrl.bench import report as report_mod
from hybridrl.bench.report import SECTIONS, aggregates, build_report
from hybridrl.bench.suites import KINDS

pytest.importorskip("matplotlib")


@pytest.fixture(autouse=True)
def _few_resamples(monkeypatch):
    """200 bootstrap resamples instead of 2000: the intervals stay well defined, the tests stay fast."""
    monkeypatch.setattr(aggregates, "BOOTSTRAP_REPS", 200)

# A 2 methods x 2 datasets x 3 seeds grid; each normalized score is listed so the expected means are
# computed by hand below, not by the code under test.
GRID = {
    ("bc", "hybridrl/hopper/medium-quick-v0"): [40.0, 44.0, 48.0],
    ("bc", "hybridrl/walker/medium-quick-v0"): [20.0, 30.0, 40.0],
    ("cql", "hybridrl/hopper/medium-quick-v0"): [60.0, 62.0, 70.0],
    ("cql", "hybridrl/walker/medium-quick-v0"): [55.0, 50.0, 45.0],
}


def write_run(runs_dir: Path, run_id: str, *, kind: str = "offline", method: str = "bc",
              dataset: str = "hybridrl/hopper/medium-quick-v0", seed: int = 0, steps: int = 100,
              scores: dict[str, Any] | str | None = None, metrics: list[dict[str, Any]] | None = None,
              spec: dict[str, Any] | str | None = None) -> Path:
    """A run directory as the grid runner writes it; strings are written verbatim (to corrupt files)."""
    path = runs_dir / run_id
    path.mkdir(parents=True)
    if spec is None:
        spec = {"run_id": run_id, "suite": "test", "kind": kind, "method": method, "dataset": dataset,
                "seed": seed, "steps": steps, "overrides": {}}
    (path / "spec.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))
    (path / "environment.json").write_text(json.dumps({"python": "3.11", "packages": {}, "device": "cpu",
                                                       "git_commit": "abc1234", "hostname": "test"}))
    if metrics is not None:
        (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    if scores is not None:
        (path / "scores.json").write_text(scores if isinstance(scores, str) else json.dumps(scores))
    return path


def rl_scores(kind: str, method: str, dataset: str, seed: int, normalized: float | None,
              ret: float) -> dict[str, Any]:
    return {"kind": kind, "method": method, "dataset": dataset, "seed": seed, "metric": "normalized_score",
            "score": normalized, "wall_s": 1.0, "return_mean": ret, "return_std": 1.0,
            "normalized_score": normalized, "normalized_std": None if normalized is None else 1.0}


def write_grid(runs_dir: Path) -> None:
    for (method, dataset), values in GRID.items():
        for seed, value in enumerate(values):
            curve = [{"step": step, "eval/normalized_score": value * step / 100, "eval/return": 10 * value}
                     for step in (50, 100)]
            write_run(runs_dir, f"{method}-{dataset.split('/')[1]}-s{seed}", method=method, dataset=dataset,
                      seed=seed, scores=rl_scores("offline", method, dataset, seed, value, 10 * value),
                      metrics=curve)


def read_scores_csv(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open() as f:
        return {(row["method"], row["dataset"]): row for row in csv.DictReader(f)}


def linked_images(report_md: Path) -> list[Path]:
    return [report_md.parent / link for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report_md.read_text())]


def test_grid_means_stds_and_report_links(tmp_path):
    write_grid(tmp_path)
    report = build_report(tmp_path)
    rows = read_scores_csv(report.scores_csv)
    assert set(rows) == set(GRID)
    # Hand-computed: population std (ddof=0) over the three seeds.
    expected = {("bc", "hybridrl/hopper/medium-quick-v0"): (44.0, (32 / 3) ** 0.5),
                ("bc", "hybridrl/walker/medium-quick-v0"): (30.0, (200 / 3) ** 0.5),
                ("cql", "hybridrl/hopper/medium-quick-v0"): (64.0, (56 / 3) ** 0.5),
                ("cql", "hybridrl/walker/medium-quick-v0"): (50.0, (50 / 3) ** 0.5)}
    for key, (mean, std) in expected.items():
        assert float(rows[key]["mean"]) == pytest.approx(mean)
        assert float(rows[key]["std"]) == pytest.approx(std)
        assert rows[key]["n"] == "3"
        assert rows[key]["metric"] == "normalized_score"
    assert "| bc | 44.0 ± 3.3 (n=3) | 30.0 ± 8.2 (n=3) |" in report.scores_md.read_text()
    assert len(report.finished) == 12 and not report.partial and not report.corrupted
    images = [p for p in linked_images(report.report_md) if p.suffix == ".png"]
    assert images and all(p.is_file() for p in images)
    assert any("curves_" in p.name for p in images)
    text = report.table_text()
    assert "cql" in text and "64.0 ± 4.3" in text and "12 finished" in text


def test_return_fallback_when_no_reference_scores(tmp_path):
    for seed, ret in enumerate([100.0, 200.0]):
        write_run(tmp_path, f"sac-s{seed}", kind="online", method="sac", dataset="Toy-v0", seed=seed,
                  scores=rl_scores("online", "sac", "Toy-v0", seed, None, ret))
    report = build_report(tmp_path)
    row = read_scores_csv(report.scores_csv)["sac", "Toy-v0"]
    assert row["metric"] == "return" and float(row["mean"]) == pytest.approx(150.0)
    assert "Toy-v0 (return)" in report.scores_md.read_text()


def test_bad_runs_are_reported_and_the_rest_is_built(tmp_path):
    write_grid(tmp_path)
    write_run(tmp_path, "garbage-scores", seed=7, scores="{not json")
    write_run(tmp_path, "still-running", seed=8, metrics=[{"step": 10, "loss": 1.0}, {"step": 20, "loss": 0.5}])
    write_run(tmp_path, "broken-spec", spec='{"run_id": "broken-spec", "kind": ')
    torn = write_run(tmp_path, "torn-metrics", method="bc", dataset="hybridrl/hopper/medium-quick-v0", seed=9,
                     scores=rl_scores("offline", "bc", "hybridrl/hopper/medium-quick-v0", 9, 52.0, 520.0),
                     metrics=[{"step": 50, "eval/normalized_score": 30.0}])
    with (torn / "metrics.jsonl").open("a") as f:
        f.write('{"step": 100, "eval/norm\n')
    (tmp_path / "notes").mkdir()  # not a run: no run files, skipped silently

    report = build_report(tmp_path)
    status = {r.run_id: (r.status, r.reason) for r in report.partial + report.corrupted}
    assert status["garbage-scores"][0] == "corrupted" and "scores.json is not valid JSON" in status["garbage-scores"][1]
    assert status["still-running"] == ("partial", "no scores.json (last logged step 20 of 100)")
    assert status["broken-spec"][0] == "corrupted" and "spec.json" in status["broken-spec"][1]
    assert status["torn-metrics"][0] == "corrupted" and "metrics.jsonl line 2" in status["torn-metrics"][1]
    assert "notes" not in status and "report" not in status
    assert len(report.finished) == 12

    text = report.report_md.read_text()
    assert "| 12 | 1 | 3 |" in text  # finished, partial, corrupted
    for run_id in status:
        assert f"| {run_id} |" in text
    # The torn run keeps its score (52 joins bc's 40, 44, 48 on hopper); the others leave the table alone.
    row = read_scores_csv(report.scores_csv)["bc", "hybridrl/hopper/medium-quick-v0"]
    assert row["n"] == "4" and float(row["mean"]) == pytest.approx(46.0)
    assert all(p.is_file() for p in linked_images(report.report_md))


def test_runs_with_wrong_keys_are_corrupted(tmp_path):
    dataset = "hybridrl/hopper/medium-quick-v0"
    no_return = rl_scores("offline", "bc", dataset, 0, 1.0, 1.0)
    del no_return["return_mean"]
    write_run(tmp_path, "no-return", scores=no_return)
    write_run(tmp_path, "other-seed", seed=1, scores=rl_scores("offline", "bc", dataset, 5, 1.0, 1.0))
    write_run(tmp_path, "list-scores", seed=2, scores="[1, 2]")
    bad_spec = {"run_id": "x", "suite": "t", "kind": "nonsense", "method": "bc", "dataset": dataset,
                "seed": 0, "steps": 1, "overrides": {}}
    write_run(tmp_path, "bad-kind", spec=bad_spec)
    only_scores = tmp_path / "only-scores"
    only_scores.mkdir()
    (only_scores / "scores.json").write_text(json.dumps(rl_scores("offline", "bc", dataset, 0, 1.0, 1.0)))
    report = build_report(tmp_path)
    reasons = {r.run_id: r.reason for r in report.corrupted}
    assert reasons == {
        "no-return": "scores.json lacks return_mean",
        "other-seed": "scores.json and spec.json disagree on seed",
        "list-scores": "scores.json is not a JSON object",
        "bad-kind": "spec.json has invalid kind",
        "only-scores": "spec.json is missing",
    }
    assert not report.finished and not report.cells
    assert "No offline or online run finished." in report.report_md.read_text()


def _rliable_or_skip() -> None:
    # importorskip catches ImportError only; a broken install (rliable 1.2 + arch 7 under pandas 3)
    # raises TypeError on import, which must skip the test here, not fail it.
    try:
        from rliable import library, metrics  # noqa: F401
    except Exception as err:
        pytest.skip(f"rliable is not importable: {type(err).__name__}: {err}")


def test_aggregates_with_rliable(tmp_path):
    _rliable_or_skip()
    write_grid(tmp_path)
    # A third method with one seed on one dataset, and bc with a fourth seed on hopper only.
    write_run(tmp_path, "iql-hopper-s0", method="iql", seed=0,
              scores=rl_scores("offline", "iql", "hybridrl/hopper/medium-quick-v0", 0, 80.0, 800.0))
    write_run(tmp_path, "bc-hopper-s3", method="bc", seed=3,
              scores=rl_scores("offline", "bc", "hybridrl/hopper/medium-quick-v0", 3, 46.0, 460.0))
    report = build_report(tmp_path)
    agg = report.aggregates
    assert agg.skipped is None
    assert set(agg.iqm) == {"bc", "cql", "iql"}
    datasets, runs, iqm = agg.iqm["cql"]
    assert runs == 3 and len(datasets) == 2
    assert iqm.low <= iqm.value <= iqm.high
    # IQM of cql's six scores {45, 50, 55, 60, 62, 70}: the middle half is 50, 55, 60, 62 (trimmed 25%).
    assert iqm.value == pytest.approx((50 + 55 + 60 + 62) / 4)
    assert agg.iqm["iql"][2].low == agg.iqm["iql"][2].high == 80.0  # one run: the CI degenerates
    assert any("seed(s) 3" in note for note in agg.notes)  # bc's extra hopper seed is named, not hidden
    shared, poi = agg.improvement["bc", "cql"]
    assert len(shared) == 2 and poi.value < 0.5 and poi.low <= poi.value <= poi.high
    assert ("bc", "iql") in agg.improvement and ("cql", "iql") in agg.improvement
    text = report.report_md.read_text()
    assert "Probability of improvement" in text and "aggregate_iqm.png" in text
    assert (report.out_dir / "aggregate_iqm.csv").is_file()


def test_probability_of_improvement_matches_rliable():
    _rliable_or_skip()
    from rliable import metrics

    rng = np.random.default_rng(0)
    for runs_x, runs_y in [(3, 3), (1, 4), (5, 2)]:
        # Rounded so that ties occur, which the Mann-Whitney statistic counts as one half.
        x = rng.normal(size=(runs_x, 3)).round(1)
        y = rng.normal(size=(runs_y, 3)).round(1)
        assert report_mod.probability_of_improvement(x, y) == pytest.approx(
            metrics.probability_of_improvement(x, y))
    same = np.ones((2, 2))
    assert report_mod.probability_of_improvement(same, same) == metrics.probability_of_improvement(same, same)


def test_report_builds_without_rliable(tmp_path, monkeypatch):
    write_grid(tmp_path)
    real_import = builtins.__import__

    def no_rliable(name, *args, **kwargs):
        if name.startswith("rliable"):
            raise ImportError("No module named 'rliable'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rliable)
    report = build_report(tmp_path)
    assert report.aggregates.skipped and "rliable is not available" in report.aggregates.skipped
    text = report.report_md.read_text()
    assert "## Aggregate (rliable)\n\nSkipped: rliable is not available" in text
    assert report.scores_csv.is_file() and report.images


def test_preference_games_and_throughput_sections(tmp_path):
    players = ["sft", "dpo", "ipo"]
    matrix = {"players": players, "win_rate": [[0.5, 0.3, 0.4], [0.7, 0.5, 0.55], [0.6, 0.45, 0.5]],
              "ci_low": [[0.5, 0.2, 0.3], [0.6, 0.5, 0.45], [0.5, 0.35, 0.5]],
              "ci_high": [[0.5, 0.4, 0.5], [0.8, 0.5, 0.65], [0.7, 0.55, 0.5]],
              "num_comparisons": [[0, 64, 64], [64, 0, 64], [64, 64, 0]], "judge": "toy", "seed": 0}
    write_run(tmp_path, "dpo-s0", kind="preference", method="dpo", dataset="toy-sentiment",
              scores={"kind": "preference", "method": "dpo", "dataset": "toy-sentiment", "seed": 0,
                      "metric": "win_rate_vs_sft", "score": 0.7, "wall_s": 3.0, "win_rate_matrix": matrix})
    its = [1, 10, 100, 1000]
    curves = {m: {"iterations": its, "median": [1.0, 0.1 * k, 0.0, 0.0], "q25": [0.8, 0.05, 0.0, 0.0],
                  "q75": [1.2, 0.2, 1e-3, 1e-4], "queries": [200 * i for i in its]}
              for k, m in enumerate(["nash_mp", "egpo"], start=1)}
    write_run(tmp_path, "games-s0", kind="games", method="all", dataset="games-n10-beta0.1",
              scores={"kind": "games", "method": "all", "dataset": "games-n10-beta0.1", "seed": 0,
                      "metric": "final_gap", "score": 0.0, "wall_s": 2.0, "gap_curves": curves,
                      "final_gap": {"nash_mp": 0.0, "egpo": 2e-4}})
    rates = {"achieved_flops_per_s": 1e9, "matmul_flops_per_s": 4e10, "fraction_of_matmul": 0.025,
             "flops_per_update": 1e6, "peak_memory_mb": None}
    write_run(tmp_path, "tp-cql", kind="throughput", method="cql", dataset="hopper",
              scores={"kind": "throughput", "method": "cql", "dataset": "hopper", "seed": 0,
                      "metric": "updates_per_s", "score": 500.0, "wall_s": 5.0, "updates_per_s": 500.0,
                      "device": "cpu", **rates, "reference": {"library": "d3rlpy", "updates_per_s": 250.0, **rates}})
    report = build_report(tmp_path)
    assert len(report.finished) == 3
    names = {p.name for p in report.images}
    assert {"win_rates_dpo-s0.png", "gaps_games-s0.png", "gaps_games-s0_queries.png", "throughput.png"} <= names
    assert all((p.with_suffix(".svg")).is_file() for p in report.images)
    text = report.report_md.read_text()
    assert "| dpo | 0.700 [0.60, 0.80] | 0.500 | 0.550 [0.45, 0.65] |" in text
    assert "| games-n10-beta0.1 | egpo | 0.0002 ± 0 | 1 |" in text
    assert "| cql | hopper | cpu | updates_per_s | 500 | d3rlpy | 250 | 2 | 0.0250 | — |" in text
    assert all(p.is_file() for p in linked_images(report.report_md))
    win_rates = (report.out_dir / "win_rates.csv").read_text().splitlines()
    assert win_rates[0] == "run_id,player,opponent,win_rate,ci_low,ci_high,num_comparisons"
    assert "dpo-s0,dpo,sft,0.7,0.6,0.8,64" in win_rates
    assert (report.out_dir / "games.csv").is_file() and (report.out_dir / "throughput.csv").is_file()


def test_two_builds_are_identical(tmp_path):
    write_grid(tmp_path)
    write_run(tmp_path, "still-running", seed=8, metrics=[{"step": 10}])
    first = build_report(tmp_path)
    snapshot = {p.name: p.read_bytes() for p in first.files if p.suffix in (".csv", ".md", ".svg")}
    second = build_report(tmp_path)
    assert first.files == second.files
    assert snapshot == {p.name: p.read_bytes() for p in second.files if p.suffix in (".csv", ".md", ".svg")}
    assert not list(first.out_dir.rglob("*.tmp"))  # atomic writes leave no temporary files behind


def test_custom_out_dir_and_missing_runs_dir(tmp_path):
    write_grid(tmp_path / "runs")
    report = build_report(tmp_path / "runs", tmp_path / "elsewhere")
    assert report.report_md == tmp_path / "elsewhere" / "report.md" and report.report_md.is_file()
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path / "nope")


def test_report_modules_import_no_plotting_library_at_import():
    sources = sorted(Path(report_mod.__file__).parent.glob("*.py"))
    assert len(sources) > 1
    for source in sources:
        assert not re.search(r"^(import|from) (matplotlib|rliable)", source.read_text(), re.MULTILINE), source


def test_every_run_kind_has_a_section():
    assert set(SECTIONS) == set(KINDS)


def test_the_gap_plot_exists_once():
    # `hybridrl pref games` draws with the report's plot: no preference module imports matplotlib.
    import hybridrl.preference

    for source in Path(hybridrl.preference.__file__).parent.rglob("*.py"):
        assert not re.search(r"^\s*(import|from) matplotlib", source.read_text(), re.MULTILINE), source


def test_model_runs_report_kl_steps_and_judge_calls_beside_each_win_rate(tmp_path):
    def model_scores(kind: str, method: str, seed: int, win: float, kl: float | None, calls: int) -> dict[str, Any]:
        extra = {} if kl is None else {"kl_to_sft": kl}
        return {"kind": kind, "method": method, "dataset": "toy", "seed": seed, "metric": "win_rate_vs_sft",
                "score": win, "wall_s": 1.0, "optimizer_steps": 300, "judge_calls": calls, **extra}

    for seed, (win, kl) in enumerate([(0.8, 1.0), (0.9, 2.0), (0.7, 3.0)]):
        write_run(tmp_path, f"sppo-s{seed}", kind="selfplay", method="sppo", dataset="toy", seed=seed,
                  scores=model_scores("selfplay", "sppo", seed, win, kl, 30720))
    # a run written before KL was measured, and seeds that disagree on judge calls
    write_run(tmp_path, "dpo-s0", kind="preference", method="dpo", dataset="toy",
              scores=model_scores("preference", "dpo", 0, 0.7, None, 2883))
    write_run(tmp_path, "dpo-s1", kind="preference", method="dpo", dataset="toy", seed=1,
              scores=model_scores("preference", "dpo", 1, 0.6, 1.5, 2900))
    report = build_report(tmp_path)
    text = report.report_md.read_text()
    assert "| sppo | toy | 0.800 ± 0.082 | 2.00 ± 0.82 | 300 | 30720 | 3 |" in text
    assert "| dpo | toy | 0.650 ± 0.050 | — | 300 | 2883-2900 | 2 |" in text
    terminal = report.table_text()
    assert "KL to SFT" in terminal and "0.800 ± 0.082" in terminal and "30720" in terminal
    csv_lines = (report.out_dir / "preference.csv").read_text().splitlines()
    assert csv_lines[0] == "method,task,win rate vs SFT,KL to SFT,optimizer steps,judge calls,seeds"
