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
from pathlib import Path

import pytest
from _support import TINY_DATASET

from hybridrl.bench import bundled, execute, suites
from hybridrl.bench import settings as bench_settings
from hybridrl.bench.rundir import read_scores
from hybridrl.bench.runner import GridError, run_grid
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
    with pytest.raises(ValueError, match=r"unknown method 'not-a-method': use one of .*bc, .*sac, .*dpo, .*inpo.*"
                                         r"or a bench label \(dpo-majority, fdpo-fkl, fdpo-js, nash\)"):
        suites.custom(["not-a-method"], ["x"], [0], steps=10)
    with pytest.raises(ValueError, match="unknown run kind"):
        RunSpec("training", "bc", "x")


def test_custom_grid_takes_each_kind_from_the_registry():
    specs = suites.custom(["bc", "sac"], ["d"], [0, 1], steps=5)
    assert {(s.kind, s.method) for s in specs} == {("offline", "bc"), ("online", "sac")}
    assert len(specs) == 4
    # bench labels take the kind of the preset file that defines them; registry names their family
    kinds = {s.method: s.kind for s in suites.custom(["fdpo-js", "dpo", "nash-mp", "nash"], ["t"], [0], steps=1)}
    assert kinds == {"fdpo-js": "preference", "dpo": "preference", "nash_mp": "selfplay", "nash": "games"}


def test_a_custom_grid_names_datasets_and_envs_apart():
    [online] = suites.custom(["sac"], [], [0], steps=5, envs=["hopper"])
    assert (online.dataset, online.env, online.run_id) == (None, "hopper", "online-sac-hopper-s0")
    [hybrid] = suites.custom(["sac"], [TINY_DATASET], [0], steps=5, envs=["hopper"])
    assert (hybrid.dataset, hybrid.env) == (TINY_DATASET, "hopper")
    assert hybrid.run_id == "online-sac-hybridrl_hopper_random-v0_hopper-s0"
    assert RunSpec.from_dict(hybrid.to_dict()) == hybrid
    with pytest.raises(ValueError, match="takes no env"):
        RunSpec("games", "nash", "games-n4-beta0.1", "hopper")
    with pytest.raises(ValueError, match="neither a dataset nor an env"):
        RunSpec("online", "sac")


def test_quick_suite_run_ids_and_directories_stay_the_same():
    ids = [s.run_id for s in suites.suite("quick")]
    assert ids[:3] == ["offline-cql-hybridrl_hopper_medium-quick-v0-s0",
                       "offline-cql-hybridrl_hopper_medium-quick-v0-s1", "online-sac-hopper-s0"]
    sac = suites.suite("quick")[2]
    assert (sac.dataset, sac.env) == (None, "hopper")
    # spec.json keeps "dataset" as what the run trains on, which the report groups by
    assert sac.to_dict()["dataset"] == "hopper" and sac.to_dict()["inputs"] == {"dataset": None, "env": "hopper"}


def test_a_spec_json_written_before_envs_were_named_apart_is_the_same_run(store, tmp_path):
    spec = RunSpec("online", "sac", env="hopper", steps=5, suite="quick")
    old = {k: v for k, v in spec.to_dict().items() if k != "inputs"}  # dataset: the env
    run_dir = tmp_path / spec.run_id
    run_dir.mkdir()
    (run_dir / "spec.json").write_text(json.dumps(old))
    (run_dir / "scores.json").write_text(json.dumps({"kind": "online", "method": "sac", "dataset": "hopper",
                                                      "seed": 0, "metric": "return", "score": 1.0}))
    assert RunSpec.from_dict(old) == spec
    result = run_grid([spec], tmp_path, workers=1, echo=lambda _: None)
    assert result.skipped == [spec.run_id]


def test_a_hybrid_grid_trains_on_the_dataset_and_in_the_env(store, tmp_path):
    specs = bench_settings.with_settings(
        suites.custom(["sac"], [TINY_DATASET], [0], steps=40, eval_episodes=1, envs=["hopper"]),
        ["hidden=32,32", "batch_size=32", "learning_starts=20"])
    result = run_grid(specs, tmp_path, workers=1, threads=1, device="cpu", echo=lambda _: None)
    assert result.finished == [specs[0].run_id], result.failed
    config = json.loads((tmp_path / specs[0].run_id / "config.json").read_text())
    assert config["dataset"] == TINY_DATASET and config["run"]["learning_starts"] == 20
    assert config["plan"]["source"] == "hybrid"


