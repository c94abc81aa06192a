"""The ``hybridrl`` command: data, train, eval, bench, report, demo, algos (and ``pref`` for language models).

Thin: it parses, calls the library, prints. Bad input ends with one line on stderr naming the
problem and the fix, and a non-zero exit code (2 for bad input, 1 for a diverged run).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Offline, hybrid and preference-based policy optimization.")
data_app = typer.Typer(no_args_is_help=True, help="Make, list and inspect Minari datasets.")
app.add_typer(data_app, name="data")

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 1

DEMO_TRANSITIONS = 20_000


def user_errors(fn):
    """Turn the library's errors about user input into one stderr line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from hybridrl.bench.bundled import BundleError
        from hybridrl.control.datasets import DatasetError
        from hybridrl.factory import BehaviourPolicyError
        from hybridrl.runners import DivergenceError, RunDirectoryError

        try:
            return fn(*args, **kwargs)
        except (DivergenceError, BehaviourPolicyError, BundleError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(EXIT_DIVERGED) from None
        except (DatasetError, RunDirectoryError, ValueError, KeyError, FileNotFoundError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper


@data_app.command("list")
@user_errors
def data_list() -> None:
    """List the datasets in the local Minari store and the recipes `data make` offers."""
    from hybridrl.control.datasets import datasets_root, local_dataset_ids
    from hybridrl.factory import FACTORY_TASKS, QUALITIES

    ids = local_dataset_ids()
    typer.echo(f"local Minari store: {datasets_root()}")
    for dataset_id in ids:
        typer.echo(f"  {dataset_id}")
    if not ids:
        typer.echo("  (empty)")
    typer.echo(f"recipes for `hybridrl data make TASK QUALITY`: tasks {', '.join(FACTORY_TASKS)}; "
               f"qualities {', '.join(QUALITIES)}")


@data_app.command("make")
@user_errors
def data_make(
    task: Annotated[str, typer.Argument(help="hopper, halfcheetah or walker2d")],
    quality: Annotated[str, typer.Argument(help="random, medium, medium-replay, expert or medium-expert")],
    small: Annotated[bool, typer.Option("--small", help="Laptop preset: 100k transitions, 300k SAC steps.")] = False,
    transitions: Annotated[int | None, typer.Option(help="Transitions per rolled-out dataset (D4RL: 1M).")] = None,
    sac_steps: Annotated[int | None, typer.Option(help="SAC environment steps for the expert policy.")] = None,
    sac_hidden: Annotated[str | None, typer.Option(help="Behaviour SAC's hidden widths, e.g. 256,256.")] = None,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (SAC training).")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset.")] = False,
    progress: bool = True,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads for SAC (default: one per core).")] = None,
    out_id: Annotated[str | None, typer.Option("--id", help="Dataset id (default hybridrl/TASK/QUALITY-v0).")] = None,
) -> None:
    """Make a D4RL-style dataset from real MuJoCo rollouts into the local Minari store.

    Behaviour policies are trained with SAC once and reused; an interrupted command resumes.
    """
    from hybridrl.core.config import with_overrides
    from hybridrl.factory import factory_config, make_dataset
    from hybridrl.online.sac import SACConfig

    if transitions is not None and transitions <= 0:
        raise ValueError("--transitions must be positive")
    widths = None
    if sac_hidden is not None:
        try:  # the same comma-list parsing as every config override
            widths = with_overrides(SACConfig(), {"hidden": sac_hidden}).hidden
        except ValueError:
            widths = ()
        if not widths or min(widths) <= 0:
            raise ValueError(f"--sac-hidden {sac_hidden!r} is not a list of positive widths: use e.g. 256,256")
    config = factory_config(small, transitions=transitions, sac_steps=sac_steps, sac_hidden=widths)
    dataset_id = make_dataset(task, quality, config=config, seed=seed, device=device, overwrite=overwrite,
                              progress=progress, threads=threads, out_id=out_id)
    typer.echo(f"wrote {dataset_id}")


@data_app.command("info")
@user_errors
def data_info(dataset_id: str, download: bool = False) -> None:
    """Episodes, transitions, return statistics and reference scores of a dataset."""
    import numpy as np

    from hybridrl.control import datasets
    from hybridrl.control.scores import normalized_score

    data = datasets.load(dataset_id, download=download)
    ret = data.episode_returns
    typer.echo(f"dataset       {dataset_id}")
    typer.echo(f"environment   {data.env_id}")
    typer.echo(f"episodes      {len(ret)}")
    ends = f"terminals {int(data.terminals.sum())}, timeouts {int(data.timeouts.sum())}"
    typer.echo(f"transitions   {len(data)} ({ends})")
    typer.echo(f"obs/act dims  {data.obs_dim} / {data.act_dim}")
    typer.echo(f"return        mean {ret.mean():.1f}  std {ret.std():.1f}  min {ret.min():.1f}  max {ret.max():.1f}")
    if data.ref_scores is not None:
        norm = normalized_score(ret, *data.ref_scores)
        typer.echo(f"reference     random {data.ref_scores[0]:.2f}  expert {data.ref_scores[1]:.2f}")
        typer.echo(f"normalized    mean {np.mean(norm):.1f}  std {np.std(norm):.1f}")
    else:
        typer.echo("reference     none stored (normalized scores unavailable)")
    recorded = {key.removeprefix("hybridrl_"): value for key, value in sorted(data.metadata.items())
                if key.startswith("hybridrl_")}
    if recorded:
        typer.echo("recorded by the factory:")
        for key, value in recorded.items():
            typer.echo(f"  {key:<26} {value}")


