"""The command line: bad input gives one line on stderr and a non-zero exit; the happy paths run."""

import json

import minari
import numpy as np
import pytest
from _support import TINY_DATASET, make_episode
from minari.data_collector import EpisodeBuffer
from typer.testing import CliRunner

from hybridrl.cli import EXIT_BAD_INPUT, EXIT_DIVERGED, app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_algorithm(store):
    result = invoke("train", "nope", "--dataset", TINY_DATASET)
    assert_one_line_error(result, EXIT_BAD_INPUT, "unknown method 'nope'", "hybridrl algos")
    result = invoke("train", "cqll", "--dataset", TINY_DATASET)
    assert_one_line_error(result, EXIT_BAD_INPUT, "did you mean cql")


def test_unknown_dataset_id(store):
    result = invoke("train", "cql", "--dataset", "hybridrl/hopper/missing-v0")
    assert_one_line_error(result, EXIT_BAD_INPUT, "unknown dataset 'hybridrl/hopper/missing-v0'", "hybridrl data make")


def test_unknown_task_and_quality(store):
    assert_one_line_error(invoke("data", "make", "pong", "random", "--small"), EXIT_BAD_INPUT, "unknown task 'pong'")
    assert_one_line_error(invoke("data", "make", "hopper", "legendary"), EXIT_BAD_INPUT,
                          "unknown quality 'legendary'", "available")
    assert_one_line_error(invoke("data", "make", "hopper", "medium", "--sac-hidden", "256,wide"), EXIT_BAD_INPUT,
                          "--sac-hidden '256,wide' is not a list of positive widths", "256,256")


def test_bad_override(store):
    result = invoke("train", "cql", "--dataset", TINY_DATASET, "--set", "cql_alpha=lots")
    assert_one_line_error(result, EXIT_BAD_INPUT, "cql_alpha must be float")
    result = invoke("train", "cql", "--dataset", TINY_DATASET, "--set", "typo=1")
    assert_one_line_error(result, EXIT_BAD_INPUT, "unknown CQLConfig field(s) ['typo']")


def test_unknown_device(store):
    result = invoke("train", "bc", "--dataset", TINY_DATASET, "--device", "tpu")
    assert_one_line_error(result, EXIT_BAD_INPUT, "unknown device 'tpu'")


def test_missing_run_directory(tmp_path):
    result = invoke("eval", tmp_path / "nowhere")
    assert_one_line_error(result, EXIT_BAD_INPUT, "is not a run directory")


def _write_raw_minari(dataset_id, episode):
    """Write through Minari itself, bypassing hybridrl's validation, to get a bad dataset on disk."""
    import gymnasium as gym

    env = gym.make("Hopper-v5")
    buffer = EpisodeBuffer(id=0, observations=episode["observations"], actions=episode["actions"],
                           rewards=list(episode["rewards"]), terminations=list(episode["terminations"]),
                           truncations=list(episode["truncations"]), infos={})
    minari.create_dataset_from_buffers(dataset_id, [buffer], env=env, eval_env=env, algorithm_name="x",
                                       ref_min_score=0.0, ref_max_score=1.0, description="bad",
                                       author="t", author_email="t@t", code_permalink="t")


@pytest.mark.filterwarnings("ignore")
def test_nan_in_a_dataset_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    episode = make_episode(6, obs_dim=11, act_dim=3)
    episode["rewards"][3] = np.nan
    _write_raw_minari("bad/hopper/nan-v0", episode)
    result = invoke("data", "info", "bad/hopper/nan-v0")
    assert_one_line_error(result, EXIT_BAD_INPUT, "bad/hopper/nan-v0", "rewards hold NaN or inf (first at step 3)")
    result = invoke("train", "cql", "--dataset", "bad/hopper/nan-v0")
    assert_one_line_error(result, EXIT_BAD_INPUT, "NaN")


def _corrupt_episode(tmp_path, dataset_id, edit):
    """A valid dataset written by hybridrl, then edited in its HDF5 file."""
    import h5py

    from hybridrl.control import datasets

    path = datasets.write(dataset_id, [make_episode(5, obs_dim=11, act_dim=3)], env_id="Hopper-v5",
                          ref_min_score=0.0, ref_max_score=1.0, description="d", algorithm_name="a")
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        edit(f["episode_0"])


@pytest.mark.filterwarnings("ignore")
def test_missing_field_wrong_shape_and_empty_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))

    def drop_rewards(episode):
        del episode["rewards"]

    def short_observations(episode):
        obs = episode["observations"][:-1]
        del episode["observations"]
        episode["observations"] = obs

    _corrupt_episode(tmp_path, "bad/hopper/fields-v0", drop_rewards)
    result = invoke("train", "bc", "--dataset", "bad/hopper/fields-v0")
    assert_one_line_error(result, EXIT_BAD_INPUT, "bad/hopper/fields-v0", "malformed", "rewards")
    _corrupt_episode(tmp_path, "bad/hopper/shape-v0", short_observations)
    result = invoke("train", "bc", "--dataset", "bad/hopper/shape-v0")
    assert_one_line_error(result, EXIT_BAD_INPUT, "5 observations for 5 steps", "T+1 observations")
    import gymnasium as gym

    env = gym.make("Hopper-v5")
    minari.create_dataset_from_buffers("bad/hopper/empty-v0", [], env=env, eval_env=env, algorithm_name="x",
                                       ref_min_score=0.0, ref_max_score=1.0, description="empty",
                                       author="t", author_email="t@t", code_permalink="t")
    result = invoke("data", "info", "bad/hopper/empty-v0")
    assert_one_line_error(result, EXIT_BAD_INPUT, "holds no episodes")