def test_preset_and_suite_files_have_sorted_keys_and_say_what_they_are():
    import yaml

    def unsorted(node, where):
        if isinstance(node, dict):
            keys = [str(k) for k in node]
            found = [where] if keys != sorted(keys) else []
            return found + [u for k, v in node.items() for u in unsorted(v, f"{where}.{k}")]
        if isinstance(node, list):
            return [u for i, v in enumerate(node) for u in unsorted(v, f"{where}[{i}]")]
        return []

    files = sorted(suites.PRESETS.rglob("*.yaml"))
    assert {p.stem for p in (suites.PRESETS / "suites").glob("*.yaml")} == set(suites.SUITES)
    for path in files:
        text = path.read_text()
        assert text.startswith("# "), f"{path.name} does not say what it is"
        assert unsorted(yaml.safe_load(text), path.name) == []


def test_the_loops_bench_report_and_cli_dispatch_name_no_method():
    """Dispatch is by family: a method's name appears in its own file, presets and tests, nowhere else."""
    import hybridrl
    from hybridrl import registry

    names = {s.name for s in registry.load_all()} | set(suites.labels())
    root = Path(hybridrl.__file__).parent
    files = [root / "runners.py", root / "registry.py", *(root / "bench").glob("*.py"),
             *(root / "bench" / "report").glob("*.py"), *(root / "cli").glob("*.py")]
    files = [f for f in files if f.name not in ("throughput.py", "pref_throughput.py")]  # reference libraries
    for path in files:
        source = path.read_text()
        assert not [n for n in names if f'"{n}"' in source or f"'{n}'" in source], path


def test_a_bad_suite_file_is_one_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "mine.yaml"
    path.write_text("# a suite\nruns:\n  - {kind: offline, methods: [bc], datasets: [d], seeds: [0], stesp: 5}\n")
    monkeypatch.setitem(suites.SUITES, "mine", path)
    with pytest.raises(ValueError, match=r"mine.yaml, run entry 1: unknown key\(s\) \['stesp'\]"):
        suites.suite("mine")
    path.write_text("# a suite\nruns:\n  - {kind: winrate, judge: weighted, players: [nobody], seeds: [0]}\n")
    with pytest.raises(ValueError, match="players name no earlier group"):
        suites.suite("mine")


def test_demo_options_come_from_its_preset():
    from typer.testing import CliRunner

    from hybridrl.cli import app

    text = CliRunner().invoke(app, ["demo", "--help"], terminal_width=200).output
    for run in suites.preset("demo")["runs"]:
        assert f"--{run['method']}-steps" in text and str(run["steps"]) in text


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
    assert set(games["final_gap"]) == set(bench_settings.games_settings(grid[-1]).methods)
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
    # no wall-clock deadline (a slow machine is not a failure): fail only when the process ends first
    while not list(out.glob("*/scores.json")):
        assert proc.poll() is None, proc.stderr.read().decode()
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
    pairwise, selfplay = (read_scores(tmp_path / run.run_id) for run in runs)
    # every pair of the task relabelled once; self-play: 16 prompts x 4 answers, 6 pairs each
    assert pairwise["judge_calls"] == 2883 and selfplay["judge_calls"] == 16 * 6
    assert (pairwise["optimizer_steps"], selfplay["optimizer_steps"]) == (3, 2)
    for scores in (pairwise, selfplay):
        assert scores["kl_to_sft"] > 0 and scores["kl_to_sft_stderr"] >= 0
    # evaluation settings never leak into training: self-play samples its own K answers per prompt
    run = json.loads((tmp_path / runs[1].run_id / "config.json").read_text())["run"]
    assert run["samples_per_prompt"] == suites.preset("selfplay")["settings"]["samples_per_prompt"]
    assert run["batch_size"] == 8
    table = read_scores(tmp_path / matrix.run_id)["win_rate_matrix"]
    assert table["players"] == ["dpo-majority", "inpo", "sft"] and table["judge"] == "majority"
    win = table["win_rate"]
    for i in range(3):
        assert win[i][i] == 0.5
        for j in range(3):
            assert win[i][j] + win[j][i] == pytest.approx(1.0)


def test_run_settings_go_through_the_one_override_parser():
    spec = RunSpec("preference", "dpo-majority", suites.BUNDLED_PREF_TASK, overrides={"learning_rate": "3e-4"})
    method, loss, settings = bench_settings.pairwise_settings(spec)
    assert (method, loss) == ("dpo", {})
    assert settings.learning_rate == 3e-4 and settings.batch_size == 32 and settings.judge == "majority"
    with pytest.raises(ValueError, match=r"unknown PairwiseRun field\(s\) \['lr'\]; valid: \[.*'learning_rate'"):
        bench_settings.pairwise_settings(replace(spec, overrides={"lr": "1"}))
    with pytest.raises(ValueError, match="batch_size must be int"):
        bench_settings.pairwise_settings(replace(spec, overrides={"batch_size": "many"}))
    # a self-play override that is no run setting is a hyperparameter of the method, typed by its config
    settings, config = bench_settings.selfplay_settings(RunSpec("selfplay", "inpo", suites.BUNDLED_PREF_TASK,
                                                         overrides={"eta": "2", "batch_size": "8"}))
    assert config.eta == 2.0 and config.tau == suites.preset("selfplay")["methods"]["inpo"]["tau"]
    assert settings.batch_size == 8 and settings.judge == "majority"