@app.command("algos")
def algos() -> None:
    """List the registered RL methods."""
    from hybridrl import registry

    for spec in registry.load_all().values():
        typer.echo(f"{spec.name:<8} {spec.family:<8} {spec.summary}")


@app.command("train")
@user_errors
def train(
    algo: Annotated[str, typer.Argument(help="Method name (see `hybridrl algos`).")],
    dataset: Annotated[str | None, typer.Option(help="Minari dataset id (offline methods).")] = None,
    env: Annotated[str | None, typer.Option(help="Task of online methods: hopper, walker2d, a Gymnasium id...")] = None,
    steps: Annotated[int, typer.Option(help="Gradient updates.")] = 1_000_000,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/ALGO-DATASET-sSEED).")] = None,
    eval_every: int = 5000,
    eval_episodes: int = 10,
    log_every: int = 1000,
    checkpoint_every: int = 10_000,
    param: Annotated[list[str] | None, typer.Option("--set", help="Override a hyperparameter: KEY=VALUE.")] = None,
    download: Annotated[bool, typer.Option(help="Download the dataset from Minari's server if missing.")] = False,
    tensorboard: bool = False,
    progress: bool = True,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: one per core).")] = None,
) -> None:
    """Train a method (offline: --dataset; online: --env); rerunning the command resumes it."""
    from hybridrl.core.config import RunConfig
    from hybridrl.runners import run_offline, run_online

    run = RunConfig(steps=steps, seed=seed, device=device, eval_every=eval_every, eval_episodes=eval_episodes,
                    log_every=log_every, checkpoint_every=checkpoint_every, tensorboard=tensorboard,
                    progress=progress, threads=threads)
    if (dataset is None) == (env is None):
        raise ValueError("give exactly one of --dataset (offline methods) or --env (online methods)")
    if dataset is not None:
        result = run_offline(algo, dataset, run, out_dir=out, overrides=param or [], download=download)
    else:
        result = run_online(algo, env, run, out_dir=out, overrides=param or [])
    score = result["normalized_score"]
    typer.echo(f"{result['algo']} on {dataset or result['env_id']}: return {result['return_mean']:.1f}"
               + (f", normalized score {score:.1f}" if score is not None else "") + f" ({result['out_dir']})")


@app.command("eval")
@user_errors
def eval_run(
    run_dir: Path,
    episodes: int = 10,
    seed: int = 20_000,
    device: str = "auto",
) -> None:
    """Evaluate the last checkpoint of a run directory."""
    import torch

    from hybridrl.control.evaluate import evaluate
    from hybridrl.control.scores import d4rl_reference
    from hybridrl.runners import load_trained

    algo, config = load_trained(run_dir, device)
    try:
        from hybridrl.control.datasets import load

        ref = load(config["dataset"]).ref_scores
    except (ValueError, FileNotFoundError):
        ref = d4rl_reference(config["env_id"])
    dev = next(iter(algo.actor.parameters())).device

    def act(obs):
        return algo.act(torch.as_tensor(obs, device=dev)).cpu().numpy()

    result = evaluate(act, config["env_id"], episodes=episodes, seed=seed, ref_scores=ref)
    line = f"{config['algo']} ({run_dir}): return {result.mean:.1f} ± {result.std:.1f}"
    if result.normalized_mean is not None:
        line += f", normalized {result.normalized_mean:.1f} ± {result.normalized_std:.1f}"
    typer.echo(line)


