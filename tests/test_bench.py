"""The benchmark runner: suites as data, resumable grids, the same results through Ray, bundled data."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from _support import TINY_DATASET

from hybridrl.bench import bundled, execute, suites
from hybridrl.bench.runner import GridError, read_scores, run_grid
from hybridrl.bench.suites import RunSpec

TINY_BC = {"hidden": "32,32", "batch_size": "64"}


def tiny_grid(seeds=(0, 1), steps=200) -> list[RunSpec]:
    return [*suites.grid("offline", ["bc"], [TINY_DATASET], seeds, steps=steps, eval_episodes=2, overrides=TINY_BC),
            RunSpec("games", "nash", "games-n4-beta0.1", steps=50, overrides={"games": 3})]


def comparable(scores: dict) -> dict:
    """A scores.json without what depends on the clock."""
    return {k: v for k, v in scores.items() if k not in ("wall_s",)}


def test_every_suite_is_a_list_of_distinct_runs():
    for name in suites.SUITES:
        specs = suites.suite(name)
        assert specs and all(isinstance(s, RunSpec) and s.suite == name for s in specs)
        ids = [s.run_id for s in specs]
        assert len(ids) == len(set(ids)), name


def test_quick_suite_covers_offline_online_preference_and_games():
    kinds = {s.kind for s in suites.suite("quick")}
    assert {"offline", "online", "preference", "games", "winrate"} <= kinds
    assert all(s.dataset in bundled.DATASETS for s in suites.suite("quick") if s.kind == "offline")


def test_select_filters_and_rebudgets():
    specs = suites.select(suites.suite("quick"), methods=["bc"], seeds=[1], steps=7)
    assert [(s.method, s.seed, s.steps) for s in specs] == [("bc", 1, 7)]
    with pytest.raises(ValueError, match="no run of the suite"):
        suites.select(suites.suite("quick"), methods=["nope"])


def test_unknown_suite_method_and_kind_are_clear_errors():
    with pytest.raises(ValueError, match="unknown suite 'd4rl-everything'"):
        suites.suite("d4rl-everything")
    with pytest.raises(ValueError, match="unknown method 'not-a-method': use one of bc, cql, sac, dpo"):
        suites.custom(["not-a-method"], ["x"], [0], steps=10)
    with pytest.raises(ValueError, match="unknown run kind"):
        RunSpec("training", "bc", "x")


def test_custom_grid_takes_each_kind_from_the_registry():
    specs = suites.custom(["bc", "sac"], ["d"], [0, 1], steps=5)
    assert {(s.kind, s.method) for s in specs} == {("offline", "bc"), ("online", "sac")}
    assert len(specs) == 4


def test_grid_runs_once_then_skips_finished_runs(store, tmp_path):
    grid = tiny_grid()
    first = run_grid(grid, tmp_path, workers=1, threads=1, device="cpu", echo=lambda _: None)
    assert sorted(first.finished) == sorted(s.run_id for s in grid) and not first.failed
    for spec in grid:
        run_dir = tmp_path / spec.run_id
        assert json.loads((run_dir / "spec.json").read_text()) == spec.to_dict()
        env = json.loads((run_dir / "environment.json").read_text())
        assert env["device"] == "cpu" and "torch" in env["packages"]
        scores = read_scores(run_dir)
        assert scores["kind"] == spec.kind and scores["seed"] == spec.seed
        assert (run_dir / "config.json").exists()  # the resolved config beside the scores
    bc = read_scores(tmp_path / grid[0].run_id)
    assert bc["metric"] == "normalized_score" and bc["score"] == bc["normalized_score"]
    games = read_scores(tmp_path / grid[-1].run_id)
    assert set(games["final_gap"]) == set(suites.GAME_METHODS)
    assert games["gap_curves"]["nash_mp"]["iterations"][-1] == 50

    stamps = {s.run_id: (tmp_path / s.run_id / "scores.json").stat().st_mtime_ns for s in grid}
    again = run_grid(grid, tmp_path, workers=1, threads=1, device="cpu", echo=lambda _: None)
    assert sorted(again.skipped) == sorted(stamps) and not again.finished
    assert stamps == {s.run_id: (tmp_path / s.run_id / "scores.json").stat().st_mtime_ns for s in grid}


def test_a_directory_holding_another_run_is_refused(store, tmp_path):
    spec = tiny_grid(seeds=(0,))[0]
    run_grid([spec], tmp_path, workers=1, threads=1, device="cpu", echo=lambda _: None)
    with pytest.raises(GridError, match="holds a different run"):
        run_grid([replace(spec, steps=spec.steps + 1)], tmp_path, workers=1, echo=lambda _: None)
    with pytest.raises(GridError, match="same run twice"):
        run_grid([spec, spec], tmp_path / "other", echo=lambda _: None)


def test_a_failing_run_is_reported_and_the_others_finish(store, tmp_path):
    good = tiny_grid(seeds=(0,))[0]
    bad = RunSpec("offline", "bc", "hybridrl/hopper/missing-v0", steps=5)
    result = run_grid([bad, good], tmp_path, workers=1, threads=1, device="cpu", echo=lambda _: None)
    assert result.finished == [good.run_id]
    assert "missing-v0" in result.failed[bad.run_id]
    assert "missing-v0" in (tmp_path / bad.run_id / "error.txt").read_text()


def bench_command(out):
    return [sys.executable, "-m", "hybridrl.cli", "bench", "custom", "--methods", "bc", "--datasets", TINY_DATASET,
            "--seeds", "0,1,2,3", "--steps", "1500", "--eval-episodes", "2", "--set", "hidden=32,32",
            "--workers", "2", "--threads", "1", "--device", "cpu", "--no-report", "--out", str(out)]


@pytest.mark.slow
def test_killed_grid_reruns_only_the_missing_runs(store, tmp_path):
    env = {**os.environ, "MINARI_DATASETS_PATH": str(store), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "grid"
    proc = subprocess.Popen(bench_command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not list(out.glob("*/scores.json")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = {p.parent.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*/scores.json")}
    assert 0 < len(finished_before) < 4, "the grid finished before it could be killed"
    time.sleep(1.0)  # the pool workers die with the grid (PR_SET_PDEATHSIG): no run is left locked
    for lock_path in out.glob("*/.lock"):
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    rerun = subprocess.run(bench_command(out), env=env, capture_output=True, text=True, check=True)
    assert f"{len(finished_before)} of 4 runs already finished" in rerun.stdout
    assert len(list(out.glob("*/scores.json"))) == 4
    for run_id, (content, stamp) in finished_before.items():
        path = out / run_id / "scores.json"
        assert path.read_bytes() == content and path.stat().st_mtime_ns == stamp, f"{run_id} was rerun"


def test_ray_local_gives_the_same_results_as_the_process_pool(store, tmp_path):
    pytest.importorskip("ray")
    grid = tiny_grid()
    run_grid(grid, tmp_path / "pool", workers=2, threads=1, device="cpu", echo=lambda _: None)
    run_grid(grid, tmp_path / "ray", workers=2, threads=1, device="cpu", ray=True, echo=lambda _: None)
    for spec in grid:
        pool, ray = tmp_path / "pool" / spec.run_id, tmp_path / "ray" / spec.run_id
        assert comparable(read_scores(pool)) == comparable(read_scores(ray)), spec.run_id
        for name in ("spec.json", "config.json", "results.json"):
            if (pool / name).exists():
                assert (pool / name).read_text() == (ray / name).read_text(), f"{spec.run_id}/{name}"


@pytest.mark.slow
def test_preference_and_selfplay_runs_and_their_win_rate_matrix(tmp_path):
    pytest.importorskip("transformers")
    settings = {"batch_size": "8", "eval_prompts": "8"}
    runs = [*suites.grid("preference", ["dpo-majority"], [suites.BUNDLED_PREF_TASK], [0], steps=3,
                         overrides=settings),
            RunSpec("selfplay", "inpo", suites.BUNDLED_PREF_TASK, steps=1,
                    overrides={**settings, "prompts_per_iteration": "16", "steps_per_iteration": "2"})]
    matrix = suites.win_rate_matrix(runs, "majority", eval_prompts="8")
    result = run_grid([matrix, *runs], tmp_path, workers=1, threads=1, device="cpu", echo=lambda _: None)
    assert not result.failed and result.finished[-1] == matrix.run_id  # the matrix waits for its players
    for run in runs:
        scores = read_scores(tmp_path / run.run_id)
        low, high = scores["win_rate_ci"]
        assert 0 <= low <= scores["score"] <= high <= 1 and scores["judge"] == "majority"
    assert read_scores(tmp_path / runs[1].run_id)["judge_calls"] > 0
    # evaluation settings never leak into training: self-play samples its own K answers per prompt
    run = json.loads((tmp_path / runs[1].run_id / "config.json").read_text())["run"]
    assert run["samples_per_prompt"] == execute.SELFPLAY_RUN["samples_per_prompt"] and run["batch_size"] == 8
    table = read_scores(tmp_path / matrix.run_id)["win_rate_matrix"]
    assert table["players"] == ["dpo-majority", "inpo", "sft"] and table["judge"] == "majority"
    win = table["win_rate"]
    for i in range(3):
        assert win[i][i] == 0.5
        for j in range(3):
            assert win[i][j] + win[j][i] == pytest.approx(1.0)


def test_preference_settings_are_checked(tmp_path):
    from hybridrl.bench.execute import _typed_settings

    assert _typed_settings({"batch_size": 32, "learning_rate": 1e-4}, {"learning_rate": "3e-4"}) == {
        "batch_size": 32, "learning_rate": 3e-4}
    with pytest.raises(ValueError, match="unknown setting"):
        _typed_settings({"batch_size": 32}, {"lr": "1"})
    with pytest.raises(ValueError, match="expected a int"):
        _typed_settings({"batch_size": 32}, {"batch_size": "many"})


def test_game_labels_parse_or_fail_clearly():
    from hybridrl.bench.execute import parse_game_label

    assert parse_game_label("games-n10-beta0.1-samples100") == {"n": 10, "beta": 0.1, "samples": 100}
    assert parse_game_label("games-n4-beta1") == {"n": 4, "beta": 1.0, "samples": None}
    with pytest.raises(ValueError, match="bad games label"):
        parse_game_label("tictactoe")


def test_bundled_files_match_their_checksums_and_install_into_the_store(tmp_path, monkeypatch):
    bundled.verify()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    from hybridrl.control import datasets

    [dataset_id] = bundled.install_datasets()
    data = datasets.load(dataset_id)
    assert len(data) >= 20_000 and data.env_id == "Hopper-v5"
    assert data.metadata["hybridrl_recipe"] == "medium"


def test_a_changed_bundled_file_is_caught(tmp_path, monkeypatch):
    copy = tmp_path / "assets"
    shutil.copytree(bundled.ASSETS, copy)
    monkeypatch.setattr(bundled, "ASSETS", copy)
    monkeypatch.setattr(bundled, "MANIFEST", copy / "MANIFEST.json")
    (copy / "pref-task" / "task.json").write_text("{}")
    with pytest.raises(bundled.BundleError, match=r"pref-task/task\.json"):
        bundled.verify()


def test_throughput_of_a_method_reports_flops_and_the_matmul_fraction():
    from hybridrl.bench.throughput import measure

    row = measure("bc", device="cpu", threads=1, seconds=0.3, rounds=1, warmup=1)
    assert row["metric"] == "updates_per_s" and row["updates_per_s"] > 0
    assert row["flops_per_update"] > 0 and row["fraction_of_matmul"] > 0
    if row["reference"] is not None:
        assert row["reference"]["library"] == "d3rlpy" and row["reference"]["updates_per_s"] > 0


def test_report_command_on_a_missing_directory_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hybridrl.cli", "report", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a directory" in proc.stderr


def test_preference_runs_without_the_lm_extra_say_how_to_install_it(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    spec = RunSpec("preference", "dpo", suites.BUNDLED_PREF_TASK, steps=1)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'hybridrl\[lm\]'"):
        execute.run_preference_spec(spec, tmp_path, "cpu", 1)


def test_bundled_install_tolerates_a_parallel_install(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    [dataset_id] = bundled.DATASETS
    copytree = shutil.copytree

    def copy_while_another_worker_installs(source, destination, *args, **kwargs):
        # the other worker's rename lands between our copy and our rename
        monkeypatch.setattr(shutil, "copytree", copytree)
        copytree(source, tmp_path / "store" / dataset_id)
        return copytree(source, destination, *args, **kwargs)

    monkeypatch.setattr(shutil, "copytree", copy_while_another_worker_installs)
    assert bundled.install_datasets() == [dataset_id]
    assert not list((tmp_path / "store" / dataset_id).parent.glob(".staging-*"))