def test_diverging_run_exits_with_its_own_code(store, tmp_path):
    # Absurd learning rates blow the critic up within a few hundred updates.
    result = invoke("train", "cql", "--dataset", TINY_DATASET, "--steps", 400, "--log-every", 10,
                    "--checkpoint-every", 10, "--eval-every", 0, "--no-progress", "--out", tmp_path / "run",
                    "--set", "hidden=16,16", "--set", "critic_lr=1e8", "--set", "actor_lr=1e8",
                    "--set", "num_sampled_actions=2", "--set", "batch_size=32")
    assert_one_line_error(result, EXIT_DIVERGED, "training diverged at step", "lower the learning rates")


def test_data_list_and_info(store):
    result = invoke("data", "list")
    assert result.exit_code == 0 and TINY_DATASET in result.output
    result = invoke("data", "info", TINY_DATASET)
    assert result.exit_code == 0
    assert "Hopper-v5" in result.output and "random -20.27  expert 3234.30" in result.output


def test_train_then_eval(store, tmp_path):
    out = tmp_path / "bc"
    result = invoke("train", "bc", "--dataset", TINY_DATASET, "--steps", 30, "--eval-episodes", 2,
                    "--no-progress", "--out", out)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert len(results["eval"]["returns"]) == 2 and results["normalized_score"] is not None
    result = invoke("eval", out, "--episodes", 2, "--device", "cpu")
    assert result.exit_code == 0 and "normalized" in result.output


def test_demo_prints_a_score_table(store, tmp_path):
    result = invoke("demo", "--bc-steps", 20, "--cql-steps", 4, "--out", tmp_path / "demo", "--device", "cpu")
    assert result.exit_code == 0, result.output
    table = result.output.split("normalized score")[1]
    assert "bc" in table and "cql" in table


def test_algos_lists_every_registered_method_with_its_family():
    from hybridrl import registry

    result = invoke("algos")
    assert result.exit_code == 0
    rows = {tuple(line.split()[:2]) for line in result.stdout.splitlines() if line.strip()}
    for spec in registry.load_all():
        assert (spec.name, spec.family) in rows
    assert {spec.family for spec in registry.load_all()} >= {"offline", "online", "preference", "selfplay", "games"}


def test_algos_name_and_train_help_show_every_hyperparameter_with_default_and_docstring():
    import dataclasses

    from hybridrl.core.config import describe_fields, field_docs
    from hybridrl.offline.cql import CQLConfig

    docs = field_docs(CQLConfig)
    assert all(docs.values()), [k for k, v in docs.items() if not v]  # every field documented
    shown = invoke("algos", "cql").stdout
    for name, default, doc in describe_fields(CQLConfig()):
        line = next(row for row in shown.splitlines() if row.split() and row.split()[0] == name)
        assert line.split()[1] == default and doc in line
    helped = " ".join(runner.invoke(app, ["train", "cql", "--help"], env={"COLUMNS": "400"}).stdout.split())
    for field in dataclasses.fields(CQLConfig):
        assert "--" + field.name.replace("_", "-") in helped
        assert " ".join(docs[field.name].split()[:4]) in helped
    assert "--steps" in helped and "Gradient updates (offline)" in helped


def test_a_reader_that_stops_reading_is_not_an_error():
    import subprocess
    import sys

    proc = subprocess.run(f"{sys.executable} -m hybridrl.cli algos cql | head -1", shell=True, capture_output=True,
                          text=True, check=True)
    assert proc.stdout.startswith("cql (offline)") and proc.stderr == ""


def test_train_starts_from_the_datasets_preset_and_options_override_it(store, tmp_path, monkeypatch):
    from hybridrl.bench import suites

    presets = tmp_path / "presets"
    (presets / "td3bc").mkdir(parents=True)
    (presets / "td3bc" / "hopper-random.yaml").write_text("batch_size: 8\nalpha: 4.0\n")
    monkeypatch.setattr(suites, "METHOD_PRESETS", presets)

    def train(out, *options):
        result = invoke("train", "td3bc", "--dataset", TINY_DATASET, "--steps", 2, "--eval-episodes", 1,
                        "--eval-every", 0, "--no-progress", "--out", tmp_path / out, *options)
        assert result.exit_code == 0, result.output
        method = json.loads((tmp_path / out / "config.json").read_text())["algo_config"]
        return result.stdout, method

    shown, method = train("preset")
    assert "preset: " in shown and "hopper-random.yaml" in shown
    assert (method["batch_size"], method["alpha"]) == (8, 4.0)
    # An option typed on the command line wins, even when it equals the method's default.
    _, method = train("typed", "--alpha", "2.5", "--set", "batch_size=16")
    assert (method["batch_size"], method["alpha"]) == (16, 2.5)
    shown, method = train("defaults", "--no-preset")
    assert "preset: " not in shown and (method["batch_size"], method["alpha"]) == (256, 2.5)