def test_set_false_reaches_a_run_as_false(monkeypatch, tmp_path):
    import hybridrl.runners

    seen = {}

    def fake_run(method, run_config, **kwargs):
        seen.update(method=method, run=run_config, **kwargs)
        return {"eval": {"std": 0.0, "normalized_std": 0.0}, "normalized_score": 1.0, "return_mean": 2.0}

    monkeypatch.setattr(hybridrl.runners, "run", fake_run)
    [spec] = bench_settings.with_settings(suites.custom(["cql"], [TINY_DATASET], [0], steps=10),
                                   ["tensorboard=false", "lagrange=false", "learning_starts=7"])
    execute.EXECUTORS[spec.kind](spec, tmp_path, "cpu", 1)
    assert seen["run"].tensorboard is False and seen["run"].learning_starts == 7
    assert seen["overrides"] == {"lagrange": "false"}
    _, config = bench_settings.rl_settings(spec)
    assert config.lagrange is False
    with pytest.raises(ValueError, match="tensorboard must be true or false"):
        bench_settings.with_settings([spec], ["tensorboard=maybe"])


def test_unknown_or_misplaced_settings_fail_before_any_run():
    quick = suites.suite("quick")
    with pytest.raises(ValueError, match=r"offline-bc-.*unknown setting\(s\) \['batch_sise'\] for bc: its hyper"):
        bench_settings.with_settings(suites.select(quick, methods=["bc"]), ["batch_sise=64"])
    with pytest.raises(ValueError, match="not --set"):
        bench_settings.with_settings(suites.select(quick, methods=["bc"]), ["steps=64"])
    # SAC's learning_starts is a run setting: the default is the one SAC always had
    sac = suites.select(quick, methods=["sac"])
    assert bench_settings.rl_settings(sac[0])[0].learning_starts == 5000
    [later] = bench_settings.with_settings(sac, ["learning_starts=100"])
    assert bench_settings.rl_settings(later)[0].learning_starts == 100


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


