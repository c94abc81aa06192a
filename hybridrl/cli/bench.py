"""``hybridrl bench``, ``hybridrl report`` and ``hybridrl demo``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from hybridrl.bench.checks import STEPS_HELP
from hybridrl.cli.errors import EXIT_DIVERGED, user_errors

DEMO_TRANSITIONS = 20_000


def _demo_command() -> Callable[..., None]:
    """``hybridrl demo``: the methods and budgets of the demo preset (bench/presets/demo.yaml), one
    ``--METHOD-steps`` option per method."""
    from hybridrl.bench.suites import preset

    runs = [(str(r["method"]), int(r["steps"])) for r in preset("demo")["runs"]]
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("task", keyword, annotation=str, default=typer.Option(
            "hopper", "--task", help="hopper, halfcheetah or walker2d: the task of the random dataset.")),
        inspect.Parameter("transitions", keyword, annotation=Optional[int], default=typer.Option(  # noqa: UP045
            None, "--transitions", help=f"Transitions of the random dataset when it is made (default "
            f"{DEMO_TRANSITIONS}); an existing dataset of another size is refused, not remade.")),
        *(inspect.Parameter(f"{name}_steps", keyword, annotation=int, default=typer.Option(
            steps, f"--{name.replace('_', '-')}-steps", help=f"Updates of {name}.")) for name, steps in runs),
        inspect.Parameter("seed", keyword, annotation=int, default=typer.Option(
            0, "--seed", help="Seeds the dataset's rollouts and every run.")),
        inspect.Parameter("device", keyword, annotation=str, default=typer.Option(
            "auto", "--device", help="auto, cpu, cuda or cuda:N.")),
        inspect.Parameter("out", keyword, annotation=Path, default=typer.Option(
            Path("runs/demo"), "--out", help="Directory of the runs (one per method).")),
        inspect.Parameter("threads", keyword, annotation=Optional[int],  # noqa: UP045
                          default=typer.Option(None, "--threads", help="torch CPU threads (default: one per core).")),
    ]

    @user_errors
    def command(**kwargs: Any) -> None:
        from hybridrl.control.datasets import local_dataset_ids
        from hybridrl.core.config import RunConfig
        from hybridrl.factory import FactoryConfig, make_dataset
        from hybridrl.factory import dataset_id as factory_dataset_id
        from hybridrl.runners import run

        task, seed, out, transitions = kwargs["task"], kwargs["seed"], kwargs["out"], kwargs["transitions"]
        if transitions is not None and transitions < 1:
            raise ValueError(f"--transitions must be at least 1, got {transitions}")
        for name, _ in runs:
            if kwargs[f"{name}_steps"] < 1:
                raise ValueError(f"--{name.replace('_', '-')}-steps must be at least 1, got {kwargs[f'{name}_steps']}")
        dataset_id = factory_dataset_id(task, "random")
        if dataset_id not in local_dataset_ids():
            transitions = transitions or DEMO_TRANSITIONS
            typer.echo(f"making {dataset_id} ({transitions} transitions of real {task} rollouts)")
            make_dataset(task, "random", config=FactoryConfig(transitions=transitions, preset="demo"), seed=seed)
        elif transitions is not None:
            import json

            from hybridrl.control.datasets import load

            data = load(dataset_id)
            recipe = data.metadata.get("hybridrl_factory") or {}
            recipe = json.loads(recipe) if isinstance(recipe, str) else recipe
            # the factory rolls out to the end of the last episode: compare what was asked of it
            held = int(recipe.get("transitions", len(data))) if isinstance(recipe, dict) else len(data)
            if held != transitions:
                # remaking it would change the data under runs already trained on it
                raise ValueError(f"--transitions {transitions}: {dataset_id} already holds {held} transitions; "
                                 f"remake it with `hybridrl data make {task} random --transitions {transitions} "
                                 "--overwrite`, or drop --transitions")
        rows = []
        for algo, _ in runs:
            steps = kwargs[f"{algo}_steps"]
            run_config = RunConfig(steps=steps, seed=seed, device=kwargs["device"], eval_every=0,
                                   log_every=min(500, steps), checkpoint_every=max(steps // 4, 1),
                                   threads=kwargs["threads"])
            result = run(algo, run_config, dataset=dataset_id, out_dir=out / f"{algo}-s{seed}")
            rows.append((algo, steps, result))
        typer.echo(f"\n{'method':<8} {'updates':>8} {'return':>16} {'normalized score':>18}   "
                   f"({dataset_id}, 10 episodes)")
        for algo, steps, result in rows:
            ev = result["eval"]
            typer.echo(f"{algo:<8} {steps:>8} {ev['mean']:>8.1f} ± {ev['std']:<6.1f} "
                       f"{ev['normalized_mean']:>9.1f} ± {ev['normalized_std']:<6.1f}")

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    names = " and ".join(name.upper() for name, _ in runs)
    command.__doc__ = f"Make a small dataset from real MuJoCo rollouts, train {names}, print their scores."
    return command


def _csv(value: str | None, cast=str) -> list | None:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"bad list {value!r}: give comma-separated values, e.g. 0,1,2") from None


@user_errors
def bench(
    suite: Annotated[str, typer.Argument(help="quick, offline, online, preference, nash-games, throughput or custom.")],
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods (filter, or the custom grid's).")] = None,
    datasets: Annotated[str | None, typer.Option(help="Comma-separated datasets (filter or custom; as a filter, "
                                                      "also the task of an online run).")] = None,
    envs: Annotated[str | None, typer.Option(help="Comma-separated envs / tasks (filter or custom; an online "
                                                  "method given datasets too trains hybrid).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds (filter; custom default 0).")] = None,
    steps: Annotated[str | None, typer.Option(help=STEPS_HELP, metavar="N|KIND=N,...")] = None,
    param: Annotated[list[str] | None,
                     typer.Option("--set", help="Hyperparameter or run setting of every run: KEY=VALUE.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Custom grids: steps between evaluations.")] = None,
    eval_episodes: Annotated[int | None, typer.Option(help="Custom grids: episodes per evaluation.")] = None,
    out: Annotated[Path | None, typer.Option(help="Grid directory (default runs/bench/SUITE).")] = None,
    workers: Annotated[int | None, typer.Option(help="Runs in parallel (default: one per core, at most 8).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads per run (default: cores / workers).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    ray: Annotated[bool, typer.Option("--ray", help="Run on a local Ray instance (pip install 'hybridrl\\[ray]').")]
    = False,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (e.g. auto or ray://host:10001).")]
    = None,
    list_runs: Annotated[bool, typer.Option("--list", help="Print the runs and exit.")] = False,
    report: Annotated[bool, typer.Option(help="Build OUT/report/report.md at the end.")] = True,
) -> None:
    """Run a benchmark suite as a resumable grid (finished runs are kept), then report it."""
    from hybridrl.bench import suites
    from hybridrl.bench.checks import check_grid, drop_orphan_matrices, with_budget
    from hybridrl.bench.runner import run_grid
    from hybridrl.bench.settings import with_settings
    from hybridrl.core.session import prepare_run_dir

    method_list, dataset_list, env_list, seed_list = _csv(methods), _csv(datasets), _csv(envs), _csv(seeds, int)
    for name, value in (("--eval-every", eval_every), ("--eval-episodes", eval_episodes), ("--workers", workers),
                        ("--threads", threads)):
        if value is not None and value < (0 if name == "--eval-every" else 1):
            raise ValueError(f"{name} must be at least {0 if name == '--eval-every' else 1}, got {value}")
    if suite == "custom":
        specs = suites.custom(method_list or [], dataset_list or [], seed_list or [0], 1_000_000,
                              eval_every=eval_every or 0, eval_episodes=eval_episodes or 10, envs=env_list)
    else:
        specs = suites.select(suites.suite(suite), methods=method_list, datasets=dataset_list, envs=env_list,
                              seeds=seed_list)
    specs, notes = drop_orphan_matrices(specs)
    if not specs:
        raise ValueError("no run of the suite is left once its win-rate matrices lack their players: "
                         "select the players too (see `hybridrl bench SUITE --list`)")
    if steps is not None:
        specs = with_budget(specs, steps)
    if param:
        specs = with_settings(specs, param)
    for note in notes:
        typer.echo(note)
    if list_runs:
        for spec in specs:
            typer.echo(f"{spec.run_id}  steps={spec.steps}" + (f"  {spec.overrides}" if spec.overrides else ""))
        return
    check_grid(specs, device)  # a grid that cannot run is refused before any run starts
    out = prepare_run_dir(out or Path("runs") / "bench" / suite)
    result = run_grid(specs, out, workers=workers, threads=threads, device=device, ray=ray, ray_address=ray_address,
                      echo=typer.echo)
    if report:
        _print_report(out)
    if result.busy:
        typer.echo(f"{len(result.busy)} run(s) are running in another process; rerun the same command "
                   "later to collect them")
    if result.failed:
        typer.echo(f"error: {len(result.failed)} run(s) failed (see error.txt in their directories); "
                   "rerun the same command to retry them", err=True)
        raise typer.Exit(EXIT_DIVERGED)


def _print_report(runs_dir: Path, out: Path | None = None) -> None:
    from hybridrl.bench.report import build_report

    typer.echo("")
    typer.echo(build_report(runs_dir, out).table_text())


@user_errors
def report_command(
    runs_dir: Annotated[Path, typer.Argument(help="A grid directory written by `hybridrl bench`.")],
    out: Annotated[Path | None, typer.Option(help="Report directory (default RUNS_DIR/report).")] = None,
) -> None:
    """Tables, aggregate statistics and plots of a grid's runs, in one report.md."""
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir} is not a directory: pass the --out of a `hybridrl bench` run")
    _print_report(runs_dir, out)


def register(app: typer.Typer) -> None:
    """Add ``demo``, ``bench`` and ``report`` to ``app``."""
    app.command("demo")(_demo_command())
    app.command("bench")(bench)
    app.command("report")(report_command)