@app.command("demo")
@user_errors
def demo(
    task: str = "hopper",
    transitions: int = DEMO_TRANSITIONS,
    bc_steps: int = 5000,
    cql_steps: int = 3000,
    seed: int = 0,
    device: str = "auto",
    out: Path = Path("runs/demo"),
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: one per core).")] = None,
) -> None:
    """Make a small dataset from real MuJoCo rollouts, train BC and CQL, print their scores."""
    from hybridrl.control.datasets import local_dataset_ids
    from hybridrl.core.config import RunConfig
    from hybridrl.factory import FactoryConfig, make_dataset
    from hybridrl.factory import dataset_id as factory_dataset_id
    from hybridrl.runners import run_offline

    dataset_id = factory_dataset_id(task, "random")
    if dataset_id not in local_dataset_ids():
        typer.echo(f"making {dataset_id} ({transitions} transitions of real {task} rollouts)")
        make_dataset(task, "random", config=FactoryConfig(transitions=transitions, preset="demo"), seed=seed)
    rows = []
    for algo, steps in (("bc", bc_steps), ("cql", cql_steps)):
        run = RunConfig(steps=steps, seed=seed, device=device, eval_every=0, log_every=min(500, steps),
                        checkpoint_every=max(steps // 4, 1), threads=threads)
        result = run_offline(algo, dataset_id, run, out_dir=out / f"{algo}-s{seed}")
        rows.append((algo, steps, result))
    typer.echo(f"\n{'method':<8} {'updates':>8} {'return':>16} {'normalized score':>18}   ({dataset_id}, 10 episodes)")
    for algo, steps, result in rows:
        ev = result["eval"]
        typer.echo(f"{algo:<8} {steps:>8} {ev['mean']:>8.1f} ± {ev['std']:<6.1f} "
                   f"{ev['normalized_mean']:>9.1f} ± {ev['normalized_std']:<6.1f}")


def _csv(value: str | None, cast=str) -> list | None:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"bad list {value!r}: give comma-separated values, e.g. 0,1,2") from None


@app.command("bench")
@user_errors
def bench(
    suite: Annotated[str, typer.Argument(help="quick, offline, online, preference, nash-games, throughput or custom.")],
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods (filter, or the custom grid's).")] = None,
    datasets: Annotated[str | None, typer.Option(help="Comma-separated datasets / tasks (filter or custom).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds (filter; custom default 0).")] = None,
    steps: Annotated[int | None, typer.Option(help="Override every run's budget.")] = None,
    param: Annotated[list[str] | None, typer.Option("--set", help="Hyperparameter of every run: KEY=VALUE.")]
    = None,
    eval_every: Annotated[int | None, typer.Option(help="Custom grids: steps between evaluations.")] = None,
    eval_episodes: Annotated[int | None, typer.Option(help="Custom grids: episodes per evaluation.")] = None,
    out: Annotated[Path | None, typer.Option(help="Grid directory (default runs/bench/SUITE).")] = None,
    workers: Annotated[int | None, typer.Option(help="Runs in parallel (default: one per core, at most 8).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads per run (default: cores / workers).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    ray: Annotated[bool, typer.Option("--ray", help="Run on a local Ray instance (pip install 'hybridrl[ray]').")]
    = False,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (e.g. auto or ray://host:10001).")]
    = None,
    list_runs: Annotated[bool, typer.Option("--list", help="Print the runs and exit.")] = False,
    report: Annotated[bool, typer.Option(help="Build OUT/report/report.md at the end.")] = True,
) -> None:
    """Run a benchmark suite as a resumable grid (finished runs are kept), then report it."""
    from hybridrl.bench import suites
    from hybridrl.bench.runner import run_grid

    method_list, dataset_list, seed_list = _csv(methods), _csv(datasets), _csv(seeds, int)
    if suite == "custom":
        specs = suites.custom(method_list or [], dataset_list or [], seed_list or [0], steps or 1_000_000,
                              eval_every=eval_every or 0, eval_episodes=eval_episodes or 10)
    else:
        specs = suites.select(suites.suite(suite), methods=method_list, datasets=dataset_list, seeds=seed_list,
                              steps=steps)
    if param:
        specs = suites.with_overrides(specs, param)
    if list_runs:
        for spec in specs:
            typer.echo(f"{spec.run_id}  steps={spec.steps}" + (f"  {spec.overrides}" if spec.overrides else ""))
        return
    out = out or Path("runs") / "bench" / suite
    result = run_grid(specs, out, workers=workers, threads=threads, device=device, ray=ray, ray_address=ray_address,
                      echo=typer.echo)
    if report:
        _print_report(out)
    if result.failed:
        typer.echo(f"error: {len(result.failed)} run(s) failed (see error.txt in their directories); "
                   "rerun the same command to retry them", err=True)
        raise typer.Exit(EXIT_DIVERGED)


def _print_report(runs_dir: Path, out: Path | None = None) -> None:
    from hybridrl.bench.report import build_report

    typer.echo("")
    typer.echo(build_report(runs_dir, out).table_text())


@app.command("report")
@user_errors
def report_command(
    runs_dir: Annotated[Path, typer.Argument(help="A grid directory written by `hybridrl bench`.")],
    out: Annotated[Path | None, typer.Option(help="Report directory (default RUNS_DIR/report).")] = None,
) -> None:
    """Tables, aggregate statistics and plots of a grid's runs, in one report.md."""
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir} is not a directory: pass the --out of a `hybridrl bench` run")
    _print_report(runs_dir, out)


def _mount_optional() -> None:
    """Mount the language-model commands when their module is there (it imports no heavy library)."""
    try:
        from hybridrl.preference.cli import app as pref_app
    except ImportError:
        return
    app.add_typer(pref_app, name="pref")


_mount_optional()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