def test_a_methods_preset_for_the_dataset_gives_the_runs_defaults_and_its_overrides_win(monkeypatch, tmp_path):
    import hybridrl.runners

    presets = tmp_path / "methods"
    (presets / "td3bc").mkdir(parents=True)
    (presets / "td3bc" / "hopper-random.yaml").write_text(
        "# test preset\nalpha: 1.5\nbatch_size: 64\nhidden: [32, 32]\nlearning_starts: 3\n")
    monkeypatch.setattr(suites, "METHOD_PRESETS", presets)
    seen = {}

    def fake_run(method, run_config, **kwargs):
        seen.update(method=method, run=run_config, **kwargs)
        return {"eval": {"std": 0.0, "normalized_std": 0.0}, "normalized_score": 1.0, "return_mean": 2.0}

    monkeypatch.setattr(hybridrl.runners, "run", fake_run)
    [spec] = suites.custom(["td3bc"], [TINY_DATASET], [0], steps=10)
    assert suites.method_preset_path("td3bc", TINY_DATASET) == presets / "td3bc" / "hopper-random.yaml"
    run_config, config = bench_settings.rl_settings(spec)
    assert (config.alpha, config.batch_size, config.hidden, run_config.learning_starts) == (1.5, 64, (32, 32), 3)
    [mine] = bench_settings.with_settings([spec], ["alpha=4", "learning_starts=5"])
    run_config, config = bench_settings.rl_settings(mine)
    assert (config.alpha, config.batch_size, run_config.learning_starts) == (4.0, 64, 5)
    # the executor trains with the same values
    execute.EXECUTORS[mine.kind](mine, tmp_path / "run", "cpu", 1)
    assert seen["overrides"] == {"alpha": "4", "batch_size": 64, "hidden": [32, 32]}
    assert seen["run"].learning_starts == 5
    # another method, another namespace or another quality has no preset
    assert suites.method_preset("bc", TINY_DATASET) == {}
    assert suites.method_preset("td3bc", "test/hopper/random-v0") == {}
    assert suites.method_preset("td3bc", "hybridrl/hopper/random-quick-v0") == {}
    assert suites.method_preset_path("td3bc", "mujoco/hopper/random-v0") is not None
    # a preset key that fits neither config names the file
    (presets / "td3bc" / "hopper-random.yaml").write_text("# test preset\nalphaa: 1\n")
    suites._method_preset.cache_clear()
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['alphaa'\] for td3bc \(preset .*hopper-random"):
        bench_settings.rl_settings(spec)
    suites._method_preset.cache_clear()


def test_shipped_method_presets_fit_registered_methods_and_have_one_home():
    from hybridrl import registry

    files = sorted(suites.METHOD_PRESETS.glob("*/*.yaml"))
    assert {p.parent.name for p in files} >= {"td3bc", "iql"}
    for path in files:
        method = registry.get(path.parent.name, families=bench_settings.RL_FAMILIES).name
        task, quality = path.stem.split("-", 1)
        spec = RunSpec("offline", method, f"hybridrl/{task}/{quality}-v0")
        assert suites.method_preset_path(method, spec.dataset) == path
        assert suites.method_preset(method, spec.dataset)
        bench_settings.rl_settings(spec)  # every key a field of the method or the run, every value of its type
    # the benchmarks folder links to the package's files; it holds no copy
    checkout = Path(__file__).parents[1] / "benchmarks" / "configs"
    for method in ("td3bc", "iql"):
        if (checkout / method).exists():
            assert (checkout / method).resolve() == (suites.METHOD_PRESETS / method).resolve()


def test_the_quick_suites_rl_runs_take_no_method_preset():
    for spec in suites.suite("quick"):
        if spec.kind in ("offline", "online", "hybrid"):
            assert suites.method_preset_path(spec.method, spec.dataset) is None, spec.run_id
            assert bench_settings.rl_overrides(spec) == spec.overrides


def test_the_offline_suite_runs_the_baselines_on_medium_and_medium_replay_with_their_presets():
    specs = suites.suite("offline")
    assert {"bc", "td3bc", "iql", "cql"} <= {s.method for s in specs}
    tasks, qualities = ("hopper", "halfcheetah", "walker2d"), ("medium", "medium-replay")
    assert {s.dataset for s in specs} == {f"hybridrl/{t}/{q}-v0" for t in tasks for q in qualities}
    assert {s.seed for s in specs} == {0, 1, 2} and {s.steps for s in specs} == {1_000_000}
    chosen = suites.select(specs, methods=["bc", "td3bc", "iql"], datasets=["hybridrl/hopper/medium-replay-v0"],
                           seeds=[0, 1, 2], steps=20_000)
    assert [(s.method, s.seed, s.steps) for s in chosen] == [(m, seed, 20_000) for m in ("bc", "td3bc", "iql")
                                                              for seed in (0, 1, 2)]
    with_preset = {s.method for s in chosen if suites.method_preset_path(s.method, s.dataset) is not None}
    assert with_preset == {"td3bc", "iql"}
    for spec in chosen:
        bench_settings.rl_settings(spec)  # every preset and setting resolves


def test_throughput_of_td3bc_and_iql_gives_d3rlpy_the_same_settings():
    pytest.importorskip("d3rlpy")
    from hybridrl import registry
    from hybridrl.bench.throughput import _d3rlpy_config, measure

    td3bc = registry.get("td3bc").config()
    ref = _d3rlpy_config("td3bc", td3bc)
    assert ref.actor_encoder_factory.hidden_units == ref.critic_encoder_factory.hidden_units == list(td3bc.hidden)
    assert (ref.batch_size, ref.n_critics, ref.alpha, ref.update_actor_interval, ref.target_smoothing_sigma,
            ref.target_smoothing_clip, ref.tau, ref.gamma) == (
        td3bc.batch_size, td3bc.num_critics, td3bc.alpha, td3bc.policy_delay, td3bc.policy_noise, td3bc.noise_clip,
        td3bc.tau, td3bc.gamma)
    assert ref.observation_scaler is not None  # normalized states, as ours
    iql = registry.get("iql").config()
    ref = _d3rlpy_config("iql", iql)
    assert ref.value_encoder_factory.hidden_units == list(iql.hidden)
    assert (ref.batch_size, ref.n_critics, ref.expectile, ref.weight_temp, ref.max_weight) == (
        iql.batch_size, iql.num_critics, iql.expectile, iql.temperature, iql.max_weight)
    assert ref.reward_scaler.multiplier == 1000.0 and ref.observation_scaler is not None
    assert ref.actor_optim_factory.lr_scheduler_factory is not None  # the cosine decay of the actor's rate
    for method in ("td3bc", "iql"):
        row = measure(method, device="cpu", threads=1, seconds=0.2, rounds=1, warmup=1, rows=2000)
        assert row["updates_per_s"] > 0 and row["reference"]["updates_per_s"] > 0
        # equal networks and batch: the FLOPs of an update agree up to what each recomputes
        assert 0.7 < row["flops_per_update"] / row["reference"]["flops_per_update"] < 1.3, method
